#!/usr/bin/env bash
# A local Airflow deployment of the nightly DAG (what `make airflow` runs), in the foreground; Ctrl-C
# stops everything it started. On loopback: PostgreSQL as the metadata database (a cluster under
# $NIGHTSHIFT_HOME/deployment/postgres), an MLflow tracking server (unless MLFLOW_TRACKING_URI is
# set), then `airflow api-server`, `airflow scheduler` (LocalExecutor) and `airflow dag-processor`
# with the project's dags/. Prints the UI's URL and login, and writes them to
# $NIGHTSHIFT_HOME/deployment/deployment.env (mode 0600; source it to point the CLI at this deployment).
# The MLflow server it starts runs MLflow's basic-auth app (start_mlflow.sh --auth basic; the admin's password
# is drawn into $NIGHTSHIFT_HOME/deployment/mlflow/auth/admin-password): the tasks log in as the user
# nightshift-job, made here, whose password is drawn once into .../auth/job-password and reaches them as
# MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD in the scheduler's environment. No password is printed.
#   infra/scripts/start_airflow.sh [--port 8080] [--parallelism 4] [--db-url SQLALCHEMY_URL]
# The DAG starts paused: unpause it in the UI (or `airflow dags unpause nightly_retrain`).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BIN="${VENV_BIN:-$ROOT/.venv/bin}"
export NIGHTSHIFT_HOME="${NIGHTSHIFT_HOME:-$HOME/.nightshift}"
DEPLOY="$NIGHTSHIFT_HOME/deployment"
PORT=8080
PARALLELISM=4
DB_URL=""
while [ $# -gt 0 ]; do
  case "$1" in
    --port) PORT="$2"; shift 2 ;;
    --parallelism) PARALLELISM="$2"; shift 2 ;;
    --db-url) DB_URL="$2"; shift 2 ;;
    *) echo "usage: $0 [--port PORT] [--parallelism N] [--db-url SQLALCHEMY_URL]" >&2; exit 2 ;;
  esac
done
mkdir -p "$DEPLOY/logs"
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"  # free_port, wait_for, mlflow_job_user
PIDS=()
stop() {
  trap - EXIT INT TERM
  # each component runs in its own session (setsid): its whole group goes, workers and all
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do kill -TERM -- "-${PIDS[i]}" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do  # a group still there after 15s (mlflow server's parent can be) is killed
    for _ in $(seq 1 30); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
}
trap stop EXIT
trap 'exit 0' INT TERM

if [ -z "$DB_URL" ]; then
  PG_PORT="$(free_port)"
  setsid bash "$ROOT/infra/scripts/start_postgres.sh" --data "$DEPLOY/postgres" --port "$PG_PORT" --db airflow >"$DEPLOY/logs/postgres.log" 2>&1 &
  PIDS+=($!)
  wait_for PostgreSQL "$!" "$DEPLOY/logs/postgres.log" grep -q "postgres ready" "$DEPLOY/logs/postgres.log"
  DB_URL="postgresql+psycopg2://postgres@127.0.0.1:$PG_PORT/airflow"
fi
if [ -z "${MLFLOW_TRACKING_URI:-}" ]; then
  ML_PORT="$(free_port)"
  # its admin's password comes from its own file, not from a variable the caller may have set for another server
  setsid env -u MLFLOW_AUTH_ADMIN_PASSWORD bash "$ROOT/infra/scripts/start_mlflow.sh" --port "$ML_PORT" --data "$DEPLOY/mlflow" \
    --auth basic >"$DEPLOY/logs/mlflow.log" 2>&1 &
  PIDS+=($!)
  wait_for "MLflow server" "$!" "$DEPLOY/logs/mlflow.log" curl -sf "http://127.0.0.1:$ML_PORT/health"
  export MLFLOW_TRACKING_URI="http://127.0.0.1:$ML_PORT"
  JOB_PASSWORD_FILE="$DEPLOY/mlflow/auth/job-password"
  [ -s "$JOB_PASSWORD_FILE" ] || (umask 077 && "$BIN/python" -c 'import secrets; print(secrets.token_urlsafe(24))' >"$JOB_PASSWORD_FILE")
  export MLFLOW_TRACKING_USERNAME=nightshift-job
  MLFLOW_TRACKING_PASSWORD="$(cat "$JOB_PASSWORD_FILE")"
  export MLFLOW_TRACKING_PASSWORD
  mlflow_job_user "$DEPLOY/mlflow/auth/admin-password" "$DEPLOY/logs/mlflow-users.log"  # the job's MLflow user (lib.sh)
  ML_LOGIN="login: admin, password in $DEPLOY/mlflow/auth/admin-password; the tasks log in as nightshift-job"
