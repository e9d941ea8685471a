"""Root causes the minute a job fails, on real servers: an alert for a failed job posted to a real Alertmanager
(Debian prometheus-alertmanager, configured from infra/prometheus/alertmanager.yml) reaches a real `nightshift serve`
(uvicorn, a failure-rca champion in the registry) through its webhook with a bearer key from a file; the job's
documents in a real Elasticsearch (security on) get `ml.rca.*`, and a webhook receiver gets one message per job with
its causes and actions, however often Alertmanager delivers the alert. The handler's own cases (resolved, no job
label, no champion, a notification that fails) are in tests/unit/test_alerts.py."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest
import requests
import yaml

from tests.integration.test_serve import metric_value, ready, running_server, wait_for
from tests.support.es_cluster import Cluster
from tests.support.prom_servers import alertmanager
from tests.support.webhook import WebhookReceiver

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # a missing Alertmanager fails the test: `make test` installs it (make system-deps)

JOB = "train-4242"
OOM = "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 15.78 GiB total capacity)"


def line(ts: str, level: str, message: str, job: str | None) -> dict:
    doc = {"@timestamp": ts, "message": message, "log": {"level": level}, "service": {"name": "trainer"}, "host": {"name": "gpu-3"}}
    if job:
        doc["labels"] = {"job_id": job}
    return doc


def alertmanager_config(serve_url: str, key_file: Path) -> str:
    """infra/prometheus/alertmanager.yml pointed at the test's server and key file, with its waits cut to a second so
    that the group is delivered again and again while the test watches."""
    config = yaml.safe_load((ROOT / "infra" / "prometheus" / "alertmanager.yml").read_text())
    (route,) = [r for r in config["route"]["routes"] if r["receiver"] == "nightshift-rca"]
    route.update(group_wait="0s", group_interval="1s", repeat_interval="1s")
    (receiver,) = [r for r in config["receivers"] if r["name"] == "nightshift-rca"]
    (hook,) = receiver["webhook_configs"]
    hook["url"] = f"{serve_url}/v1/alerts"
    hook["http_config"]["authorization"]["credentials_file"] = str(key_file)
    return yaml.safe_dump(config)


def test_a_failed_job_alert_through_alertmanager_writes_root_causes_and_notifies_once(
        es_node, es_credentials, settings, quick_rca, train_snapshot, tmp_path, monkeypatch):
    from pipelines.config import load_settings
    from pipelines.tasks.failure_rca import train_failure_rca
    from serving.auth import make_key

    monkeypatch.setenv("NIGHTSHIFT_CANDIDATES_FAMILIES", "tfidf")  # the champion's family does not matter here: the quickest
    train_failure_rca(train_snapshot.path, load_settings())

    cluster = Cluster.on(es_node)
    try:
        # The job straddles midnight: the first day's index maps the job id as a keyword (nightshift's template does),
        # the second was mapped dynamically (text with a .keyword sub-field).
        cluster.client.indices.create(index=cluster.name("logs-2026.12.06"), mappings={"properties": {
            "@timestamp": {"type": "date"}, "message": {"type": "text"}, "labels": {"properties": {"job_id": {"type": "keyword"}}}}})
        cluster.load([line("2026-12-06T23:59:50Z", "info", "epoch 3/8 started, batch size 512", JOB),
                      line("2026-12-06T23:59:55Z", "info", "epoch 3/8 started, batch size 64", "train-7"),
                      line("2026-12-07T00:00:05Z", "error", OOM, JOB),
                      line("2026-12-07T00:00:06Z", "error", "torch.OutOfMemoryError: CUDA out of memory", JOB),
                      line("2026-12-07T00:00:07Z", "error", "disk quota exceeded on /scratch", None)])
        key_file = tmp_path / "nightshift-alerts.key"
        key = make_key(settings.home / "api-keys", "alertmanager", {"alerts"})
        key_file.write_text(key + "\n")  # as `nightshift serve-key ... > FILE` leaves it

        with WebhookReceiver() as chat:
            monkeypatch.setenv("NIGHTSHIFT_ALERTS_LOG_SOURCE", f"{cluster.url}/{cluster.name('logs-*')}")
            monkeypatch.setenv("NIGHTSHIFT_ALERTS_NOTIFY_URL", chat.url)
            monkeypatch.setenv("NIGHTSHIFT_SERVE_MODELS", "failure-rca")
            with running_server(load_settings()) as serve_url:
                ready(serve_url, {"failure-rca"})
                with alertmanager(tmp_path / "am", alertmanager_config(serve_url, key_file)) as am_url:
                    now = datetime.now(timezone.utc).isoformat()
                    alerts = [{"labels": {"alertname": "KubernetesJobFailed", "nightshift_rca": "true", "namespace": "ml", "job_name": job},
                               "annotations": {"description": text}, "startsAt": now}
                              for job, text in ((JOB, f"Kubernetes Job ml/{JOB} failed"),
                                                ("train-lost", "slurmstepd: error: *** JOB 77 CANCELLED DUE TO TIME LIMIT ***"))]
                    for _ in range(2):  # sent twice, as a rule evaluated twice sends it
                        r = requests.post(f"{am_url}/api/v2/alerts", json=alerts, timeout=10)
                        assert r.status_code == 200, r.text
                    wait_for(lambda: len(chat.got) >= 2, "the notifications", timeout=60)

                    def deliveries() -> float:
                        metrics = requests.get(f"{serve_url}/metrics", headers={"Authorization": f"Bearer {key}"},
                                               timeout=10).text
                        return metric_value(metrics, "nightshift_serve_requests_total", route="/v1/alerts", status="200")
                    wait_for(lambda: deliveries() >= 3, "Alertmanager to deliver the group again", timeout=60)
        docs = cluster.docs("logs-*")
    finally:
        cluster.close()

    # one message per job, however often the group came
    assert sorted(m["job"] for m in chat.got) == [JOB, "train-lost"], chat.got
    sent = {m["job"]: m for m in chat.got}
    first = sent[JOB]
    assert first["text_from"] == "elasticsearch" and first["documents"] == 3 and first["written"] == 3
    assert first["model"]["name"] == "failure-rca" and first["alert"]["name"] == "KubernetesJobFailed"
    assert first["text"].startswith(f"*Failed job `{JOB}`*") and (first["causes"] or first["low_confidence"])
    assert first["actions"] and all(action in first["text"] for action in first["actions"])
    assert sent["train-lost"]["text_from"] == "annotations" and sent["train-lost"]["written"] is None

    # the job's documents, on both days, carry what was sent; the other job's and the job-less line do not
    explained = {d["message"]: d["ml"]["rca"] for d in docs.values() if "ml" in d}
    assert set(explained) == {"epoch 3/8 started, batch size 512", OOM, "torch.OutOfMemoryError: CUDA out of memory"}
    for rca in explained.values():
        assert rca["labels"] == [c["label"] for c in first["causes"]] and rca["actions"] == first["actions"]
        assert rca["model"]["name"] == "failure-rca" and rca["model"]["version"] == first["model"]["version"]
