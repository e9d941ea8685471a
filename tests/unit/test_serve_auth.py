"""`nightshift serve` answers only callers with an API key (serving/auth.py), in-process with FastAPI's TestClient and a
stand-in log classifier: every scoring and admin route refuses a request without a key (the routes are read from the
app, so a new one is covered), scopes, the key file's errors, the rate limit, /metrics, the logs, the OpenAPI
security schemes, `nightshift serve-key` and the TLS settings."""

from __future__ import annotations

import io
import json
import logging
import re
import stat
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from pipelines.config import ConfigError, load_settings
from serving.auth import KeyFileError, hash_key, make_key, read_key_file

PUBLIC = {"/healthz", "/readyz"}  # the probes; every other route of the app needs a key
BODIES = {"/v1/log-anomaly": {"texts": ["disk failure on /dev/sda"]}, "/log-anomaly/predict": {"text": "disk failure"},
          "/predict": {"text": "disk failure"}}


@pytest.fixture
def keys(home) -> dict[str, str]:
    """Three keys in the default key file ($NIGHTSHIFT_HOME/api-keys), by name: score, admin, both."""
    path = home / "api-keys"
    return {"scorer": make_key(path, "scorer", {"score"}), "operator": make_key(path, "operator", {"admin"}),
            "ci": make_key(path, "ci", {"score", "admin"})}


