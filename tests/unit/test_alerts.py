"""`POST /v1/alerts`, Alertmanager's webhook (serving/alerts.py), in-process with FastAPI's TestClient and a stand-in
failure-rca version, its text from the alerts' annotations (no Elasticsearch: tests/integration/test_alertmanager.py
runs the whole path on real servers): resolved alerts ignored, an alert without the job label skipped with the reason,
a job answered once however often its alert comes, no failure-rca version a 503 saying why, the notification's body,
a notification that fails, the `alerts` scope, and the settings refused at startup."""

from __future__ import annotations

from typing import Iterator

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from pipelines.config import ConfigError, load_settings
from serving.auth import make_key
from tests.support.webhook import WebhookReceiver

OOM = "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"


class StandInRca:
    """A failure-rca version: 'oom' for a text about memory, no cause (and the knowledge base's 'time-limit') otherwise."""

    task, family = "failure-rca", "stand-in"

    def __init__(self):
        self.texts: list[str] = []

    def predict(self, context, frame: pd.DataFrame, params=None) -> pd.DataFrame:
        self.texts += list(frame["message"])
        rows = [(["oom"], {"oom": 0.93, "disk-full": 0.04}, ["Lower the batch size", "Ask for a larger GPU"], False, None, 0.0)
                if "memory" in text.lower() else ([], {"oom": 0.1, "disk-full": 0.1}, [], True, "time-limit", 0.31) for text in frame["message"]]
        return pd.DataFrame(rows, columns=["labels", "scores", "actions", "low_confidence", "kb_match", "kb_similarity"])


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    """A webhook receiver on a free loopback port: its `url`, the JSON bodies it `got`, the `status` it answers."""
    with WebhookReceiver() as hook:
        yield hook


@pytest.fixture
def keys(home) -> dict[str, str]:
    path = home / "api-keys"
    return {"alertmanager": make_key(path, "alertmanager", {"alerts"}), "scorer": make_key(path, "scorer", {"score"})}


@pytest.fixture
def app_for(stand_in, keys):
    """`app_for(rca=True)`: the app on the current environment's settings; failure-rca v3 is the stand-in (rca=False: no
    failure-rca version)."""
    from serving.champions import FAILURE_RCA, Slot
    from serving.server import create_app

    def make(rca: bool = True):
        app = create_app(load_settings(), client=stand_in["registry"], start_refresh=False)
        champions = app.state.server.champions
        champions.refresh()
        if rca:
            champions.slots[FAILURE_RCA] = Slot(FAILURE_RCA, "3", StandInRca(), "stand-in", 0.0)
        return app
    return make


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def alert(job: str | None = "train-4242", status: str = "firing", description: str = OOM, labels: dict[str, str] | None = None) -> dict:
    return {"status": status, "labels": {"alertname": "KubeJobFailed", "namespace": "ml", **({"job_name": job} if job else {}), **(labels or {})},
            "annotations": {"description": description, "summary": "Job failed"} if description else {},
            "startsAt": "2026-12-07T02:00:00Z", "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://prometheus:9090/graph",
            "fingerprint": f"fp-{job}"}


def message(*alerts: dict, status: str = "firing") -> dict:
    """Alertmanager's webhook body, version 4."""
    return {"version": "4", "groupKey": '{}:{alertname="KubeJobFailed"}', "truncatedAlerts": 0, "status": status, "receiver": "nightshift",
            "groupLabels": {"alertname": "KubeJobFailed"}, "commonLabels": {}, "commonAnnotations": {},
            "externalURL": "http://alertmanager:9093", "alerts": list(alerts)}


