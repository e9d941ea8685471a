#!/usr/bin/env bash
# A multi-machine deployment of the nightly DAG, on one machine's loopback (what `make demo-cluster` and
# tests/e2e/test_celery_e2e.py start): PostgreSQL (Airflow's metadata database, the Celery result backend and the
# MLflow store), Redis (the Celery broker), SeaweedFS (the S3 object store: the storage root and MLflow's
# artifacts), an MLflow tracking server, Airflow's api-server, scheduler (CeleryExecutor) and dag-processor
# (infra/scripts/start_airflow.sh), and N Celery workers. The workers share no disk: each has its own
# NIGHTSHIFT_HOME and AIRFLOW_HOME under DIR/worker-X, as if on its own machine; they share the storage root
# (NIGHTSHIFT_STORAGE=s3://BUCKET/nightshift), the tracking server and the broker. Each names itself on the task
# instances it runs (`hostname` worker-a, worker-b, ...: pipelines/worker.py).
#
#   infra/scripts/start_cluster.sh [--dir DIR] [--port API_PORT] [--workers 2] [--concurrency 1] [--parallelism 4]
#   infra/scripts/start_cluster.sh --stop DIR
#
# It returns once every component answers, leaving them running; DIR/cluster.env then holds the URLs, the login
# and the environment of a worker (source it to run `airflow`/`nightshift` against the cluster), DIR/logs/ the logs.
# DIR defaults to a new /tmp/nightshift-cluster.XXXX (PostgreSQL's user must reach it: not under /root).
# `--stop DIR` stops everything it started there. The caller's NIGHTSHIFT_* settings reach every component.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BIN="${VENV_BIN:-$ROOT/.venv/bin}"
DIR="" PORT="" WORKERS=2 CONCURRENCY=1 PARALLELISM=4 BUCKET=nightshift

usage() { echo "usage: $0 [--dir DIR] [--port API_PORT] [--workers N] [--concurrency N] [--parallelism N] | --stop DIR" >&2; exit 2; }

stop_cluster() {  # every component's whole process group at once; whatever is left after 60s is killed
  local dir="$1" name pid left
  [ -f "$dir/pids" ] || { echo "no cluster in $dir (no pids file)" >&2; return 1; }
  while read -r name pid; do kill -TERM -- "-$pid" 2>/dev/null || true; done <"$dir/pids"
  [ ! -f "$dir/seaweedfs/weed.pid" ] || bash "$ROOT/infra/scripts/start_seaweedfs.sh" --stop "$dir/seaweedfs" &
  for _ in $(seq 1 120); do
    left=""
    while read -r name pid; do kill -0 -- "-$pid" 2>/dev/null && left="$left $name"; done <"$dir/pids"
    [ -n "$left" ] || break
    sleep 0.5
  done
  while read -r name pid; do
    kill -0 -- "-$pid" 2>/dev/null && { echo "$name did not stop in 60s: killed" >&2; kill -KILL -- "-$pid" 2>/dev/null || true; }
  done <"$dir/pids"
  wait
  rm -f "$dir/pids"
}

while [ $# -gt 0 ]; do
  case "$1" in
    --dir) DIR="$2"; shift 2 ;;
    --port) PORT="$2"; shift 2 ;;
    --workers) WORKERS="$2"; shift 2 ;;
    --concurrency) CONCURRENCY="$2"; shift 2 ;;
    --parallelism) PARALLELISM="$2"; shift 2 ;;
    --stop) stop_cluster "$2"; exit $? ;;
    *) usage ;;
  esac
done
[ "$WORKERS" -ge 1 ] && [ "$WORKERS" -le 26 ] || { echo "--workers: between 1 and 26, not $WORKERS" >&2; exit 2; }
command -v redis-server >/dev/null || { echo "redis-server is not installed: make system-deps" >&2; exit 1; }
[ -n "$DIR" ] || DIR="$(mktemp -d /tmp/nightshift-cluster.XXXX)"
mkdir -p "$DIR/logs" "$DIR/redis"
DIR="$(cd "$DIR" && pwd)"
chmod 711 "$DIR"  # PostgreSQL runs as its own user
[ ! -s "$DIR/pids" ] || { echo "a cluster already runs from $DIR; stop it with $0 --stop $DIR" >&2; exit 1; }
LOGS="$DIR/logs"

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"  # free_port, wait_for, mlflow_job_user
start() {  # start NAME COMMAND...: in its own session, detached from the caller's terminal and pipes
  local name="$1"; shift
  setsid "$@" >"$LOGS/$name.log" 2>&1 </dev/null &
  echo "$name $!" >>"$DIR/pids"
  STARTED=$!
}
READY=""
trap '[ -n "$READY" ] || { echo "the cluster did not start; stopping what did (logs in $LOGS)" >&2; stop_cluster "$DIR" || true; }' EXIT