@pytest.fixture
def app_for(stand_in):
    """`app_for()`: the app on the current environment's settings, log-anomaly v1 (a stand-in) loaded as champion."""
    from serving.server import create_app

    stand_in["registry"].register("log-anomaly", 1, alias="champion")

    def make():
        app = create_app(load_settings(), client=stand_in["registry"], start_refresh=False)
        app.state.server.champions.refresh()
        return app
    return make


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def serve_error(capsys) -> str:
    """`nightshift serve` must stop before it listens, with one error line (exit 2, no traceback): that line."""
    from nightshift.cli import main

    capsys.readouterr()
    assert main(["serve", "--port", "0"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def protected_routes(app) -> list[tuple[str, str]]:
    """(method, path) of every route of `app` but the probes and the schema pages."""
    from serving.server import SCHEMA_PATHS

    found = [(method, route.path) for route in app.routes if isinstance(route, APIRoute) and route.path not in PUBLIC | SCHEMA_PATHS
             for method in sorted(route.methods)]
    others = {getattr(r, "path", None) for r in app.routes if not isinstance(r, APIRoute)}
    assert others <= SCHEMA_PATHS, others  # no route escapes the enumeration
    assert SCHEMA_PATHS == {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "/docs-assets"}  # no data behind them
    return found


def test_every_scoring_and_admin_route_refuses_a_request_without_a_key_or_with_a_wrong_one(keys, app_for):
    app = app_for()
    routes = protected_routes(app)
    assert {("POST", "/v1/log-anomaly"), ("POST", "/v1/failure-rca"), ("POST", "/v1/metric-forecast"), ("POST", "/predict"),
            ("POST", "/log-anomaly/predict"), ("POST", "/failure-rca/predict"), ("POST", "/metric-forecast/predict"),
            ("POST", "/v1/admin/reload"), ("GET", "/metrics")} <= set(routes)
    with TestClient(app) as client:
        for method, path in routes:
            for headers in ({}, bearer("not-a-key"), {"X-API-Key": "not-a-key"}, {"Authorization": f"Basic {keys['ci']}"},
                            bearer(keys["ci"][:-1])):
                r = client.request(method, path, json=BODIES.get(path, {}), headers=headers)
                assert r.status_code == 401, (method, path, headers, r.text)
                assert r.headers["WWW-Authenticate"].startswith("Bearer"), (method, path)
                assert "API key" in r.json()["detail"] and keys["ci"][:-1] not in r.text
            assert "Authorization: Bearer KEY" in client.request(method, path).json()["detail"]  # says how to send one
        for path in PUBLIC:
            assert client.get(path).status_code == 200


def test_a_score_key_scores_but_may_not_reload_and_an_admin_key_reloads(keys, app_for):
    with TestClient(app_for()) as client:
        for headers in (bearer(keys["scorer"]), {"X-API-Key": keys["scorer"]}, bearer(keys["ci"])):
            r = client.post("/v1/log-anomaly", json={"texts": ["disk failure on /dev/sda", "GET /healthz 200"]}, headers=headers)
            assert r.status_code == 200, r.text
            assert [row["is_anomaly"] for row in r.json()["results"]] == [True, False]
        r = client.post("/v1/admin/reload", headers=bearer(keys["scorer"]))
        assert r.status_code == 403 and "lacks the scope 'admin'" in r.json()["detail"] and "scorer" in r.json()["detail"]
        assert client.post("/v1/log-anomaly", json={"texts": ["x"]}, headers=bearer(keys["operator"])).status_code == 403
        for name in ("operator", "ci"):
            r = client.post("/v1/admin/reload", headers={"X-API-Key": keys[name]})
            assert r.status_code == 200, r.text
            assert r.json()["keys"] == 3 and r.json()["models"]["log-anomaly"]["version"] == "1"


def test_reload_reads_new_keys_and_keeps_the_old_ones_when_the_file_is_broken(keys, app_for, home):
    with TestClient(app_for()) as client:
        late = make_key(home / "api-keys", "late", {"score"})
        assert client.post("/predict", json={"text": "x"}, headers=bearer(late)).status_code == 401  # not read yet
        assert client.post("/v1/admin/reload", headers=bearer(keys["operator"])).json()["keys"] == 4
        assert client.post("/predict", json={"text": "x"}, headers=bearer(late)).status_code == 200
        with (home / "api-keys").open("a") as f:
            f.write("broken-line\n")
        r = client.post("/v1/admin/reload", headers=bearer(keys["operator"]))
        assert r.status_code == 409 and ":7: 1 fields where NAME SHA256-HEX SCOPE[,SCOPE] are expected" in r.json()["detail"]
        assert client.post("/predict", json={"text": "x"}, headers=bearer(late)).status_code == 200  # the keys in use stay


@pytest.mark.parametrize("line, problem", [
    ("alice 0123abcd score", "the second field is not a SHA-256 hex digest"),
    ("alice {digest}", "2 fields where NAME SHA256-HEX SCOPE[,SCOPE] are expected"),
    ("alice {digest} score,root", "unknown scope 'root'"),
    ("alice {digest} ,", "no scope given"),
    ("al!ce {digest} score", "the name 'al!ce' is not"),
    ("ci {digest} score", "the name 'ci' is already on line 3"),
    ("bob {ci_digest} admin", "the same key as line 3 ('ci')"),
], ids=["a raw key instead of its hash", "no scope", "an unknown scope", "an empty scope", "a bad name", "a name twice", "a key twice"])
def test_a_bad_key_file_line_stops_the_server_naming_the_file_and_the_line(home, monkeypatch, line, problem, capsys):
    path = home / "keys.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = "t0PS3cret-raw-key-pasted-by-mistake"
    path.write_text("# the site's keys\n\n" + f"ci {hash_key('k')} score  # the CI job\n"
                    + line.format(digest=hash_key(raw), ci_digest=hash_key("k")).replace("0123abcd", raw) + "\n")
    with pytest.raises(KeyFileError) as caught:
        read_key_file(path)
    assert str(caught.value).startswith(f"{path}:4: {problem}"), str(caught.value)
    assert raw not in str(caught.value) and hash_key(raw) not in str(caught.value)  # a secret is never echoed
    monkeypatch.setenv("NIGHTSHIFT_SERVE_API_KEYS_FILE", str(path))
    assert serve_error(capsys) == f"nightshift serve: error: {caught.value}"


def test_without_a_key_file_the_server_refuses_to_start_and_says_how_to_make_one(home, capsys, monkeypatch):
    line = serve_error(capsys)
    assert f"no key file {home / 'api-keys'}" in line and "nightshift serve-key NAME --scope score,admin" in line
    monkeypatch.setenv("NIGHTSHIFT_SERVE_API_KEYS_FILE", str(home / "nowhere"))
    line = serve_error(capsys)
    assert f"setting serve.api_keys_file: no such file {home / 'nowhere'}" in line and f"--file {home / 'nowhere'}" in line
    home.mkdir(parents=True, exist_ok=True)
    (home / "nowhere").write_text("# no keys yet\n")
    assert "no API key in it" in serve_error(capsys)


def test_a_key_over_the_rate_limit_gets_429_with_retry_after_and_other_keys_do_not(keys, app_for, monkeypatch):
    monkeypatch.setenv("NIGHTSHIFT_SERVE_RATE_LIMIT", "3/minute")
    with TestClient(app_for()) as client:
        answers = [client.post("/predict", json={"text": "x"}, headers=bearer(keys["scorer"])) for _ in range(4)]
        assert [r.status_code for r in answers] == [200, 200, 200, 429]
        assert 1 <= int(answers[-1].headers["Retry-After"]) <= 60
        assert "'scorer' is over its rate limit of 3/minute" in answers[-1].json()["detail"]
        assert client.post("/predict", json={"text": "x"}, headers=bearer(keys["ci"])).status_code == 200  # per key
        metrics = client.get("/metrics", headers=bearer(keys["ci"])).text
        assert re.search(r'nightshift_serve_requests_total\{.*route="/predict".*status="429".*\} 1\.0', metrics), metrics


def test_an_unreadable_rate_limit_stops_the_app(keys, app_for, monkeypatch):
    monkeypatch.setenv("NIGHTSHIFT_SERVE_RATE_LIMIT", "lots")
    with pytest.raises(ConfigError, match="setting serve.rate_limit: couldn't parse rate limit string 'lots'"):
        app_for()
    monkeypatch.setenv("NIGHTSHIFT_SERVE_RATE_LIMIT", "")  # no limit
    with TestClient(app_for()) as client:
        assert all(client.post("/predict", json={"text": "x"}, headers=bearer(keys["scorer"])).status_code == 200 for _ in range(5))


@pytest.mark.parametrize("public", [False, True])
def test_metrics_need_a_key_unless_they_are_public(keys, app_for, monkeypatch, public):
    monkeypatch.setenv("NIGHTSHIFT_SERVE_METRICS_PUBLIC", str(public).lower())
    app = app_for()
    with TestClient(app) as client:
        r = client.get("/metrics")
        assert r.status_code == (200 if public else 401), r.text
        assert client.get("/metrics", headers=bearer(keys["scorer"])).status_code == 200
        operation = client.get("/openapi.json").json()["paths"]["/metrics"]["get"]
        assert ("security" in operation) is not public


def test_openapi_declares_both_schemes_on_every_protected_route(keys, app_for):
    app = app_for()
    with TestClient(app) as client:
        schema = client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"] == {
        "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer KEY (make keys with nightshift serve-key)"},
        "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "X-API-Key: KEY, instead of the bearer token"}}
    for method, path in protected_routes(app):
        operation = schema["paths"][path][method.lower()]
        assert operation["security"] == [{"bearer": []}, {"apiKey": []}], path  # either header
        assert {"401", "403", "429"} <= set(operation["responses"]), path
    for path in PUBLIC:
        assert "security" not in schema["paths"][path]["get"]


def test_a_route_without_a_key_check_stops_the_app(keys, app_for, monkeypatch):
    import serving.server

    monkeypatch.setattr(serving.server, "PUBLIC_PATHS", {"/readyz"})  # /healthz is then a route without a key check
    with pytest.raises(RuntimeError, match="routes without an API key check: /healthz"):
        app_for()


@pytest.fixture
def captured_logs():
    """Every log record of the process (nightshift's own logger may not propagate), as text."""
    class Everything(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            return f"{record.name} {record.getMessage()} {record.__dict__}"

    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(Everything())
    loggers = [logging.getLogger(), logging.getLogger("nightshift"), logging.getLogger("uvicorn")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
    yield buffer
    for lg, level in zip(loggers, levels):
        lg.removeHandler(handler)
        lg.setLevel(level)


def test_keys_never_reach_the_logs_and_each_request_logs_its_key_name(keys, app_for, captured_logs):
    with TestClient(app_for()) as client:
        client.post("/v1/log-anomaly", json={"texts": ["x"]}, headers=bearer(keys["scorer"]))
        client.post("/v1/admin/reload", headers={"X-API-Key": keys["operator"]})
        client.post("/v1/admin/reload", headers=bearer(keys["scorer"]))
        client.post("/predict", json={"text": "x"}, headers=bearer("wrong-" + keys["ci"]))
    text = captured_logs.getvalue()
    assert "POST /v1/log-anomaly 200" in text and "'api_key': 'scorer'" in text and "'api_key': 'operator'" in text
    assert "POST /v1/admin/reload 403" in text and "request with an unknown API key" in text
    for key in keys.values():
        assert key not in text and hash_key(key) not in text
    assert hash_key("wrong-" + keys["ci"]) not in text


def test_serve_key_writes_a_0600_file_and_the_key_it_prints_authenticates(home, app_for, capsys):
    from nightshift.cli import main

    path = home / "deploy" / "keys"
    assert main(["serve-key", "ops", "--scope", "score,admin", "--file", str(path)]) == 0
    out, err = capsys.readouterr()
    key = out.strip()
    assert len(key) >= 43 and "\n" not in key and key not in err and str(path) in err
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    (only,) = read_key_file(path)
    assert (only.name, only.scopes, only.digest) == ("ops", frozenset({"score", "admin"}), hash_key(key))
    assert key not in path.read_text()
    assert main(["serve-key", "ops", "--file", str(path)]) == 2  # a name is used once
    assert "a key named 'ops' is already there" in capsys.readouterr().err
    assert main(["serve-key", "reader", "--scope", "read", "--file", str(path)]) == 2
    assert "choose from score, admin" in capsys.readouterr().err
    assert main(["serve-key", "ci", "--json"]) == 0  # default file: $NIGHTSHIFT_HOME/api-keys
    printed = json.loads(capsys.readouterr().out)
    assert printed["file"] == str(home / "api-keys") and printed["scopes"] == ["score"]
    assert stat.S_IMODE((home / "api-keys").stat().st_mode) == 0o600
    with TestClient(app_for()) as client:
        assert client.post("/predict", json={"text": "x"}, headers=bearer(printed["key"])).status_code == 200
        assert client.post("/v1/admin/reload", headers=bearer(key)).status_code == 401  # another file
    with (home / "api-keys").open("a") as f:
        f.write(f"ops {only.digest} score,admin")  # a hand-added line without its newline
    with TestClient(app_for()) as client:
        assert client.post("/v1/admin/reload", headers=bearer(key)).status_code == 200
    make_key(home / "api-keys", "after", {"score"})
    assert [k.name for k in read_key_file(home / "api-keys")] == ["ci", "ops", "after"]


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, signed by its own key: (cert.pem, key.pem)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nightshift test")])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_path, key_path


def test_tls_settings_are_checked_before_the_server_starts(home, monkeypatch, tmp_path):
    from serving.server import tls_files

    assert tls_files(load_settings()) is None  # plain HTTP by default
    cert, key = self_signed(tmp_path / "tls")
    monkeypatch.setenv("NIGHTSHIFT_SERVE_TLS_CERTFILE", str(cert))
    with pytest.raises(ConfigError, match="setting serve.tls_keyfile is empty: HTTPS needs both"):
        tls_files(load_settings())
    monkeypatch.setenv("NIGHTSHIFT_SERVE_TLS_KEYFILE", str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigError, match=f"setting serve.tls_keyfile: no such file {tmp_path / 'missing.pem'}"):
        tls_files(load_settings())
    monkeypatch.setenv("NIGHTSHIFT_SERVE_TLS_KEYFILE", str(cert))  # the certificate where the key belongs
    with pytest.raises(ConfigError, match="do not load as a PEM certificate chain and its private key"):
        tls_files(load_settings())
    monkeypatch.setenv("NIGHTSHIFT_SERVE_TLS_KEYFILE", str(key))
    assert tls_files(load_settings()) == (str(cert), str(key))


def test_the_api_pages_work_offline_their_scripts_served_by_the_server_itself(keys, app_for):
    app = app_for()
    with TestClient(app) as client:
        for page in ("/docs", "/redoc"):
            html = client.get(page)
            assert html.status_code == 200
            scripts = re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', html.text)
            assert scripts and not [s for s in scripts if "://" in s], scripts  # nothing from a CDN
            for script in scripts:
                assert client.get(script).status_code == 200, script
