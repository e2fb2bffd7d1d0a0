#!/usr/bin/env bash
# Start a local MLflow tracking server over the project's SQLite store (127.0.0.1 only):
#   bash mlflow/start_server.sh [PORT]        (or MLFLOW_PORT=PORT; default 5000, mlflow/settings.json)
# Store mlflow/mlruns.db, artifacts mlflow/artifacts (MLFLOW_STORE_DIR=FOLDER uses FOLDER/mlruns.db and
# FOLDER/artifacts instead). The server runs on the project's interpreter: $PYTHON when set, else
# .venv/bin/python when the project has one, else python3 (no activated venv needed).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
port="${1:-${MLFLOW_PORT:-5000}}"
store="${MLFLOW_STORE_DIR:-$here}"
if [[ -n "${PYTHON:-}" ]]; then
    python="$PYTHON"
elif [[ -x "$root/.venv/bin/python" ]]; then
    python="$root/.venv/bin/python"
else
    python="python3"
fi
if ! "$python" -c "import mlflow.server" 2>/dev/null; then
    echo "start_server.sh: $python has no MLflow; install the project first: python3 -m venv .venv && .venv/bin/pip install -e ." >&2
    exit 1
fi
mkdir -p "$store/artifacts"
export MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true
echo "MLflow server on http://127.0.0.1:$port (store $store/mlruns.db, artifacts $store/artifacts)"
echo "to track runs through it: export MLFLOW_TRACKING_URI=http://127.0.0.1:$port"
# run from the store folder: the project's own mlflow/ folder must not shadow the mlflow package
cd "$store"
exec "$python" -m mlflow server \
    --backend-store-uri "sqlite:///$store/mlruns.db" \
    --artifacts-destination "$store/artifacts" \
    --serve-artifacts \
    --host 127.0.0.1 --port "$port" --workers 1
