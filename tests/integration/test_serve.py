"""`nightshift serve` over HTTP against a real uvicorn on a free loopback port: a 503 without a champion, a hot
swap after a promotion with no failed request, and HTTPS with an API key; each route's answers, the PyTorch_pro demos' shapes,
the errors (422 naming the field, per-row errors, 413), batching, metrics and OpenAPI are in
tests/integration/test_serve_routes.py, one rule a test. Every call
sends a key (API keys, scopes and the rate limit are checked in-process: tests/unit/test_serve_auth.py).
The pyfunc contract the server shares with `mlflow models serve` (params in the signature,
invalid-parameter errors naming the row) is checked in-process: tests/unit/test_pyfunc_contract.py."""

from __future__ import annotations

import json
import socket
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import pytest
import requests

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
    proc = subprocess.Popen([sys.executable, "-m", "nightshift.cli", "serve", "--port", "0", "--log-level", "warning"],
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
    proc = subprocess.Popen([sys.executable, "-m", "nightshift.cli", "serve", "--port", "0"], env=env, stderr=subprocess.PIPE, text=True)
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
    assert [(x["message"], x["nightshift"]["extra"].get("api_key")) for x in requests_logged if "/v1/" in x["message"]] == [
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
