"""`nightshift serve` over HTTP against a real uvicorn on a free loopback port: every route, the
seed's shapes, the errors (422 naming the field, per-row errors, 413, 503), batching, metrics,
OpenAPI, a hot swap after a promotion with no failed request, and HTTPS with an API key. Every call
sends a key (API keys, scopes and the rate limit are checked in-process: tests/unit/test_serve_auth.py).
The pyfunc contract the server shares with `mlflow models serve` (params in the signature,
invalid-parameter errors naming the row) is checked in-process: tests/unit/test_pyfunc_contract.py."""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta
from typing import Iterator

import pandas as pd
import pytest
import requests

from tests.support.metric_history import T0
from tests.unit.test_serve_auth import self_signed


@pytest.fixture
def auth(home) -> dict[str, str]:
    """The header of a key with both scopes, in the default key file ($NIGHTSHIFT_HOME/api-keys) the server reads."""
    from serving.auth import make_key

    return {"Authorization": f"Bearer {make_key(home / 'api-keys', 'tests', {'score', 'admin'})}"}


@contextmanager
def running_server(settings) -> Iterator[str]:
    """`serving.server.create_app` on a real uvicorn, on a socket bound to a free loopback port; yields its URL."""
    import uvicorn

    from serving.server import create_app

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(settings), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        wait_for(lambda: server.started, "uvicorn to start")
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def wait_for(check, what: str, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def ready(url: str, models: set[str]) -> None:
    """Wait until /readyz serves each of `models`."""
    def check():
        try:
            body = requests.get(f"{url}/readyz", timeout=10).json()
        except requests.ConnectionError:  # still starting
            return False
        return all(body["models"][m]["version"] for m in models)
    wait_for(check, f"{', '.join(sorted(models))} to load")


def metric_value(text: str, name: str, **labels: str) -> float:
    """The sum of a Prometheus text-format sample over the series whose labels include `labels`."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_no_champion_is_a_503_with_the_reason_and_health_still_answers(settings, auth):
    with running_server(settings) as url:
        assert requests.get(f"{url}/healthz", timeout=10).json() == {"status": "ok"}
        wait_for(lambda: requests.get(f"{url}/readyz", timeout=10).json()["models"]["log-anomaly"]["reason"] != "loading", "a first refresh")
        readyz = requests.get(f"{url}/readyz", timeout=10)
        assert readyz.status_code == 503 and not readyz.json()["ready"]
        for route, body in [("/v1/log-anomaly", {"texts": ["x"]}), ("/v1/failure-rca", {"text": "x"}),
                            ("/v1/metric-forecast", {"series": [1.0, 2.0]}), ("/predict", {"text": "x"})]:
            r = requests.post(f"{url}{route}", json=body, headers=auth, timeout=10)
            assert r.status_code == 503, (route, r.text)
            assert "no champion yet" in r.json()["detail"] and "alias 'champion'" in r.json()["detail"]
        metrics = requests.get(f"{url}/metrics", headers=auth, timeout=10).text
        assert metric_value(metrics, "nightshift_serve_requests_total", route="/v1/log-anomaly", status="503") == 1


def test_every_route_the_seed_shapes_and_the_errors(settings, quick_rca, quick_forecaster, train_snapshot, tiny_bert, demo_history, tmp_path,
                                                    monkeypatch, auth):
    from pipelines.config import load_settings
    from pipelines.sources.prometheus import ingest_metrics
    from pipelines.tasks.failure_rca import train_failure_rca
    from pipelines.tasks.log_anomaly import train_log_anomaly
    from pipelines.tasks.metric_forecast import train_metric_forecast

    monkeypatch.setenv("NIGHTSHIFT_SERVE_MAX_BODY_BYTES", "200000")
    monkeypatch.setenv("NIGHTSHIFT_SERVE_MAX_ROWS", "300")
    monkeypatch.setenv("NIGHTSHIFT_SERVE_MAX_WAIT_MS", "200")  # concurrent requests surely share a forward pass
    settings = load_settings()  # with the quick RCA and forecaster settings of the fixtures
    train_log_anomaly(train_snapshot.path, settings, str(tiny_bert))
    train_failure_rca(train_snapshot.path, settings, str(tiny_bert))
    metrics_snap = ingest_metrics(f"file://{demo_history}", {"quota": "quota_group_use_ratio"},
                                  T0 + timedelta(days=7), T0 + timedelta(days=14), "15m", tmp_path / "metrics", settings)
    train_metric_forecast(metrics_snap.path, settings)
    import mlflow

    declared = {name: {p.name for p in mlflow.models.get_model_info(f"models:/{name}@champion").signature.params.params}
                for name in ("failure-rca", "metric-forecast")}
    assert declared == {"failure-rca": {"batch_size", "threshold", "kb_min_similarity"},
                        "metric-forecast": {"min_history", "short_history", "with_history"}}

    with running_server(settings) as url:
        ready(url, {"log-anomaly", "failure-rca", "metric-forecast"})
        post = lambda route, body: requests.post(f"{url}{route}", json=body, headers=auth, timeout=60)  # noqa: E731

        # log-anomaly: scores, and a bad row gets its own error without failing the others
        r = post("/v1/log-anomaly", {"texts": ["Out of memory: Killed process 4242 (python)", 42, None, "", "GET /healthz 200"]})
        assert r.status_code == 200, r.text
        out = r.json()
        assert (out["model"], out["version"], out["family"]) == ("log-anomaly", "1", "bert-cls") and out["errors"] == 3
        rows = out["results"]
        assert 0 <= rows[0]["score"] <= 1 and isinstance(rows[0]["is_anomaly"], bool) and rows[0]["error"] is None
        assert rows[1]["error"] == "'texts[1]' is a number (42), not text"
        assert rows[2]["error"].startswith("'texts[2]' is null") and rows[3]["error"].startswith("'texts[3]' has no text")
        assert rows[4]["score"] is not None
        alone = post("/v1/log-anomaly", {"texts": ["GET /healthz 200"]}).json()["results"][0]["score"]
        assert alone == pytest.approx(rows[4]["score"], abs=1e-5)  # batched with others or alone: the same answer
        assert post("/v1/log-anomaly", {"texts": ["GET /healthz 200"], "threshold": 0.0}).json()["results"][0]["is_anomaly"] is True

        # 422 naming the field
        for body, loc in [({"text": "x"}, "texts"), ({"texts": []}, "texts"), ({"texts": ["x"], "threshold": 2}, "threshold")]:
            r = post("/v1/log-anomaly", body)
            assert r.status_code == 422 and loc in {str(p) for e in r.json()["detail"] for p in e["loc"]}, (body, r.text)

        # too many rows, too large a body
        r = post("/v1/log-anomaly", {"texts": ["a"] * 301})
        assert r.status_code == 413 and "serve.max_rows" in r.json()["detail"]
        r = post("/v1/log-anomaly", {"texts": ["x" * 250_000]})
        assert r.status_code == 413 and "serve.max_body_bytes" in r.json()["detail"]

        # failure-rca: one text, or many with per-row errors; the knowledge-base floor
        r = post("/v1/failure-rca", {"text": "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"})
        assert r.status_code == 200, r.text
        one = r.json()
        assert one["model"] == "failure-rca" and one["version"] == "1" and one["family"] == "bert-mean"
        assert set(one["scores"]) and all(0 <= v <= 1 for v in one["scores"].values())
        assert one["low_confidence"] == (one["kb_match"] is not None) == (not one["labels"])
        strict = post("/v1/failure-rca", {"text": "INFO Nginx request 200 OK", "threshold": 1.0}).json()
        assert strict["labels"] == [] and strict["low_confidence"] and strict["actions"] == []  # below the floor: no actions
        assert strict["kb_match"]["id"] is None and strict["kb_match"]["similarity"] < strict["kb_match"]["min_similarity"] == 0.2
        assert strict["kb_match"]["nearest"]  # how close the nearest came is still said
        lax = post("/v1/failure-rca", {"text": "INFO Nginx request 200 OK", "threshold": 1.0, "kb_min_similarity": 0.0}).json()
        assert lax["kb_match"]["id"] == lax["kb_match"]["nearest"] and lax["actions"]
        known = post("/v1/failure-rca", {"text": "slurmstepd: error: *** JOB 4242 CANCELLED DUE TO TIME LIMIT ***", "threshold": 1.0}).json()
        assert known["kb_match"]["id"] == "time-limit" and known["actions"]
        many = post("/v1/failure-rca", {"texts": ["OSError: [Errno 28] No space left on device", "  ", 7]}).json()
        assert many["errors"] == 2 and many["results"][0]["scores"] and many["results"][1]["error"].startswith("'texts[1]' has no text")
        r = post("/v1/failure-rca", {"text": None})
        assert r.status_code == 422 and "either 'text'" in r.text
        r = post("/v1/failure-rca", {"text": ""})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "text"] and "has no text" in r.json()["detail"][0]["msg"]

        # metric-forecast: the seed's series, rows with labels, short histories, the step
        r = post("/v1/metric-forecast", {"series": [0.6] * 32, "step": "15m"})
        assert r.status_code == 200, r.text
        fc = r.json()
        assert fc["model"] == "metric-forecast" and fc["step"] == "15m" and fc["lookback"] == 32 and fc["horizon"] == 4
        (series,) = fc["forecasts"]
        assert series["observed_fraction"] == 1.0 and not series["short_history"]
        assert [p["horizon"] for p in series["points"]] == [1, 2, 3, 4] and series["points"][1]["lead"] == "30m"
        assert all(p["p10"] <= p["p50"] <= p["p90"] for p in series["points"])
        r = post("/v1/metric-forecast", {"series": [0.6, 0.61, 0.62], "step": "15m"})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "series"] and "9% of the 32-step lookback" in r.text
        flagged = post("/v1/metric-forecast", {"series": [0.6, 0.61, 0.62], "short_history": "flag"}).json()
        assert flagged["forecasts"][0]["short_history"] and flagged["forecasts"][0]["observed_fraction"] == pytest.approx(3 / 32, abs=1e-3)
        r = post("/v1/metric-forecast", {"series": [0.6] * 40, "step": "1m"})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "step"] and "not this version's step" in r.text
        r = post("/v1/metric-forecast", {"series": [0.6, "high"]})
        assert r.status_code == 422 and ["body", "series", 1] in [e["loc"] for e in r.json()["detail"]]
        r = post("/v1/metric-forecast", {"series": [1e308] * 32})  # overflows the scaling: refused, never a NaN answer
        assert r.status_code == 422 and "not a finite number" in r.json()["detail"][0]["msg"]
        # Python's json reads NaN, which no JSON answer can hold: the 422 names the field and shows the value as text
        r = requests.post(f"{url}/v1/failure-rca", data='{"text": "x", "threshold": NaN}', timeout=60,
                          headers={**auth, "Content-Type": "application/json"})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "threshold"] and r.json()["detail"][0]["input"] == "nan"
        end = pd.Timestamp("2026-11-16T00:00:00Z")
        good = [{"timestamp": (end - pd.Timedelta(minutes=15 * k)).isoformat(), "value": 0.5 + 0.01 * k,
                 "labels": {"__name__": "quota_group_use_ratio", "group": "a"}} for k in range(32)]
        short = [{"timestamp": (end - pd.Timedelta(minutes=15 * k)).isoformat(), "value": 1.0, "series": "b"} for k in range(3)]
        bad = [{"timestamp": "yesterday-ish", "value": 1.0, "series": "a"}, {"timestamp": end.isoformat(), "value": "x", "series": "a"}]
        r = post("/v1/metric-forecast", {"rows": good + short + bad})
        assert r.status_code == 200, r.text
        fc = r.json()
        assert [f["series"] for f in fc["forecasts"]] == ['quota_group_use_ratio{group="a"}']
        errors = {(e["row"], e["series"], e["field"]) for e in fc["errors"]}
        assert errors == {(35, None, "timestamp"), (36, None, "value"), (None, "b", "rows")}
        minute = [{"timestamp": (end - pd.Timedelta(minutes=k)).isoformat(), "value": 1.0, "series": "c"} for k in range(60)]
        r = post("/v1/metric-forecast", {"rows": minute})
        assert r.status_code == 422 and "60s apart" in r.text and "15m" not in r.json()["detail"][0]["loc"]

        # the seed's shapes, at its route under each model's prefix and at /predict
        seed = post("/log-anomaly/predict", {"text": "ERROR Failed to allocate GPU memory"}).json()
        assert seed["result"] in ("normal", "abnormal") and seed["text"] == "ERROR Failed to allocate GPU memory"
        assert post("/predict", {"text": "ERROR Failed to allocate GPU memory"}).json()["result"] == seed["result"]
        rca = post("/predict", {"text": "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB", "threshold": 0.0}).json()
        assert set(rca["probabilities"]) == set(rca["actions"]) and len(rca["probabilities"]) == len(one["scores"])
        assert all(isinstance(a, str) for a in rca["actions"].values())
        assert post("/failure-rca/predict", {"text": "x y z", "threshold": 1.0}).json()["probabilities"] == {}
        nxt = post("/predict", {"series": [0.6] * 32}).json()
        assert isinstance(nxt["next_value"], float) and nxt["p10"] <= nxt["next_value"] <= nxt["p90"]
        assert post("/metric-forecast/predict", {"series": [0.6] * 32, "save_dir": "saved_model"}).json()["next_value"] == nxt["next_value"]
        r = post("/predict", {"text": 42})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "text"
        assert post("/predict", {"series": [0.6, 0.7]}).status_code == 422  # the seed refused too short a series as well

        # concurrent small requests share forward passes
        before = requests.get(f"{url}/metrics", headers=auth, timeout=10).text
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda i: post("/v1/log-anomaly", {"texts": [f"worker {i} started"]}), range(16)))
        assert all(a.status_code == 200 for a in answers)
        after = requests.get(f"{url}/metrics", headers=auth, timeout=10).text
        passes = (metric_value(after, "nightshift_serve_batch_texts_count", model="log-anomaly")
                  - metric_value(before, "nightshift_serve_batch_texts_count", model="log-anomaly"))
        texts = (metric_value(after, "nightshift_serve_batch_texts_sum", model="log-anomaly")
                 - metric_value(before, "nightshift_serve_batch_texts_sum", model="log-anomaly"))
        assert texts == 16 and passes < 16

        # metrics by model and version, load times, and the OpenAPI schema
        assert metric_value(after, "nightshift_serve_requests_total", route="/v1/log-anomaly", model="log-anomaly", version="1",
                            status="200") >= 18
        assert metric_value(after, "nightshift_serve_request_seconds_count", route="/v1/failure-rca", version="1") >= 5
        assert metric_value(after, "nightshift_serve_requests_total", route="/v1/log-anomaly", status="422") == 3
        for model in ("log-anomaly", "failure-rca", "metric-forecast"):
            assert metric_value(after, "nightshift_serve_model_load_seconds", model=model, version="1") > 0
            assert metric_value(after, "nightshift_serve_model_info", model=model, version="1") == 1
        schema = requests.get(f"{url}/openapi.json", timeout=10).json()
        assert {"/v1/log-anomaly", "/v1/failure-rca", "/v1/metric-forecast", "/predict", "/healthz", "/readyz", "/metrics",
                "/log-anomaly/predict", "/failure-rca/predict", "/metric-forecast/predict", "/v1/admin/reload"} <= set(schema["paths"])
        assert requests.get(f"{url}/readyz", timeout=10).json()["ready"] is True


def test_a_promotion_is_swapped_in_without_a_failed_request(settings, train_snapshot, tiny_bert, auth):
    """`nightshift serve` in its own process, hammered while the champion moves from v1 to v2."""
    import os
    import subprocess
    import sys

    from pipelines.registry.aliases import compare_and_set_champion
    from pipelines.registry.store import use_store
    from pipelines.tasks.log_anomaly import train_log_anomaly

    train_log_anomaly(train_snapshot.path, settings, str(tiny_bert))
    env = {**os.environ, "NIGHTSHIFT_SERVE_REFRESH_SECONDS": "0.5", "NIGHTSHIFT_SERVE_MODELS": "log-anomaly",
           "NIGHTSHIFT_SERVE_RATE_LIMIT": ""}  # three clients as fast as they can: more than a rate limit lets through
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "serve", "--port", "0", "--log-level", "warning"],
                            env=env, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert "listening on http://127.0.0.1:" in line, line
        url = line.split("listening on ")[1].split()[0]
        ready(url, {"log-anomaly"})
        versions, failures, stop = [], [], threading.Event()
        answers: list[tuple[float, float, str]] = []  # (sent, received, version): clients finish out of order

        def hammer():
            while not stop.is_set():
                try:
                    sent = time.monotonic()
                    r = requests.post(f"{url}/v1/log-anomaly", json={"texts": ["disk quota exceeded on /data", "GET /healthz 200"]},
                                      headers=auth, timeout=60)
                    if r.status_code == 200:
                        answers.append((sent, time.monotonic(), r.json().get("version")))
                        versions.append(r.json().get("version"))
                    else:
                        failures.append(r.text)
                except requests.RequestException as exc:
                    failures.append(repr(exc))

        threads = [threading.Thread(target=hammer) for _ in range(3)]
        for t in threads:
            t.start()
        wait_for(lambda: len(versions) >= 5, "answers from v1")
        second = train_log_anomaly(train_snapshot.path, settings, str(tiny_bert))
        assert second.version == "2" and second.decision == "pending"
        client = use_store(settings)
        assert compare_and_set_champion(client, "log-anomaly", "1", "2")[0]  # what the gate does when v2 wins
        wait_for(lambda: versions[-1] == "2", "the server to answer with v2", timeout=120)
        count = len(versions)
        wait_for(lambda: len(versions) >= count + 5, "more answers after the swap")
        stop.set()
        for t in threads:
            t.join(timeout=60)
        assert failures == []
        # one swap, never back: a request sent after a v2 answer came back is answered by v2 (a request sent before
        # the swap may still finish after it, in the batch it joined)
        first_v2 = min(received for _, received, version in answers if version == "2")
        assert {version for sent, _, version in answers if sent > first_v2} == {"2"}
        assert {version for _, received, version in answers if received < first_v2} == {"1"}
        metrics = requests.get(f"{url}/metrics", headers=auth, timeout=10).text
        assert metric_value(metrics, "nightshift_serve_model_info", model="log-anomaly", version="2") == 1
        assert metric_value(metrics, "nightshift_serve_model_info", model="log-anomaly", version="1") == 0
        assert metric_value(metrics, "nightshift_serve_request_seconds_count", model="log-anomaly", version="2") >= 5
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_https_with_the_configured_certificate_and_only_the_key_name_in_the_logs(settings, auth, tmp_path):
    """`nightshift serve` in its own process with serve.tls_certfile and serve.tls_keyfile: it listens on https, the
    certificate verifies, a request without a key is refused, and its log names the key, never the key."""
    import os
    import subprocess
    import sys

    cert, key = self_signed(tmp_path / "tls")
    env = {**os.environ, "NIGHTSHIFT_SERVE_TLS_CERTFILE": str(cert), "NIGHTSHIFT_SERVE_TLS_KEYFILE": str(key),
           "NIGHTSHIFT_SERVE_MODELS": "log-anomaly", "NIGHTSHIFT_LOG_FORMAT": "json"}
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "serve", "--port", "0"], env=env, stderr=subprocess.PIPE, text=True)
    seen: list[str] = []
    try:
        while not seen or "listening on" not in seen[-1]:
            seen.append(proc.stderr.readline())
            assert seen[-1], "nightshift serve exited before it listened: " + "".join(seen)
        line = seen[-1]
        url = line.split("listening on ")[1].split()[0]
        assert url.startswith("https://127.0.0.1:"), line
        wait_for(lambda: requests.get(f"{url}/healthz", verify=str(cert), timeout=10).ok, "the HTTPS server")
        with pytest.raises(requests.exceptions.SSLError):  # a client that does not trust the certificate
            requests.get(f"{url}/healthz", timeout=10)
        refused = requests.post(f"{url}/v1/log-anomaly", json={"texts": ["x"]}, verify=str(cert), timeout=10)
        assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == "Bearer"
        answered = requests.post(f"{url}/v1/log-anomaly", json={"texts": ["x"]}, headers=auth, verify=str(cert), timeout=10)
        assert answered.status_code == 503 and "no champion yet" in answered.json()["detail"]  # through the key check
    finally:
        proc.terminate()
        seen.append(proc.communicate(timeout=30)[1])
    output = "".join(seen)
    lines = [json.loads(x) for x in output.splitlines() if x.startswith("{")]
    requests_logged = [x for x in lines if x.get("log", {}).get("logger") == "nightshift.serve.access"]  # ECS JSON
    assert [(x["message"], x["nightshift"]["extra"]["api_key"]) for x in requests_logged if "/v1/" in x["message"]] == [
        ("POST /v1/log-anomaly 401", None), ("POST /v1/log-anomaly 503", "tests")]
    from serving.auth import hash_key

    secret = auth["Authorization"].removeprefix("Bearer ")
    assert secret not in output and hash_key(secret) not in output


def test_the_served_root_cause_model_names_no_cause_for_text_that_describes_no_failure(settings, train_snapshot, auth, monkeypatch):
    """The failure-rca version the nightly recipe trains (its no-failure background and pooled threshold), served:
    a greeting, a healthy request and a training step get no label (the knowledge base answers them instead), and a
    real failure still gets its cause."""
    from pipelines.config import load_settings
    from pipelines.tasks.failure_rca import train_failure_rca

    monkeypatch.setenv("NIGHTSHIFT_CANDIDATES_FAMILIES", "tfidf")  # the cheapest family: the recipe, not the encoder, is under test
    monkeypatch.setenv("NIGHTSHIFT_SERVE_MODELS", "failure-rca")
    train_failure_rca(train_snapshot.path, load_settings())
    with running_server(load_settings()) as url:
        ready(url, {"failure-rca"})
        quiet = ["hello world", "INFO Nginx request 200 OK", "GET /healthz 200", "training step 100 loss 0.31"]
        r = requests.post(f"{url}/v1/failure-rca", json={"texts": quiet}, headers=auth, timeout=60)
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert [res["labels"] for res in results] == [[]] * len(quiet), results
        assert all(res["low_confidence"] for res in results)
        r = requests.post(f"{url}/v1/failure-rca", json={"text": "OSError: [Errno 28] No space left on device: '/data/ckpt/model.pt'"},
                          headers=auth, timeout=60)
        assert r.status_code == 200 and r.json()["labels"][:1] == ["Disk_Full"], r.text
