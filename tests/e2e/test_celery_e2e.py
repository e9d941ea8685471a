"""Nights of the nightly DAG across two machines, as `make demo-cluster` starts them
(infra/scripts/start_cluster.sh): the CeleryExecutor with Redis as its broker and PostgreSQL as its result backend,
two Celery workers (`worker-a`, `worker-b`, one task at a time each) that share no disk (each its own NIGHTSHIFT_HOME
and AIRFLOW_HOME), the storage root on a real object store (SeaweedFS, `NIGHTSHIFT_STORAGE=s3://…`), and MLflow
behind a tracking server on PostgreSQL with its artifacts on the same store. The corpus is the small demo corpus,
the model the tiny BERT.

Two nights: the first promotes the first versions; the second's candidates are checked for drift against the
champions' training snapshots, which a task on either worker wrote, so the check only runs when every hand-off
between tasks goes through the shared storage.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.support.airflow_api import DAG, MODELS, Api
from tests.support.mlflow_server import free_port

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "infra" / "scripts" / "start_cluster.sh"
WORKERS = {"worker-a", "worker-b"}
NIGHTS = {"night-1": "2026-11-21", "night-2": "2026-11-22"}

pytestmark = pytest.mark.slow


def read_env(path: Path) -> dict[str, str]:
    pairs = (line.removeprefix("export ").split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k: v.strip('"') for k, v in pairs}


@pytest.fixture(scope="module")
def cluster(corpus, tiny_bert):
    # Under the system temp folder, not pytest's (mode 700 for root): the PostgreSQL user must reach its data folder.
    base = Path(tempfile.mkdtemp(prefix="nightshift-cluster-"))
    base.chmod(0o711)
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "NIGHTSHIFT_CONFIG", "AIRFLOW_HOME", "NIGHTSHIFT_HOME")
           and not k.startswith(("AIRFLOW__", "PYTEST", "AWS_", "NIGHTSHIFT_STORAGE"))}
    env.update({
        "NIGHTSHIFT_RETRAIN_LOG_SOURCE": f"file://{corpus}", "NIGHTSHIFT_TRAIN_BASE_MODEL": str(tiny_bert),
        "NIGHTSHIFT_TRAIN_EPOCHS": "1", "NIGHTSHIFT_TRAIN_PATIENCE": "1", "NIGHTSHIFT_TRAIN_BATCH_SIZE": "32",
        "NIGHTSHIFT_TRAIN_LEARNING_RATE": "0.001", "NIGHTSHIFT_TRAIN_CPU_THREADS": "1", "NIGHTSHIFT_RCA_EPOCHS": "1",
        "NIGHTSHIFT_FORECAST_EPOCHS": "1", "NIGHTSHIFT_FORECAST_WINDOWS_PER_EPOCH": "256", "NIGHTSHIFT_DRIFT_EMBEDDING_SAMPLE": "100",
        "NIGHTSHIFT_AIRFLOW_RETRY_DELAY": "3", "NIGHTSHIFT_AIRFLOW_TRAINING_POOL_SLOTS": "2",
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "NIGHTSHIFT_LOG_FORMAT": "console",
    })
    folder = base / "cluster"
    started = subprocess.run(["bash", str(SCRIPT), "--dir", str(folder), "--port", str(free_port()), "--workers", "2", "--concurrency", "1"],
                             env=env, capture_output=True, text=True, timeout=900, cwd=base)
    try:
        assert started.returncode == 0, f"the cluster did not start:\n{started.stderr[-3000:]}"
        values = read_env(folder / "cluster.env")
        api = Api(values["AIRFLOW_URL"], values["AIRFLOW_LOGIN"], values["AIRFLOW_PASSWORD"])
        api.wait_for_dag(300, f"{folder}/logs")
        deadline = time.monotonic() + 300
        # Unpausing starts today's night too (catchup=False), whose windows are empty: failed at once, it does not
        # hold the one active run (max_active_runs=1) that the nights under test wait for.
        api("PATCH", f"/dags/{DAG}", json={"is_paused": False})
        while not (scheduled := [r for r in api.runs() if r["run_type"] == "scheduled"]):
            assert time.monotonic() < deadline, "unpausing started no run"
            time.sleep(1)
        api("PATCH", f"/dags/{DAG}/dagRuns/{scheduled[0]['dag_run_id']}", json={"state": "failed"})
        yield SimpleNamespace(api=api, env=values, logs=folder / "logs", dir=folder)
    finally:
        subprocess.run(["bash", str(SCRIPT), "--stop", str(folder)], capture_output=True, timeout=600)
        if os.environ.get("NIGHTSHIFT_KEEP_E2E") is None:
            shutil.rmtree(base, ignore_errors=True)


def object_store(env: dict[str, str]):
    import s3fs

    return s3fs.S3FileSystem(key=env["AWS_ACCESS_KEY_ID"], secret=env["AWS_SECRET_ACCESS_KEY"], endpoint_url=env["AWS_ENDPOINT_URL"],
                             client_kwargs={"region_name": env["AWS_DEFAULT_REGION"]})


def xcom(api: Api, run_id: str, task_id: str):
    value = api("GET", f"/dags/{DAG}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value")["value"]
    return json.loads(value) if isinstance(value, str) else value


def test_two_nights_run_across_two_workers_that_share_only_the_object_store(cluster):
    api, root = cluster.api, cluster.env["NIGHTSHIFT_STORAGE"]
    for run_id, day in NIGHTS.items():  # max_active_runs=1: the second waits for the first
        api("POST", f"/dags/{DAG}/dagRuns", json={"dag_run_id": run_id, "logical_date": f"{day}T00:00:00Z", "conf": {}})

    for run_id in NIGHTS:
        state = api.wait(run_id, 1800, cluster.logs)
        tasks = api.tasks(run_id)
        assert state == "success", {k: (t["state"], t["hostname"]) for k, t in tasks.items()}
        ran_on = {task_id: t["hostname"] for task_id, t in tasks.items()}
        assert set(ran_on.values()) == WORKERS, ran_on  # both workers ran tasks of this night, and nothing else did

        night = xcom(api, run_id, "plan")  # what travels between the tasks: locations under the storage root
        for key in ("train_snapshot", "fresh_snapshot", "summary_file", "metric_snapshot", "metric_fresh_snapshot"):
            assert night[key].startswith(f"{root}/"), (key, night[key])

    summary = xcom(api, "night-2", "summarise")
    assert summary["failed_tasks"] == []
    for model in MODELS:  # the candidates were checked against the champions' snapshots, written on either worker
        outcome = summary["models"][model]
        assert outcome["decision"] in ("promoted", "rejected"), (model, outcome)
        assert outcome["promotion"]["drift"]["status"] in ("none", "warn", "severe"), (model, outcome["promotion"]["drift"])

    fs = object_store(cluster.env)
    sink = summary["scoring"]["sink"]
    assert sink.startswith(f"{root}/"), sink
    scored = fs.cat_file(sink).decode().splitlines()
    assert len(scored) == summary["scoring"]["scored"] > 0
    assert all(json.loads(line)["@timestamp"].startswith("2026-11-21") for line in scored)
    assert json.loads(fs.cat_file(night["summary_file"]))["failed_tasks"] == []
    for worker in WORKERS:  # the workers' own disks hold no snapshot: nothing a later task needed stayed there
        assert not list((cluster.dir / worker / "home").glob("**/manifest.json")), worker