fi

export AIRFLOW_HOME="$DEPLOY/airflow"
mkdir -p "$AIRFLOW_HOME"
[ -s "$AIRFLOW_HOME/jwt_secret" ] || "$BIN/python" -c 'import secrets; print(secrets.token_urlsafe(32))' >"$AIRFLOW_HOME/jwt_secret"
export AIRFLOW__CORE__DAGS_FOLDER="$ROOT/dags"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
# LocalExecutor unless the caller chose one: infra/scripts/start_cluster.sh runs it with the CeleryExecutor and its workers
export AIRFLOW__CORE__EXECUTOR="${AIRFLOW__CORE__EXECUTOR:-LocalExecutor}"
export AIRFLOW__CORE__PARALLELISM="$PARALLELISM"
export AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT=120
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://127.0.0.1:$PORT/execution/"
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="${AIRFLOW_USER:-admin}:admin"
export AIRFLOW__API__BASE_URL="http://127.0.0.1:$PORT"
export AIRFLOW__API_AUTH__JWT_SECRET="$(cat "$AIRFLOW_HOME/jwt_secret")"
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="$DB_URL"
# the scheduler's log server (LocalExecutor) defaults to 8793: two deployments on a machine would clash
export AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT="$(free_port)"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PATH="$BIN:$PATH"

"$BIN/airflow" db migrate >"$DEPLOY/logs/migrate.log" 2>&1 || { tail -20 "$DEPLOY/logs/migrate.log" >&2; exit 1; }
(cd "$ROOT" && "$BIN/python" -c 'from pipelines.config import load_settings; from pipelines.flow import ensure_pool; ensure_pool(load_settings())')
setsid "$BIN/airflow" api-server --host 127.0.0.1 --port "$PORT" >"$DEPLOY/logs/api-server.log" 2>&1 &
PIDS+=($!)
API_PID=$!
setsid "$BIN/airflow" scheduler >"$DEPLOY/logs/scheduler.log" 2>&1 &
PIDS+=($!)
setsid "$BIN/airflow" dag-processor >"$DEPLOY/logs/dag-processor.log" 2>&1 &
PIDS+=($!)
wait_for "airflow api-server" "$API_PID" "$DEPLOY/logs/api-server.log" curl -sf "http://127.0.0.1:$PORT/api/v2/monitor/health"

PASSWORDS="$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated"
USER_NAME="${AIRFLOW_USER:-admin}"
PASSWORD="$("$BIN/python" -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$PASSWORDS" "$USER_NAME")"
(umask 077 && rm -f "$DEPLOY/deployment.env" && {
  for var in MLFLOW_TRACKING_USERNAME MLFLOW_TRACKING_PASSWORD; do [ -z "${!var:-}" ] || echo "export $var=\"${!var}\""; done
  cat <<ENV
export NIGHTSHIFT_HOME="$NIGHTSHIFT_HOME"
export MLFLOW_TRACKING_URI="$MLFLOW_TRACKING_URI"
export AIRFLOW_HOME="$AIRFLOW_HOME"
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="$DB_URL"
export AIRFLOW__CORE__DAGS_FOLDER="$ROOT/dags"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
AIRFLOW_URL="http://127.0.0.1:$PORT"
AIRFLOW_LOGIN="$USER_NAME"
AIRFLOW_PASSWORD="$PASSWORD"
ENV
} >"$DEPLOY/deployment.env")
echo "Airflow UI:  http://127.0.0.1:$PORT   login: $USER_NAME / $PASSWORD"
echo "MLflow UI:   $MLFLOW_TRACKING_URI${ML_LOGIN:+   $ML_LOGIN}"
echo "DAG nightly_retrain starts paused; logs in $DEPLOY/logs; environment in $DEPLOY/deployment.env; Ctrl-C stops all"
wait -n "${PIDS[@]}"  # one of them died: stop the rest
echo "a component exited; stopping the deployment (logs in $DEPLOY/logs)" >&2
exit 1
