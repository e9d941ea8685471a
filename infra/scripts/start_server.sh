#!/usr/bin/env bash
# Serve the champions over HTTP on loopback, in the foreground (Ctrl-C stops it).
#   infra/scripts/start_server.sh [--host 127.0.0.1] [--port 8000]
#       `nightshift serve`: the three champions in one process (FastAPI + uvicorn), re-resolved by
#       alias every serve.refresh_seconds; /v1/log-anomaly, /v1/failure-rca, /v1/metric-forecast,
#       the seed's /predict, /healthz, /readyz, /metrics, /docs.
#   infra/scripts/start_server.sh --mlflow NAME [--port 5001] [--alias champion]
#       `mlflow models serve -m models:/NAME@ALIAS --env-manager local`: one model, MLflow's own
#       scoring server (POST /invocations), the same pyfunc. It starts uvicorn by name, so the venv's
#       bin goes first on PATH here (without it: `uvicorn: not found`, exit 127).
# The registry is NIGHTSHIFT_HOME's SQLite store (default ~/.nightshift, where `make demo` wrote it), or
# MLFLOW_TRACKING_URI when set.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
export PATH="$VENV/bin:$PATH"
HOME_DIR="${NIGHTSHIFT_HOME:-$HOME/.nightshift}"
export MLFLOW_TRACKING_URI="${MLFLOW_TRACKING_URI:-sqlite:///$HOME_DIR/mlflow/mlflow.db}"
HOST=127.0.0.1
PORT=""
MODEL=""
ALIAS=champion
while [ $# -gt 0 ]; do
  case "$1" in
    --host) HOST="$2"; shift 2 ;;
    --port) PORT="$2"; shift 2 ;;
    --mlflow) MODEL="$2"; shift 2 ;;
    --alias) ALIAS="$2"; shift 2 ;;
    *) echo "usage: $0 [--host HOST] [--port PORT] [--mlflow NAME [--alias ALIAS]]" >&2; exit 2 ;;
  esac
done
if [ -z "$MODEL" ]; then
  exec nightshift serve --host "$HOST" --port "${PORT:-8000}"
fi
exec mlflow models serve -m "models:/$MODEL@$ALIAS" --env-manager local --host "$HOST" --port "${PORT:-5001}"