# SeaweedFS: its script returns once the bucket answers, and leaves the server running with its state, pid and
# credentials under DIR/seaweedfs; it starts beside PostgreSQL and Redis
bash "$ROOT/infra/scripts/start_seaweedfs.sh" --dir "$DIR/seaweedfs" --bucket "$BUCKET" >"$LOGS/seaweedfs-start.log" 2>&1 &
SEAWEED=$!

# PostgreSQL: one cluster, databases for Airflow (and Celery's results) and MLflow
PG_PORT="$(free_port)"
start postgres bash "$ROOT/infra/scripts/start_postgres.sh" --data "$DIR/postgres" --port "$PG_PORT" --db airflow --db mlflow
wait_for PostgreSQL "$STARTED" "$LOGS/postgres.log" grep -q "postgres ready" "$LOGS/postgres.log"
PG="postgres@127.0.0.1:$PG_PORT"

# Redis, in memory only: a broker restart loses queued tasks, which the scheduler queues again
REDIS_PORT="$(free_port)"
start redis redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$DIR/redis" --save "" --appendonly no
wait_for Redis "$STARTED" "$LOGS/redis.log" redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping

wait "$SEAWEED" || { tail -20 "$LOGS/seaweedfs-start.log" >&2; exit 1; }
set -a
# shellcheck disable=SC1091
. "$DIR/seaweedfs/store.env"
set +a
export NIGHTSHIFT_STORAGE="s3://$BUCKET/nightshift"

# MLflow: PostgreSQL store, artifacts on the object store, proxied (clients need no S3 credentials for them), behind
# MLflow's basic-auth app (the admin's password is drawn into DIR/mlflow/auth/admin-password). The tasks log in as the
# user nightshift-job, made once the server answers; its password is drawn now, so that the workers start with it.
ML_PORT="$(free_port)"
start mlflow bash "$ROOT/infra/scripts/start_mlflow.sh" --port "$ML_PORT" --data "$DIR/mlflow" --auth basic \
  --backend-store-uri "postgresql+psycopg2://$PG/mlflow" --artifacts-destination "s3://$BUCKET/mlflow"
ML_PID=$STARTED  # it comes up while Airflow does
export MLFLOW_TRACKING_URI="http://127.0.0.1:$ML_PORT"
JOB_PASSWORD_FILE="$DIR/mlflow/auth/job-password"
mkdir -p "$DIR/mlflow/auth"
[ -s "$JOB_PASSWORD_FILE" ] || (umask 077 && "$BIN/python" -c 'import secrets; print(secrets.token_urlsafe(24))' >"$JOB_PASSWORD_FILE")
export MLFLOW_TRACKING_USERNAME=nightshift-job
MLFLOW_TRACKING_PASSWORD="$(cat "$JOB_PASSWORD_FILE")"
export MLFLOW_TRACKING_PASSWORD

# Airflow's control plane (start_airflow.sh: migrate, the training pool, api-server, scheduler, dag-processor)
# with the CeleryExecutor; its own NIGHTSHIFT_HOME holds only what the DAG file reads when it is parsed
[ -n "$PORT" ] || PORT="$(free_port)"
export AIRFLOW__CORE__EXECUTOR=CeleryExecutor
export AIRFLOW__CELERY__BROKER_URL="redis://127.0.0.1:$REDIS_PORT/0"
export AIRFLOW__CELERY__RESULT_BACKEND="db+postgresql+psycopg2://$PG/airflow"
export AIRFLOW__CELERY__WORKER_CONCURRENCY="$CONCURRENCY"
export AIRFLOW__CELERY__OPERATION_TIMEOUT=30  # the scheduler's send to a busy machine's broker
export AIRFLOW__CORE__HOSTNAME_CALLABLE=pipelines.worker.hostname
# no usage data leaves the machine; MLflow's telemetry client, failing to reach its endpoint from a task, removes an
# environment variable while a registry request reads the environment (KeyError '_MLFLOW_TELEMETRY_SESSION_ID')
export MLFLOW_DISABLE_TELEMETRY=true
DB_URL="postgresql+psycopg2://$PG/airflow"
CONTROL="$DIR/control"
AIRFLOW_HOME_CONTROL="$CONTROL/deployment/airflow"
mkdir -p "$AIRFLOW_HOME_CONTROL"  # the JWT secret now, which start_airflow.sh keeps: the workers start before it is done
[ -s "$AIRFLOW_HOME_CONTROL/jwt_secret" ] || "$BIN/python" -c 'import secrets; print(secrets.token_urlsafe(32))' >"$AIRFLOW_HOME_CONTROL/jwt_secret"
start airflow env NIGHTSHIFT_HOME="$CONTROL" bash "$ROOT/infra/scripts/start_airflow.sh" --port "$PORT" \
  --parallelism "$PARALLELISM" --db-url "$DB_URL"