def test_a_firing_job_is_answered_once_and_notified_with_its_causes(app_for, keys, receiver, monkeypatch):
    monkeypatch.setenv("NIGHTSHIFT_ALERTS_NOTIFY_URL", receiver.url)
    app = app_for()
    with TestClient(app) as client:
        r = client.post("/v1/alerts", json=message(alert()), headers=bearer(keys["alertmanager"]))
        assert r.status_code == 200, r.text
        out = r.json()
        assert (out["model"], out["version"], out["receiver"]) == ("failure-rca", "3", "nightshift")
        (job,) = out["jobs"]
        assert job["status"] == "answered" and job["job"] == "train-4242" and job["alert"] == "KubeJobFailed"
        assert job["causes"] == [{"label": "oom", "score": 0.93}] and job["actions"] == ["Lower the batch size", "Ask for a larger GPU"]
        assert job["text_from"] == "annotations" and job["notified"] is True and job["written"] is None
        # the description and the summary, one per line, are the job's text
        assert app.state.server.champions.slots["failure-rca"].model.texts == [f"{OOM} | Job failed"]

        # Alertmanager sends the group again (repeat_interval), and the same job comes in a second alert: answered once
        again = client.post("/v1/alerts", json=message(alert(), alert(labels={"alertname": "KubeJobSlow"})), headers=bearer(keys["alertmanager"])).json()
        assert [j["status"] for j in again["jobs"]] == ["duplicate", "duplicate"]
        assert again["jobs"][0]["reason"].startswith("answered at 20")
    (sent,) = receiver.got
    assert sent["job"] == "train-4242" and sent["causes"] == [{"label": "oom", "score": 0.93}] and sent["actions"][0] == "Lower the batch size"
    assert sent["model"] == {"name": "failure-rca", "version": "3"} and sent["alert"]["name"] == "KubeJobFailed"
    assert sent["text"].startswith("*Failed job `train-4242`*: root cause oom (0.93)\nSuggested actions:\n• Lower the batch size")


def test_resolved_alerts_are_ignored_and_an_alert_without_the_job_label_is_skipped_with_the_reason(app_for, keys, receiver, monkeypatch):
    monkeypatch.setenv("NIGHTSHIFT_ALERTS_NOTIFY_URL", receiver.url)
    app = app_for()
    with TestClient(app) as client:
        r = client.post("/v1/alerts", json=message(alert(status="resolved"), alert(job=None), alert(job="train-7", description="")),
                        headers=bearer(keys["alertmanager"]))
        assert r.status_code == 200, r.text
        resolved, unlabelled, silent = r.json()["jobs"]
        assert (resolved["status"], resolved["reason"], resolved["job"]) == ("ignored", "resolved", "train-4242")
        assert unlabelled["status"] == "skipped" and unlabelled["reason"] == "no label 'job_name' naming the failed job (setting alerts.job_label)"
        assert silent["status"] == "skipped" and "nothing to explain the job with" in silent["reason"] and "description" in silent["reason"]
        # a whole resolved group is ignored too, and a skipped job is not remembered: its next alert is answered
        r = client.post("/v1/alerts", json=message(alert(status="resolved"), status="resolved"), headers=bearer(keys["alertmanager"]))
        assert [j["status"] for j in r.json()["jobs"]] == ["ignored"]
        r = client.post("/v1/alerts", json=message(alert(job="train-7", description="slurmstepd: job cancelled")),
                        headers=bearer(keys["alertmanager"]))
        (late,) = r.json()["jobs"]
        assert late["status"] == "answered" and late["causes"] == [] and late["low_confidence"] is True
    assert app.state.server.champions.slots["failure-rca"].model.texts == ["slurmstepd: job cancelled | Job failed"]
    (sent,) = receiver.got
    assert "no root cause passed its threshold; nearest known failure: time-limit" in sent["text"]


def test_another_job_label_is_read_from_its_setting(app_for, keys, monkeypatch):
    monkeypatch.setenv("NIGHTSHIFT_ALERTS_JOB_LABEL", "job")
    with TestClient(app_for()) as client:
        r = client.post("/v1/alerts", json=message(alert(job=None, labels={"job": "train-9"})), headers=bearer(keys["alertmanager"]))
        assert [(j["status"], j["job"]) for j in r.json()["jobs"]] == [("answered", "train-9")]


