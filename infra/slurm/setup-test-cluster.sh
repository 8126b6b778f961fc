#!/usr/bin/env bash
# A one-node SLURM cluster on this machine for croco's tests: munge, MariaDB + slurmdbd (so sacct works),
# slurmctld and slurmd, partition `debug` (the default), two fake GPUs as gres over device files made
# from /dev/null. Debian 12 as root; daemons are started by hand (PID 1 need not be systemd).
# Idempotent: daemons already up are left alone unless the configuration changed.
# Exit status 2: this machine cannot have the cluster (not root, no apt-get, packages not installable).
# Stop it all with teardown-test-cluster.sh.
set -euo pipefail

[ "$(id -u)" = 0 ] || { echo "setup-test-cluster.sh must run as root." >&2; exit 2; }

CLUSTER=croco-test
PARTITION=debug
NODE=$(hostname -s)
CPUS=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  # nproc obeys OMP_NUM_THREADS, which tests set
DB_PASSWORD=croco-test-only  # a throwaway database on localhost, reachable only through the local socket
ETC=/etc/slurm
STATE=/var/lib/slurm
LOGS=/var/log/slurm

log() { echo "setup-test-cluster: $*" >&2; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: poll until COMMAND succeeds or give up
    local seconds=$1 what=$2
    shift 2
    for _ in $(seq $((seconds * 5))); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    log "$what did not come up within ${seconds}s; see $LOGS/."
    exit 1
}

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }  # running PIDFILE

# Packages (only what is missing; apt-get update first, as a fresh machine's lists are empty).
missing=()
for package in slurm-wlm slurmdbd munge mariadb-server; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    command -v apt-get >/dev/null || { log "no apt-get here to install ${missing[*]}."; exit 2; }
    apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null ||
        { log "apt-get could not install ${missing[*]}."; exit 2; }
fi

mkdir -p "$ETC" "$STATE/slurmctld" "$STATE/slurmd" "$LOGS" /run/munge
chown slurm:slurm "$STATE/slurmctld" "$LOGS"
chown munge:munge /run/munge

# munge: one key for this host, then the daemon.
if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
if ! running /run/munge/munged.pid; then
    runuser -u munge -- /usr/sbin/munged
fi
wait_for 10 munged bash -c 'munge -n | unmunge'

# MariaDB and the accounting database.
if ! mysqladmin ping >/dev/null 2>&1; then
    /etc/init.d/mariadb start >/dev/null
fi
wait_for 30 MariaDB mysqladmin ping
mysql -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
  CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASSWORD';
  GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"

# Fake GPUs: character devices with /dev/null's numbers; slurmd only needs files to hand out by index.
for index in 0 1; do
    [ -c /dev/croco-fake-gpu$index ] || mknod -m 666 /dev/croco-fake-gpu$index c 1 3
done

# Configuration; a daemon whose file changed is restarted below.
changed=()
install_config() {  # install_config NAME OWNER MODE: stdin -> $ETC/NAME, noting whether it changed
    local target=$ETC/$1 new
    new=$(mktemp)
    cat >"$new"
    if ! cmp -s "$new" "$target"; then
        mv "$new" "$target"
        changed+=("$1")
    else
        rm -f "$new"
    fi
    chown "$2" "$target"
    chmod "$3" "$target"
}

install_config slurmdbd.conf slurm:slurm 600 <<EOF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=slurm
PidFile=/run/slurmdbd.pid
LogFile=$LOGS/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASSWORD
StorageLoc=slurm_acct_db
EOF

# Why the non-default values: a test suite wants jobs scheduled within a second (sched_interval,
# bf_interval), finished jobs gone from squeue soon (MinJobAge; sacct keeps them), a killed job's
# processes gone soon (KillWait), and several one-CPU jobs at once on a 2-core machine (OverSubscribe).
# proctrack/linuxproc and task/none: no cgroups needed, so it runs in a container too.
install_config slurm.conf root:root 644 <<EOF
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
AuthType=auth/munge
SlurmUser=slurm
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MinJobAge=10
KillWait=5
JobRequeue=1
InactiveLimit=0
GresTypes=gpu
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageTRES=gres/gpu
JobAcctGatherType=jobacct_gather/none
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=1024 Gres=gpu:2 State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
EOF

install_config gres.conf root:root 644 <<EOF
AutoDetect=off
NodeName=$NODE Name=gpu File=/dev/croco-fake-gpu[0-1]
EOF

stop() {  # stop PIDFILE: end the daemon that wrote it and wait until it is gone
    running "$1" || return 0
    local pid
    pid=$(cat "$1")
    kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
}

if [[ " ${changed[*]} " == *" slurmdbd.conf "* ]]; then stop /run/slurmdbd.pid; fi
if [ ${#changed[@]} -gt 0 ]; then stop /run/slurmctld.pid; stop /run/slurmd.pid; fi

start() {  # start PIDFILE DAEMON: unless it runs already
    running "$1" || "$2" || { log "$2 did not start; see $LOGS/$2.log."; exit 1; }
}

start /run/slurmdbd.pid slurmdbd
wait_for 30 slurmdbd sacctmgr -n list cluster
sacctmgr -i -Q add cluster "$CLUSTER" >/dev/null 2>&1 || true  # "already exists" is fine

start /run/slurmctld.pid slurmctld
wait_for 30 slurmctld scontrol ping
start /run/slurmd.pid slurmd

node_ready() { sinfo -h -n "$NODE" -o %T | grep -Eq '^(idle|mixed|allocated)'; }
for _ in $(seq 150); do
    node_ready && break
    # A node that was down or drained (an earlier unclean stop) is returned to service.
    if sinfo -h -n "$NODE" -o %T | grep -Eq 'down|drain'; then
        scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true
    fi
    sleep 0.2
done
wait_for 5 "node $NODE" node_ready
log "up: cluster $CLUSTER, node $NODE ($CPUS CPUs, gpu:2), partition $PARTITION"