AIRFLOW_PID=$STARTED
wait_for "Airflow's migration" "$AIRFLOW_PID" "$LOGS/airflow.log" grep -q "migration done" "$CONTROL/deployment/logs/migrate.log"
DEPLOY_ENV="$CONTROL/deployment/deployment.env"

# The workers: the control plane's Airflow settings, their own homes, disks and names
export AIRFLOW__CORE__DAGS_FOLDER="$ROOT/dags" AIRFLOW__CORE__LOAD_EXAMPLES=False AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT=120
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://127.0.0.1:$PORT/execution/"
export AIRFLOW__API__BASE_URL="http://127.0.0.1:$PORT"
export AIRFLOW__API_AUTH__JWT_SECRET="$(cat "$AIRFLOW_HOME_CONTROL/jwt_secret")"
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="$DB_URL"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PATH="$BIN:$PATH"
NAMES=()
for i in $(seq 1 "$WORKERS"); do
  name="worker-$(printf "\\x$(printf %x $((96 + i)))")"  # worker-a, worker-b, ...
  NAMES+=("$name")
  mkdir -p "$DIR/$name/home" "$DIR/$name/airflow"
  start "$name" env NIGHTSHIFT_HOME="$DIR/$name/home" AIRFLOW_HOME="$DIR/$name/airflow" NIGHTSHIFT_WORKER_NAME="$name" \
    AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT="$(free_port)" \
    "$BIN/airflow" celery worker --celery-hostname "$name@%h" --concurrency "$CONCURRENCY" --without-mingle --without-gossip
done
wait_for "MLflow server" "$ML_PID" "$LOGS/mlflow.log" curl -sf "$MLFLOW_TRACKING_URI/health"
mlflow_job_user "$DIR/mlflow/auth/admin-password" "$LOGS/mlflow-users.log"  # the job's MLflow user (lib.sh)
wait_for "Airflow (start_airflow.sh)" "$AIRFLOW_PID" "$LOGS/airflow.log" grep -q "Airflow UI" "$LOGS/airflow.log"
for name in "${NAMES[@]}"; do
  pid="$(awk -v n="$name" '$1 == n {print $2}' "$DIR/pids")"
  wait_for "$name" "$pid" "$LOGS/$name.log" grep -q "$name@.* ready" "$LOGS/$name.log"
done

# shellcheck disable=SC1090
. "$DEPLOY_ENV"
{
  echo "CLUSTER_DIR=\"$DIR\""
  echo "AIRFLOW_URL=\"$AIRFLOW_URL\""
  echo "AIRFLOW_LOGIN=\"$AIRFLOW_LOGIN\""
  echo "AIRFLOW_PASSWORD=\"$AIRFLOW_PASSWORD\""
  echo "WORKERS=\"${NAMES[*]}\""
  echo "PG_URL=\"postgresql://$PG\""
  echo "REDIS_URL=\"$AIRFLOW__CELERY__BROKER_URL\""
  echo "S3_BUCKET=\"$BUCKET\""
  for var in NIGHTSHIFT_STORAGE MLFLOW_TRACKING_URI MLFLOW_TRACKING_USERNAME MLFLOW_TRACKING_PASSWORD AWS_ENDPOINT_URL AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_DEFAULT_REGION \
      MLFLOW_S3_ENDPOINT_URL AIRFLOW__CORE__EXECUTOR AIRFLOW__CELERY__BROKER_URL AIRFLOW__CELERY__RESULT_BACKEND \
      AIRFLOW__DATABASE__SQL_ALCHEMY_CONN AIRFLOW__CORE__DAGS_FOLDER AIRFLOW__CORE__LOAD_EXAMPLES; do
    echo "export $var=\"${!var}\""
  done
  echo "export AIRFLOW_HOME=\"$AIRFLOW_HOME_CONTROL\""
  echo "export NIGHTSHIFT_HOME=\"$CONTROL\""
} >"$DIR/cluster.env"
chmod 600 "$DIR/cluster.env"
READY=1
echo "Airflow UI:    $AIRFLOW_URL   login: $AIRFLOW_LOGIN / $AIRFLOW_PASSWORD"
echo "MLflow:        $MLFLOW_TRACKING_URI (store postgresql://$PG/mlflow, artifacts s3://$BUCKET/mlflow)   login: admin," \
  "password in $DIR/mlflow/auth/admin-password; the tasks log in as nightshift-job (cluster.env)"
echo "Storage root:  $NIGHTSHIFT_STORAGE at $AWS_ENDPOINT_URL"
echo "Broker:        $AIRFLOW__CELERY__BROKER_URL   workers: ${NAMES[*]} (homes under $DIR/worker-*)"
echo "Cluster ready in $DIR (environment: $DIR/cluster.env, logs: $LOGS); stop it with $0 --stop $DIR"
