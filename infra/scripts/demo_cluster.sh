#!/usr/bin/env bash
# `make demo-cluster`: one night of the nightly DAG on a multi-machine deployment, on loopback
# (infra/scripts/start_cluster.sh: PostgreSQL, Redis, SeaweedFS, an MLflow server, Airflow with the CeleryExecutor,
# two Celery workers that share no disk). Writes the demo corpus as the log source every worker reads (it stands in
# for Elasticsearch), runs the night of DATE (default 2026-11-21, the last the corpus covers), prints where each task
# ran and where the night's data lives, then stops everything. Quick settings by default (any NIGHTSHIFT_* overrides).
#   infra/scripts/demo_cluster.sh [DATE]      KEEP=1 leaves the cluster running (stop it as it says)
# Its folder (/tmp/nightshift-demo-cluster.XXXX) is removed at the end, unless the night failed.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BIN="${VENV_BIN:-$ROOT/.venv/bin}"
DATE="${1:-2026-11-21}"
DIR="$(mktemp -d /tmp/nightshift-demo-cluster.XXXX)"
chmod 711 "$DIR"
export NIGHTSHIFT_HOME="$DIR/home"  # the machine that starts the demo; the workers get their own
: "${NIGHTSHIFT_TRAIN_EPOCHS:=1}" "${NIGHTSHIFT_RCA_EPOCHS:=1}" "${NIGHTSHIFT_FORECAST_EPOCHS:=2}" "${NIGHTSHIFT_TRAIN_CPU_THREADS:=1}"
: "${NIGHTSHIFT_AIRFLOW_TRAINING_POOL_SLOTS:=2}" "${NIGHTSHIFT_DRIFT_EMBEDDING_SAMPLE:=200}" "${NIGHTSHIFT_LOG_FORMAT:=console}"
: "${NIGHTSHIFT_AIRFLOW_RETRY_DELAY:=10}"
export NIGHTSHIFT_TRAIN_EPOCHS NIGHTSHIFT_RCA_EPOCHS NIGHTSHIFT_FORECAST_EPOCHS NIGHTSHIFT_TRAIN_CPU_THREADS \
  NIGHTSHIFT_AIRFLOW_TRAINING_POOL_SLOTS NIGHTSHIFT_DRIFT_EMBEDDING_SAMPLE NIGHTSHIFT_LOG_FORMAT NIGHTSHIFT_AIRFLOW_RETRY_DELAY
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

echo "== the log source: the demo corpus in $DIR/source"
SOURCE="$("$BIN/nightshift" demo-data --out "$DIR/source" --per-day "${PER_DAY:-400}" --json |
  "$BIN/python" -c 'import json, sys; print(json.load(sys.stdin)["logs"])')"
export NIGHTSHIFT_RETRAIN_LOG_SOURCE="file://$SOURCE"

finish() {  # stop everything; the folder goes too, unless the night failed (its logs stay)
  local rc=$?
  echo "== stopping the cluster"
  bash "$ROOT/infra/scripts/start_cluster.sh" --stop "$DIR/cluster" || true
  if [ "$rc" = 0 ]; then rm -rf "$DIR"; else echo "logs kept in $DIR/cluster/logs and $DIR/cluster/worker-*/airflow/logs" >&2; fi
}
[ -n "${KEEP:-}" ] || trap finish EXIT
echo "== starting the cluster in $DIR/cluster (a minute or two)"
bash "$ROOT/infra/scripts/start_cluster.sh" --dir "$DIR/cluster" --workers 2 --concurrency 1
set -a
# shellcheck disable=SC1091
. "$DIR/cluster/cluster.env"
set +a

echo "== the night of $DATE"
"$BIN/python" - "$DATE" <<'PY'
"""Run one night through the api-server's REST API (v2), then say where each task ran and where its data lives."""
import json
import os
import sys
import time

import requests
import s3fs

DAG, date = "nightly_retrain", sys.argv[1]
url = os.environ["AIRFLOW_URL"]
http = requests.Session()
token = http.post(f"{url}/auth/token", json={"username": os.environ["AIRFLOW_LOGIN"], "password": os.environ["AIRFLOW_PASSWORD"]}, timeout=30)
token.raise_for_status()
http.headers["Authorization"] = f"Bearer {token.json()['access_token']}"


def api(method, path, **kwargs):
    r = http.request(method, f"{url}/api/v2{path}", timeout=60, **kwargs)
    if r.status_code >= 300:
        raise SystemExit(f"{method} {path}: {r.status_code} {r.text[:300]}")
    return r.json()


for _ in range(300):  # the dag-processor has parsed the DAG
    if http.get(f"{url}/api/v2/dags/{DAG}", timeout=30).status_code == 200:
        break
    time.sleep(2)
