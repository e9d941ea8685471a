"""The nightly DAG under a real Airflow deployment, as `make airflow` starts it
(infra/scripts/start_airflow.sh): `airflow api-server`, `airflow scheduler` with the LocalExecutor at
parallelism 3, `airflow dag-processor`, a PostgreSQL metadata database (a cluster created with
initdb in this module's temp folder, run as a non-root user on a free loopback port) and MLflow
behind a real `mlflow server` with its basic-auth app, which the tasks log in to as the deployment's job
user. The corpus is the small demo corpus, the model the tiny BERT.

The first test is the first night of a fresh install (unpausing also starts today's run, whose
windows are empty: it must fail at once, not retry for a quarter of an hour). The second kills the
log-anomaly training task mid-epoch: Airflow retries it, the night ends `success` and the registry
is consistent.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.support.airflow_api import DAG, MODELS, Api
from tests.support.mlflow_server import free_port

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def deployment(corpus, tiny_bert):
    # Under the system temp folder, not pytest's (mode 700 for root): the PostgreSQL user must reach its data folder.
    base = Path(tempfile.mkdtemp(prefix="nightshift-airflow-"))
    base.chmod(0o711)
    home = base / "home"
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "NIGHTSHIFT_CONFIG", "AIRFLOW_HOME")
           and not k.startswith(("AIRFLOW__", "PYTEST", "MLFLOW_TRACKING_", "MLFLOW_AUTH_"))}
    env.update({
        "NIGHTSHIFT_HOME": str(home), "NIGHTSHIFT_RETRAIN_LOG_SOURCE": f"file://{corpus}", "NIGHTSHIFT_TRAIN_BASE_MODEL": str(tiny_bert),
        "NIGHTSHIFT_TRAIN_EPOCHS": "4", "NIGHTSHIFT_TRAIN_PATIENCE": "4", "NIGHTSHIFT_TRAIN_BATCH_SIZE": "32",
        "NIGHTSHIFT_TRAIN_LEARNING_RATE": "0.001", "NIGHTSHIFT_TRAIN_CPU_THREADS": "1", "NIGHTSHIFT_RCA_EPOCHS": "2",
        "NIGHTSHIFT_FORECAST_EPOCHS": "2", "NIGHTSHIFT_FORECAST_WINDOWS_PER_EPOCH": "1024", "NIGHTSHIFT_DRIFT_EMBEDDING_SAMPLE": "100",
        "NIGHTSHIFT_AIRFLOW_RETRY_DELAY": "3", "NIGHTSHIFT_AIRFLOW_TRAINING_POOL_SLOTS": "2",
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "NIGHTSHIFT_LOG_FORMAT": "console",
    })
    port = free_port()
    out = (base / "start_airflow.log").open("w")
    proc = subprocess.Popen(["bash", str(ROOT / "infra" / "scripts" / "start_airflow.sh"), "--port", str(port), "--parallelism", "3"],
                            env=env, stdout=out, stderr=subprocess.STDOUT, cwd=base, start_new_session=True)
    logs = home / "deployment" / "logs"
    try:
        deadline = time.monotonic() + 600
        while "Airflow UI" not in (base / "start_airflow.log").read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the deployment did not start: {(base / 'start_airflow.log').read_text()[-3000:]}")
            time.sleep(1)
        values = dict(line.removeprefix("export ").split("=", 1) for line in (home / "deployment" / "deployment.env").read_text().splitlines())
        values = {k: v.strip('"') for k, v in values.items()}
        api = Api(values["AIRFLOW_URL"], values["AIRFLOW_LOGIN"], values["AIRFLOW_PASSWORD"])
        api.wait_for_dag(300, f"{logs}/dag-processor.log")
        with pytest.MonkeyPatch.context() as login:  # this process reads the registry as the tasks do, with the job's login
            login.setenv("MLFLOW_TRACKING_USERNAME", values["MLFLOW_TRACKING_USERNAME"])
            login.setenv("MLFLOW_TRACKING_PASSWORD", values["MLFLOW_TRACKING_PASSWORD"])
            yield SimpleNamespace(api=api, home=home, mlflow=values["MLFLOW_TRACKING_URI"], logs=logs, base=base)
    finally:
        os.kill(proc.pid, signal.SIGTERM)  # its trap stops every component it started
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        out.close()
        if os.environ.get("NIGHTSHIFT_KEEP_E2E") is None:
            shutil.rmtree(base, ignore_errors=True)


def mlflow_client(deployment):
    from mlflow import MlflowClient

    return MlflowClient(deployment.mlflow, registry_uri=deployment.mlflow)


def night_runs(client, model: str, window_start: str) -> list:
    experiment = client.get_experiment_by_name("nightshift")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.task = '{model}'")
    return [r for r in runs if r.data.tags.get("data.window", "").startswith(window_start)]


def assert_registry_consistent(client) -> None:
    """Every version has a decision; each champion is a version whose decision is `promoted`; no run is left RUNNING."""
    for model in MODELS:
        versions = client.search_model_versions(f"name='{model}'")
        assert versions, model
        assert all(v.tags.get("promotion.decision") not in (None, "pending") for v in versions), \
            {v.version: v.tags.get("promotion.decision") for v in versions}
        champion = client.get_model_version_by_alias(model, "champion")
        assert champion.tags["promotion.decision"] == "promoted", (model, champion.version, champion.tags)
    experiment = client.get_experiment_by_name("nightshift")
    assert not client.search_runs([experiment.experiment_id], filter_string="attributes.status = 'RUNNING'")


def test_first_night_of_a_fresh_install_under_the_real_scheduler(deployment):
    api = deployment.api
    assert {p["name"]: p["slots"] for p in api("GET", "/pools")["pools"]}["nightshift_training"] == 2
    api("PATCH", f"/dags/{DAG}", json={"is_paused": False})  # the scheduler starts today's night: its windows are empty
    deadline = time.monotonic() + 120
    while not (scheduled := [r for r in api.runs() if r["run_type"] == "scheduled"]):
        assert time.monotonic() < deadline, "unpausing started no run"
        time.sleep(2)
    api("POST", f"/dags/{DAG}/dagRuns", json={"dag_run_id": "first-night", "logical_date": "2026-11-21T00:00:00Z", "conf": {}})

    started = time.monotonic()
    assert api.wait(scheduled[0]["dag_run_id"], 600, deployment.logs) == "failed"
    empty = api.tasks(scheduled[0]["dag_run_id"])
    assert empty["ingest_training_window"]["state"] == "failed" and empty["ingest_training_window"]["try_number"] == 1  # no retry storm
    assert empty["summarise"]["state"] == "failed"  # the summary is written, naming the failed tasks, and the run shows red
    assert time.monotonic() - started < 600

    assert api.wait("first-night", 1500, deployment.logs) == "success"
    summary = json.loads((deployment.home / "runs" / "2026-11-21" / "summary.json").read_text())
    assert {m: o["decision"] for m, o in summary["models"].items()} == {m: "promoted" for m in MODELS}
    assert summary["failed_tasks"] == []
    scored = (deployment.home / "scored" / "2026-11-21" / "logs.scored.ndjson").read_text().splitlines()
    assert len(scored) == summary["scoring"]["scored"] > 0
    assert all(json.loads(line)["@timestamp"].startswith("2026-11-20") for line in scored)
    assert summary["scoring"]["rca"]["model"] == "failure-rca"
    client = mlflow_client(deployment)
    for model in MODELS:
        assert client.get_model_version_by_alias(model, "champion").version == "1"
    assert_registry_consistent(client)


def test_the_tasks_registered_as_the_job_user_and_no_login_reads_nothing(deployment):
    """After the first night: without a login the tracking server answers 401 (the registry and the experiment alike);
    the models the tasks registered are the job user's (it manages them, as their creator); no log and nothing
    printed holds the job's password."""
    import requests
    from mlflow import MlflowClient

    url = deployment.mlflow
    for path in ("/api/2.0/mlflow/registered-models/search", "/api/2.0/mlflow/experiments/get-by-name?experiment_name=nightshift"):
        assert requests.get(url + path, timeout=30).status_code == 401, path
    assert requests.get(url + "/health", timeout=30).status_code == 200
    admin = deployment.home / "deployment" / "mlflow" / "auth" / "admin-password"
    with pytest.MonkeyPatch.context() as login:
        login.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        login.setenv("MLFLOW_TRACKING_PASSWORD", admin.read_text().strip())
        from mlflow.server import get_app_client

        auth = get_app_client("basic-auth", tracking_uri=url)
        granted = {m: auth.get_user_permission("nightshift-job", "registered_model", m).permission for m in MODELS}
        assert granted == {m: "MANAGE" for m in MODELS}, granted
    assert {m.name for m in MlflowClient(url, registry_uri=url).search_registered_models()} >= set(MODELS)  # with the job's login

    password = os.environ["MLFLOW_TRACKING_PASSWORD"]
    printed = [deployment.base / "start_airflow.log", *(p for p in deployment.home.rglob("*") if p.is_file() and p.suffix in (".log", ".ndjson", ".json", ".html"))]
    assert not [str(p) for p in printed if password in p.read_text(errors="replace")]


