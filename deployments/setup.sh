#!/usr/bin/env bash
# The demo's deployments on the Prefect server at $PREFECT_API_URL, from the repository root:
# starts infra/prefect-server.sh there if nothing answers on a 127.0.0.1/localhost URL, waits until the
# server answers, creates the process work pool `croco` unless it exists, and applies deployments/prefect.yaml.
# Safe to run again. Then start a worker: prefect worker start --pool croco
set -euo pipefail
cd "$(dirname "$0")/.."
: "${PREFECT_API_URL:?set it first, e.g. export PREFECT_API_URL=http://127.0.0.1:4200/api}"

answers() { python -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + '/health', timeout=2)" "$PREFECT_API_URL" 2>/dev/null; }

if ! answers; then
  if [[ "$PREFECT_API_URL" =~ ^http://(127\.0\.0\.1|localhost):([0-9]+)/api$ ]]; then
    log="${PREFECT_HOME:-$HOME/.prefect}/server.log"
    mkdir -p "$(dirname "$log")"
    nohup infra/prefect-server.sh "${BASH_REMATCH[2]}" >"$log" 2>&1 &
    echo "started a Prefect server on port ${BASH_REMATCH[2]} (log: $log)"
  fi
  for _ in $(seq 120); do answers && break; sleep 1; done
  answers || { echo "no Prefect server answers at $PREFECT_API_URL after 120 s" >&2; exit 1; }
fi
prefect work-pool inspect croco >/dev/null 2>&1 || prefect work-pool create croco --type process
prefect --no-prompt deploy --all --prefect-file deployments/prefect.yaml
