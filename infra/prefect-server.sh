#!/usr/bin/env bash
# A long-running local Prefect server (SQLite in $PREFECT_HOME) on 127.0.0.1.
# Point clients at it and a flow run starts in about a second instead of starting a
# temporary server each time (about 11 s):  export PREFECT_API_URL=http://127.0.0.1:4200/api
set -euo pipefail
port="${1:-4200}"
export PREFECT_HOME="${PREFECT_HOME:-$HOME/.prefect}"
exec prefect server start --host 127.0.0.1 --port "$port"
