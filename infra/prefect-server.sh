#!/usr/bin/env bash
# A long-running Prefect server on 127.0.0.1. Its database is SQLite in $PREFECT_HOME (a laptop's), or the
# PostgreSQL that PREFECT_API_DATABASE_CONNECTION_URL names (a team's: infra/prefect/postgres.sh starts one).
# Point clients at it and a flow run starts in about a second instead of starting a temporary server each time
# (about 11 s):  export PREFECT_API_URL=http://127.0.0.1:4200/api
set -euo pipefail
port="${1:-4200}"
export PREFECT_HOME="${PREFECT_HOME:-$HOME/.prefect}"
# Its telemetry heartbeat logs an error where the machine has no way out (most cluster nodes); croco needs none of it.
export PREFECT_SERVER_ANALYTICS_ENABLED="${PREFECT_SERVER_ANALYTICS_ENABLED:-false}"
# The UI asks the API at PREFECT_UI_API_URL, which Prefect derives from its port setting, not from --port: on any
# port but 4200 the UI would show "Something went wrong".
export PREFECT_UI_API_URL="${PREFECT_UI_API_URL:-http://127.0.0.1:$port/api}"
exec prefect server start --host 127.0.0.1 --port "$port"
