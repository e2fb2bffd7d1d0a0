#!/usr/bin/env bash
# Start a local MLflow tracking server over the project's SQLite store (127.0.0.1 only).
#   bash mlflow/start_server.sh [PORT]
# then, in another shell: export MLFLOW_TRACKING_URI=http://127.0.0.1:${PORT:-5000}
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
port="${1:-5000}"
mkdir -p "$here/artifacts"
export MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true
exec mlflow server \
    --backend-store-uri "sqlite:///$here/mlruns.db" \
    --artifacts-destination "$here/artifacts" \
    --serve-artifacts \
    --host 127.0.0.1 --port "$port" --workers 1