# unpausing also starts today's night (catchup=False), outside the corpus: stopped, it leaves the one active run to ours
api("PATCH", f"/dags/{DAG}", json={"is_paused": False})
for _ in range(120):
    scheduled = [r for r in api("GET", f"/dags/{DAG}/dagRuns")["dag_runs"] if r["run_type"] == "scheduled"]
    if scheduled:
        api("PATCH", f"/dags/{DAG}/dagRuns/{scheduled[0]['dag_run_id']}", json={"state": "failed"})
        break
    time.sleep(1)
run = f"demo-{date}"
api("POST", f"/dags/{DAG}/dagRuns", json={"dag_run_id": run, "logical_date": f"{date}T00:00:00Z", "conf": {}})
started, state, seen = time.monotonic(), "queued", {}
while state not in ("success", "failed"):
    time.sleep(5)
    state = api("GET", f"/dags/{DAG}/dagRuns/{run}")["state"]
    for t in api("GET", f"/dags/{DAG}/dagRuns/{run}/taskInstances")["task_instances"]:
        now = (t["state"], t["try_number"])
        if t["state"] in ("success", "failed", "up_for_retry", "skipped", "upstream_failed") and seen.get(t["task_id"]) != now:
            seen[t["task_id"]] = now
            print(f"  {time.monotonic() - started:5.0f}s  {t['task_id']} {t['state']} on {t['hostname'] or '-'}", flush=True)

tasks = sorted(api("GET", f"/dags/{DAG}/dagRuns/{run}/taskInstances")["task_instances"], key=lambda t: t["start_date"] or "")
print(f"\nnight {date}: {state} in {time.monotonic() - started:.0f}s\n\n{'task':28} {'state':10} {'ran on':10} seconds")
for t in tasks:
    print(f"{t['task_id']:28} {t['state'] or '-':10} {t['hostname'] or '-':10} {t['duration'] or 0:7.1f}")


def xcom(task_id):
    value = api("GET", f"/dags/{DAG}/dagRuns/{run}/taskInstances/{task_id}/xcomEntries/return_value")["value"]
    return json.loads(value) if isinstance(value, str) else value


night = xcom("plan")
print("\nwhere the night's data lives (storage root NIGHTSHIFT_STORAGE=" + os.environ["NIGHTSHIFT_STORAGE"] + ")")
for key in ("train_snapshot", "fresh_snapshot", "metric_snapshot", "metric_fresh_snapshot", "scored_sink", "summary_file"):
    print(f"  {key:22} {night.get(key)}")
fs = s3fs.S3FileSystem(endpoint_url=os.environ["AWS_ENDPOINT_URL"])
root = os.environ["NIGHTSHIFT_STORAGE"]
if fs.exists(root):
    objects = fs.find(root)
    print(f"  {len(objects)} objects under {root}, {sum(fs.du(root, total=False).values()) / 1e6:.1f} MB")
print(f"\nMLflow: {os.environ['MLFLOW_TRACKING_URI']} (runs and registry in PostgreSQL {os.environ['PG_URL']}/mlflow; "
      f"artifacts proxied to s3://{os.environ.get('S3_BUCKET', 'nightshift')}/mlflow)")
from mlflow import MlflowClient  # noqa: E402 - only once the night has run

client = MlflowClient()
for model in ("log-anomaly", "failure-rca", "metric-forecast"):
    for v in client.search_model_versions(f"name='{model}'"):
        model_id = getattr(v, "model_id", None) or (v.source.removeprefix("models:/") if v.source.startswith("models:/m-") else None)
        where = client.get_logged_model(model_id).artifact_location if model_id else v.source  # mlflow-artifacts:/… on the store
        where = where.replace("mlflow-artifacts:", f"s3://{os.environ.get('S3_BUCKET', 'nightshift')}/mlflow")
        print(f"  {model} v{v.version} ({v.tags.get('promotion.decision', '-')}): {where}")
mlflow_objects = fs.find(f"{os.environ.get('S3_BUCKET', 'nightshift')}/mlflow")
print(f"  {len(mlflow_objects)} artifact objects under s3://{os.environ.get('S3_BUCKET', 'nightshift')}/mlflow")
for worker in os.environ["WORKERS"].split():
    home = os.path.join(os.environ["CLUSTER_DIR"], worker, "home")
    files = [os.path.join(d, f) for d, _, fs_ in os.walk(home) for f in fs_]
    print(f"{worker}: its own NIGHTSHIFT_HOME {home} holds {len(files)} files (caches); task logs in {os.environ['CLUSTER_DIR']}/{worker}/airflow/logs (KEEP=1 keeps them)")
sys.exit(0 if state == "success" else 1)
PY
