#!/usr/bin/env bash
# Start an MLflow tracking server on loopback, in the foreground (Ctrl-C stops it), with its state
# in its own folder: the store (SQLite unless --backend-store-uri says otherwise, e.g. the
# PostgreSQL of infra/scripts/start_postgres.sh) and the artifacts it proxies (under DIR unless
# --artifacts-destination names an object store, e.g. s3://bucket/mlflow with the AWS_* variables and
# MLFLOW_S3_ENDPOINT_URL of infra/scripts/start_seaweedfs.sh in the environment).
#   infra/scripts/start_mlflow.sh [--port 5000] [--data DIR] [--backend-store-uri URI] [--artifacts-destination URI] [--workers 1]
# Clients then use MLFLOW_TRACKING_URI=http://127.0.0.1:PORT; the server proxies the artifacts, so they need no
# object-store credentials.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
MLFLOW="${MLFLOW:-$ROOT/.venv/bin/mlflow}"
PORT=5000
DATA="${NIGHTSHIFT_HOME:-$HOME/.nightshift}/mlflow-server"
STORE=""
ARTIFACTS=""
WORKERS=1
while [ $# -gt 0 ]; do
  case "$1" in
    --port) PORT="$2"; shift 2 ;;
    --data) DATA="$2"; shift 2 ;;
    --backend-store-uri) STORE="$2"; shift 2 ;;
    --artifacts-destination) ARTIFACTS="$2"; shift 2 ;;
    --workers) WORKERS="$2"; shift 2 ;;
    *) echo "usage: $0 [--port PORT] [--data DIR] [--backend-store-uri URI] [--artifacts-destination URI] [--workers N]" >&2; exit 2 ;;
  esac
done
mkdir -p "$DATA/artifacts"
DATA="$(cd "$DATA" && pwd)"
exec "$MLFLOW" server --backend-store-uri "${STORE:-sqlite:///$DATA/mlflow.db}" --artifacts-destination "${ARTIFACTS:-$DATA/artifacts}" \
  --host 127.0.0.1 --port "$PORT" --workers "$WORKERS"
