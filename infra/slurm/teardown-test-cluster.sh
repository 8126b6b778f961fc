#!/usr/bin/env bash
# Stops what setup-test-cluster.sh started (slurmd, slurmctld, slurmdbd, MariaDB, munged), each by the
# pid in its pid file. Packages, configuration and the accounting database stay, so the next setup is quick.
set -uo pipefail

[ "$(id -u)" = 0 ] || { echo "teardown-test-cluster.sh must run as root." >&2; exit 1; }

stop() {  # stop PIDFILE: end the daemon that wrote it and wait until it is gone
    [ -f "$1" ] || return 0
    local pid
    pid=$(cat "$1")
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
}

stop /run/slurmd.pid
stop /run/slurmctld.pid
stop /run/slurmdbd.pid
if mysqladmin ping >/dev/null 2>&1; then
    /etc/init.d/mariadb stop >/dev/null
fi
stop /run/munge/munged.pid
echo "teardown-test-cluster: stopped" >&2