def test_no_failure_rca_version_is_a_503_saying_why_and_the_job_is_answered_on_the_retry(app_for, keys):
    from serving.champions import FAILURE_RCA, Slot

    app = app_for(rca=False)
    with TestClient(app) as client:
        r = client.post("/v1/alerts", json=message(alert()), headers=bearer(keys["alertmanager"]))
        assert r.status_code == 503
        assert r.json()["detail"].startswith("failure-rca: no champion yet: no version of failure-rca has the alias 'champion'")
        # resolved alerts need no model
        assert client.post("/v1/alerts", json=message(alert(status="resolved")), headers=bearer(keys["alertmanager"])).status_code == 200
        app.state.server.champions.slots[FAILURE_RCA] = Slot(FAILURE_RCA, "3", StandInRca(), "stand-in", 0.0)
        r = client.post("/v1/alerts", json=message(alert()), headers=bearer(keys["alertmanager"]))  # Alertmanager's retry
        assert r.status_code == 200 and r.json()["jobs"][0]["status"] == "answered"
        metrics = client.get("/metrics", headers=bearer(keys["alertmanager"])).text
    assert 'nightshift_serve_requests_total{model="failure-rca",route="/v1/alerts",status="503",version="none"} 1.0' in metrics


def test_a_failed_notification_is_logged_in_one_line_and_the_job_stays_answered(app_for, keys, receiver, monkeypatch, caplog):
    receiver.status = 500
    monkeypatch.setenv("NIGHTSHIFT_ALERTS_NOTIFY_URL", receiver.url + "/T000/SECRET")
    with TestClient(app_for()) as client:
        r = client.post("/v1/alerts", json=message(alert()), headers=bearer(keys["alertmanager"]))
        (job,) = r.json()["jobs"]
        assert r.status_code == 200 and job["status"] == "answered" and job["notified"] is False
        assert job["notify_error"] == "127.0.0.1 answered HTTP 500"
        assert client.post("/v1/alerts", json=message(alert()), headers=bearer(keys["alertmanager"])).json()["jobs"][0]["status"] == "duplicate"
    lines = [rec.getMessage() for rec in caplog.records if "notification not delivered" in rec.getMessage()]
    assert lines == ["notification not delivered: 127.0.0.1 answered HTTP 500"] and "SECRET" not in caplog.text


def test_the_route_needs_the_alerts_scope_and_a_version_4_message(app_for, keys):
    with TestClient(app_for()) as client:
        assert client.post("/v1/alerts", json=message(alert())).status_code == 401
        r = client.post("/v1/alerts", json=message(alert()), headers=bearer(keys["scorer"]))
        assert r.status_code == 403 and "lacks the scope 'alerts'" in r.json()["detail"]
        r = client.post("/v1/alerts", json={**message(alert()), "version": "3"}, headers=bearer(keys["alertmanager"]))
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "version"]
        r = client.post("/v1/alerts", json=message({**alert(), "status": "pending"}), headers=bearer(keys["alertmanager"]))
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "alerts", 0, "status"]


@pytest.mark.parametrize("setting, value, problem", [
    ("LOG_SOURCE", "file:///var/log/jobs.ndjson", "setting alerts.log_source: 'file:///var/log/jobs.ndjson' is not Elasticsearch"),
    ("NOTIFY_URL", "hooks.slack.com/services/T000/SECRET", "setting alerts.notify_url: not an http(s):// URL"),
    ("JOB_LABEL", " ", "setting alerts.job_label is empty"),
    ("MAX_JOB_DOCS", "0", "setting alerts.max_job_docs: must be at least 1"),
])
def test_a_setting_that_cannot_be_used_stops_the_server_naming_it(app_for, monkeypatch, setting, value, problem):
    monkeypatch.setenv(f"NIGHTSHIFT_ALERTS_{setting}", value)
    with pytest.raises(ConfigError) as caught:
        app_for()
    assert str(caught.value).startswith(problem) and "SECRET" not in str(caught.value)


def test_answered_jobs_are_bounded_and_forget_the_oldest():
    from serving.alerts import AnsweredJobs

    answered = AnsweredJobs(2)
    for job in ("a", "b", "c"):
        assert answered.claim(job) is None
        answered.done(job)
    assert len(answered) == 2 and answered.claim("a") is None  # forgotten: answered again
    assert answered.claim("c").startswith("answered at ")
    answered.release("a")
    assert answered.claim("a") is None and answered.claim("a") == "being answered"