def test_training_killed_mid_epoch_is_retried_and_the_night_ends_consistent(deployment):
    import psutil

    api, client = deployment.api, mlflow_client(deployment)
    api("POST", f"/dags/{DAG}/dagRuns", json={"dag_run_id": "second-night", "logical_date": "2026-11-22T00:00:00Z", "conf": {}})

    deadline, killed = time.monotonic() + 1200, None
    while killed is None:  # the first epoch logged, the second under way: kill the task process
        assert time.monotonic() < deadline, "train_log_anomaly never reached its second epoch"
        running = [r for r in night_runs(client, "log-anomaly", "2026-11-17") if r.info.status == "RUNNING"]
        if running and client.get_metric_history(running[0].info.run_id, "epochs/train_loss"):
            ti = api.tasks("second-night")["train_log_anomaly"]
            assert ti["state"] == "running" and ti["try_number"] == 1, ti
            assert "best_epoch" not in client.get_run(running[0].info.run_id).data.metrics  # still training
            pids = [p.pid for p in psutil.process_iter(["cmdline"]) if f"airflow worker -- {ti['id']}" in " ".join(p.info["cmdline"] or [])]
            pid = pids[0] if pids else ti["pid"]
            os.kill(pid, signal.SIGKILL)
            killed = running[0].info.run_id
        time.sleep(0.2)

    assert api.wait("second-night", 1800, deployment.logs) == "success"
    ti = api.tasks("second-night")["train_log_anomaly"]
    assert ti["state"] == "success" and ti["try_number"] == 2  # Airflow retried it
    assert client.get_run(killed).info.status == "KILLED"  # the retry marked its dead try's run
    runs = night_runs(client, "log-anomaly", "2026-11-17")
    assert sorted(r.info.status for r in runs) == ["FINISHED", "KILLED"]
    summary = json.loads((deployment.home / "runs" / "2026-11-22" / "summary.json").read_text())
    assert summary["failed_tasks"] == [] and summary["models"]["log-anomaly"]["decision"] in ("promoted", "rejected")
    assert summary["scoring"]["scored"] > 0
    assert_registry_consistent(client)


