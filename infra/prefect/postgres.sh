#!/usr/bin/env bash
# PostgreSQL for a Prefect server: Debian's postgresql package, a cluster of its own in DATA_DIR listening on
# 127.0.0.1:PORT only, with a role and a database named prefect.
#   postgres.sh start DATA_DIR PORT   installs postgresql if missing, creates the cluster once, starts it, and
#                                     prints the PREFECT_API_DATABASE_CONNECTION_URL for it on stdout
#   postgres.sh stop DATA_DIR         stops it; the data stays for the next start
# Runs as root and runs the database as the postgres user; PID 1 need not be systemd.
# Exit status 2: this machine cannot have it (not root, no apt-get, the package not installable).
#
# No password anywhere: the only TCP connection accepted is role prefect to database prefect from 127.0.0.1
# (trust), and the admin socket lives inside DATA_DIR (0700, the postgres user's). So any user of this machine
# can open the prefect database: right for a test set-up or a machine a team's server has to itself.
set -euo pipefail

log() { echo "postgres.sh: $*" >&2; }
usage() {
    log "usage: postgres.sh start DATA_DIR PORT | postgres.sh stop DATA_DIR"
    exit 1
}
as_postgres() { runuser -u postgres -- "$@"; }
newest_bin() { find /usr/lib/postgresql -maxdepth 2 -name bin 2>/dev/null | sort -V | tail -n 1; }

action=${1:-}
data=${2:-}
[ -n "$data" ] || usage
[ "$(id -u)" = 0 ] || { log "must run as root (it runs PostgreSQL as the postgres user)."; exit 2; }

if [ "$action" = stop ]; then
    bin=$(newest_bin)
    [ -n "$bin" ] && [ -s "$data/PG_VERSION" ] || exit 0 # nothing was ever started here
    as_postgres "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1 || exit 0
    as_postgres "$bin/pg_ctl" -D "$data" -m fast -w stop >/dev/null
    exit 0
fi
[ "$action" = start ] || usage
port=${3:-}
[[ "$port" =~ ^[0-9]+$ ]] || usage

if [ -z "$(newest_bin)" ] || ! id postgres >/dev/null 2>&1; then
    log "installing postgresql"
    command -v apt-get >/dev/null || { log "no apt-get here to install postgresql."; exit 2; }
    apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends postgresql >/dev/null ||
        { log "apt-get could not install postgresql."; exit 2; }
fi
bin=$(newest_bin)

mkdir -p "$data"
chown postgres:postgres "$data"
chmod 0700 "$data"
as_postgres test -w "$data" ||
    { log "the postgres user cannot reach $data: pick a folder whose parents it may enter (not under /root or /tmp/pytest-of-*)."; exit 1; }

if [ ! -s "$data/PG_VERSION" ]; then
    as_postgres "$bin/initdb" -D "$data" -U postgres -E UTF8 --auth-local=peer --auth-host=reject >/dev/null
    cat >"$data/pg_hba.conf" <<'EOF'
# Written by infra/prefect/postgres.sh. Connections matching no line are refused.
local   all       postgres                 peer
host    prefect   prefect    127.0.0.1/32  trust
EOF
fi

if ! as_postgres "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
    as_postgres "$bin/pg_ctl" -D "$data" -l "$data/postgres.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $data" start >/dev/null ||
        { log "PostgreSQL did not start; see $data/postgres.log."; exit 1; }
fi

admin=(-h "$data" -p "$port")
exists() { as_postgres "$bin/psql" "${admin[@]}" -d postgres -tAc "$1" | grep -q 1; }
exists "SELECT 1 FROM pg_roles WHERE rolname = 'prefect'" || as_postgres "$bin/createuser" "${admin[@]}" prefect
exists "SELECT 1 FROM pg_database WHERE datname = 'prefect'" ||
    as_postgres "$bin/createdb" "${admin[@]}" --owner prefect prefect # the owner may add pg_trgm, which Prefect needs

echo "postgresql+asyncpg://prefect@127.0.0.1:$port/prefect"