def test_a_model_that_keeps_failing_leaves_scoring_and_the_summary_to_the_champions(deployment):
    """Both BERT trainings fail on every try (a base checkpoint that does not exist): the forecaster's
    branch goes on, scoring runs with the champion in place, the summary names the failed tasks, and
    the run shows red."""
    api, client = deployment.api, mlflow_client(deployment)
    champion = client.get_model_version_by_alias("log-anomaly", "champion").version
    summary_file = deployment.home / "runs" / "2026-11-22" / "summary.json"
    summary_file.unlink()
    # the same night again (a logical date is unique per DAG; the night is its day)
    api("POST", f"/dags/{DAG}/dagRuns", json={"dag_run_id": "broken-night", "logical_date": "2026-11-22T01:00:00Z",
                                             "conf": {"base_model": str(deployment.base / "no-such-checkpoint")}})
    assert api.wait("broken-night", 1800, deployment.logs) == "failed"
    tasks = api.tasks("broken-night")
    for task_id in ("train_log_anomaly", "train_failure_rca"):
        assert tasks[task_id]["state"] == "failed" and tasks[task_id]["try_number"] == 3  # the first try and two retries
    assert tasks["train_metric_forecast"]["state"] == "success" and tasks["score_fresh_window"]["state"] == "success"
    summary = json.loads(summary_file.read_text())
    assert summary["failed_tasks"] == ["train_failure_rca", "train_log_anomaly"]
    assert summary["models"]["log-anomaly"]["decision"] == "failed" and "train_log_anomaly" in summary["models"]["log-anomaly"]["reason"]
    assert summary["models"]["metric-forecast"]["decision"] in ("promoted", "rejected")
    assert summary["scoring"]["scored"] > 0 and summary["scoring"]["version"] == champion
    assert_registry_consistent(client)
