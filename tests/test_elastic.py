"""Elasticsearch source, write-back and index template, through the real `elasticsearch` client.

Scenarios run on the wire-level test server (tests/es_server.py) and, marked `live`, on a real cluster when `ES_URL`
is set. Fault injection (dropped connections, 429 storms, failing bulk items, expired point-in-times) needs the
test server. Scoring here uses a stand-in classifier so that these tests exercise the Elasticsearch plumbing in
seconds; tests/test_elastic_flow.py runs the real BERT end to end.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from es_cluster import LIVE_URL, LiveCluster, ServerCluster, day_index, dotted

T0 = datetime(2026, 11, 17, tzinfo=timezone.utc)
T1 = datetime(2026, 11, 19, tzinfo=timezone.utc)
SECRET = "s3cr3t-api-key-value"


@pytest.fixture(scope="module")
def demo_docs(tmp_path_factory) -> list[dict]:
    """Six days of demo logs, 60 normal lines a day (plus incidents and failing jobs)."""
    from pipelines.demo_data import write_demo_logs

    path = write_demo_logs(tmp_path_factory.mktemp("es-corpus"), per_day=60)
    return [json.loads(line) for line in path.read_text().splitlines()]


def in_window(doc: dict, start=T0, end=T1) -> bool:
    ts = datetime.fromisoformat(doc["@timestamp"].replace("Z", "+00:00"))
    return start <= ts < end


@pytest.fixture(params=["server", pytest.param("live", marks=[pytest.mark.live, pytest.mark.skipif(not LIVE_URL, reason="needs ES_URL")])])
def cluster(request, monkeypatch):
    """The demo corpus as daily indices (every 4th document routed, every 2nd in dotted form); the last day in a
    data stream. Parametrised: the test server, and a real cluster when ES_URL is set."""
    c = ServerCluster() if request.param == "server" else LiveCluster()
    if c.live:
        import os

        for env, setting in (("ES_API_KEY", "API_KEY"), ("ES_CA_CERTS", "CA_CERTS"), ("ES_VERIFY_CERTS", "VERIFY_CERTS")):
            if os.environ.get(env):
                monkeypatch.setenv(f"NIGHTSHIFT_ELASTICSEARCH_{setting}", os.environ[env])
    yield c
    c.close()


@pytest.fixture
def loaded(cluster, demo_docs):
    cluster.create_data_stream("logs-stream")
    last_day = max(d["@timestamp"][:10] for d in demo_docs)
    docs = [dotted(d) if i % 2 else d for i, d in enumerate(demo_docs)]
    cluster.load([d for d in docs if d["@timestamp"][:10] != last_day], day_index, routing=lambda d: f"r{len(d['message']) % 3}" if len(d["message"]) % 4 == 0 else None)
    cluster.load([d for d in docs if d["@timestamp"][:10] == last_day], "logs-stream")
    return cluster


@pytest.fixture
def fast_retries(monkeypatch):
    monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_RETRY_BACKOFF", "0.01")
    monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_RETRIES", "3")


def source_uri(cluster, pattern: str = "logs-*") -> str:
    return f"{cluster.url}/{cluster.name(pattern)}"


def rows(snapshot) -> list[tuple]:
    frame = snapshot.read()
    return sorted((r.timestamp.isoformat(), r.message, r.service, r.level, r.host, r.anomaly, tuple(r.root_cause), r.job_id)
                  for r in frame.itertuples())


def load_settings():
    from pipelines.config import load_settings as load

    return load()


# ---- the source ------------------------------------------------------------------------------------------

def test_ingest_equals_the_same_window_read_from_a_file(loaded, demo_docs, home, tmp_path):
    """Index patterns, data streams, routing, dotted and nested forms: the snapshot has exactly the file's rows."""
    from pipelines.ingest import ingest_logs

    end = datetime(2026, 11, 22, tzinfo=timezone.utc)  # the last day lives in the data stream
    corpus = tmp_path / "logs.ndjson"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in demo_docs))
    es_snap = ingest_logs(source_uri(loaded), T0, end, tmp_path / "es", load_settings())
    file_snap = ingest_logs(f"file://{corpus}", T0, end, tmp_path / "file", load_settings())
    assert es_snap.manifest["row_count"] == sum(in_window(d, T0, end) for d in demo_docs) > 0
    assert rows(es_snap) == rows(file_snap)
    assert es_snap.manifest["source"] == source_uri(loaded)
    assert es_snap.manifest["source_stats"] == {"read": es_snap.manifest["row_count"], "unlabelled": 0, "dropped": 0}
    if not loaded.live:
        assert loaded.server.open_pits == 0  # closed on success


def test_pages_fetch_only_the_mapped_fields(loaded, home, tmp_path, monkeypatch):
    from pipelines.ingest import ingest_logs

    monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_PAGE_SIZE", "25")
    monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_EXTRA_FIELDS", "event.dataset, labels.team")
    loaded.load([{"@timestamp": "2026-11-17T12:00:00Z", "message": "with extras", "labels": {"anomaly": False, "team": "sre"},
                  "event": {"dataset": "nginx.access"}, "secret_blob": "x" * 1000}], "logs-extra")
    snap = ingest_logs(source_uri(loaded), T0, T1, tmp_path / "s", load_settings())
    frame = snap.read()
    extra = frame[frame["message"] == "with extras"].iloc[0]
    assert (extra["event.dataset"], extra["labels.team"]) == ("nginx.access", "sre")
    assert frame["labels.team"].isna().sum() == len(frame) - 1
    if not loaded.live:
        pages = [b for b in loaded.server.searches if "pit" in b]
        assert len(pages) == snap.manifest["row_count"] // 25 + 1  # search_after pages of 25
        assert pages[0]["_source"] == {"includes": ["@timestamp", "message", "service.name", "log.level", "host.name", "labels.anomaly",
                                                    "labels.root_cause", "labels.job_id", "event.dataset", "labels.team"]}
        assert pages[0]["sort"][0]["@timestamp"]["order"] == "asc" and "_shard_doc" in pages[0]["sort"][1]
        after = [p["search_after"] for p in pages[1:]]
        assert "search_after" not in pages[0] and after == sorted(after) and len({tuple(a) for a in after}) == len(after)


def test_sliced_parallel_read_gives_the_same_snapshot(loaded, home, tmp_path, monkeypatch):
    from pipelines.ingest import ingest_logs

    monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_PAGE_SIZE", "10")
    one = ingest_logs(source_uri(loaded), T0, T1, tmp_path / "one", load_settings())
    monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_SLICES", "3")
    three = ingest_logs(source_uri(loaded), T0, T1, tmp_path / "three", load_settings())
    assert three.content_hash == one.content_hash  # same rows in the same (time) order
    if not loaded.live:
        assert {b["slice"]["id"] for b in loaded.server.searches if "slice" in b} == {0, 1, 2}
        assert loaded.server.open_pits == 0


@pytest.mark.parametrize("policy, kept", [("keep", 2), ("drop", 0)])
def test_unlabelled_documents_are_counted_then_kept_or_dropped(cluster, home, tmp_path, monkeypatch, policy, kept):
    from pipelines.ingest import ingest_logs

    monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_UNLABELLED", policy)
    cluster.load([{"@timestamp": "2026-11-17T01:00:00Z", "message": "labelled", "labels": {"anomaly": True}},
                  {"@timestamp": "2026-11-17T02:00:00Z", "message": "no label"},
                  {"@timestamp": "2026-11-17T03:00:00Z", "message": "no label either", "labels": {"root_cause": []}}])
    snap = ingest_logs(source_uri(cluster), T0, T1, tmp_path / "s", load_settings())
    assert snap.manifest["source_stats"] == {"read": 3, "unlabelled": 2, "dropped": 2 - kept}
    assert snap.manifest["row_count"] == 1 + kept
    assert snap.read()["anomaly"].isna().sum() == kept


# ---- clear errors ----------------------------------------------------------------------------------------

def _no_snapshot_left(tmp_path):
    return not [p for p in tmp_path.iterdir() if p.name.startswith((".s", "s"))]


def test_missing_index_is_a_clear_error(cluster, home, tmp_path):
    from pipelines.elastic import ElasticsearchError
    from pipelines.ingest import ingest_logs

    with pytest.raises(ElasticsearchError, match=r"no index or data stream '.*nope-logs' at"):
        ingest_logs(source_uri(cluster, "nope-logs"), T0, T1, tmp_path / "s", load_settings())
    with pytest.raises(ElasticsearchError, match=r"no index or data stream matches '.*nope-\*'"):
        ingest_logs(source_uri(cluster, "nope-*"), T0, T1, tmp_path / "s", load_settings())
    assert _no_snapshot_left(tmp_path)


def test_mapping_without_the_text_field_is_a_clear_error(cluster, home, tmp_path, monkeypatch, capsys):
    from pipelines.cli import main

    cluster.load([{"@timestamp": "2026-11-17T01:00:00Z", "msg": "text lives elsewhere", "labels": {"anomaly": False}}], "logs-odd")
    code = main(["ingest", "logs", "--source", source_uri(cluster, "logs-odd"), "--start", "2026-11-17", "--end", "2026-11-18",
                 "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 2 and "maps the text field 'message'" in err and "fields.message" in err and "Traceback" not in err
    monkeypatch.setenv("NIGHTSHIFT_FIELDS_MESSAGE", "msg")
    assert main(["ingest", "logs", "--source", source_uri(cluster, "logs-odd"), "--start", "2026-11-17", "--end", "2026-11-18",
                 "--out", str(tmp_path / "s"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 1


def test_bad_credential_names_the_setting_never_the_secret(cluster, home, tmp_path, monkeypatch, capsys):
    from pipelines.cli import main

    if not cluster.live:
        cluster.server.auth = {"api_key": "good-id:good-key"}
    elif cluster.client.options(api_key=SECRET, ignore_status=401).info().meta.status != 401:
        pytest.skip("the live cluster does not check credentials")
    monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_API_KEY", SECRET)
    monkeypatch.setenv("NIGHTSHIFT_LOG_FORMAT", "json")
    code = main(["ingest", "logs", "--source", source_uri(cluster), "--start", "2026-11-17", "--end", "2026-11-18", "--out", str(tmp_path / "s")])
    captured = capsys.readouterr()
    assert code == 2
    assert "rejected the credential from setting elasticsearch.api_key (NIGHTSHIFT_ELASTICSEARCH_API_KEY)" in captured.err
    assert SECRET not in captured.err + captured.out


def test_unreachable_host_is_a_clear_error_after_retries(home, tmp_path, fast_retries):
    import socket

    from pipelines.elastic import ElasticsearchError
    from pipelines.ingest import ingest_logs

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ElasticsearchError, match=rf"cannot reach Elasticsearch at http://127.0.0.1:{port} after 4 attempt\(s\) \(.*refused") as err:
        ingest_logs(f"http://user:{SECRET}@127.0.0.1:{port}/logs-*", T0, T1, tmp_path / "s", load_settings())
    assert SECRET not in str(err.value) and _no_snapshot_left(tmp_path)


@pytest.mark.parametrize("uri, match", [
    ("http://127.0.0.1:9200/", "names no index"),
    ("elasticsearch://logs-*", "needs an endpoint: set elasticsearch.url"),
])
def test_bad_source_uri_is_a_clear_error(home, tmp_path, uri, match):
    from pipelines.config import ConfigError
    from pipelines.ingest import ingest_logs

    with pytest.raises(ConfigError, match=match):
        ingest_logs(uri, T0, T1, tmp_path / "s", load_settings())


# ---- authentication and TLS ------------------------------------------------------------------------------

@pytest.mark.parametrize("auth, env, in_uri", [
    ({"api_key": "id1:key1"}, {"NIGHTSHIFT_ELASTICSEARCH_API_KEY": "id1:key1"}, False),
    ({"basic": ("elastic", "pw")}, {"NIGHTSHIFT_ELASTICSEARCH_USERNAME": "elastic", "NIGHTSHIFT_ELASTICSEARCH_PASSWORD": "pw"}, False),
    ({"basic": ("elastic", "p@ss:word")}, {}, True),
    ({"bearer": "tok3n"}, {"NIGHTSHIFT_ELASTICSEARCH_BEARER_TOKEN": "tok3n"}, False),
])
def test_each_credential_kind_is_accepted(demo_docs, home, tmp_path, monkeypatch, auth, env, in_uri):
    from urllib.parse import quote

    from pipelines.ingest import ingest_logs

    cluster = ServerCluster(auth=auth)
    try:
        cluster.load(demo_docs)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        uri = source_uri(cluster)
        if in_uri:
            uri = uri.replace("http://", f"http://{auth['basic'][0]}:{quote(auth['basic'][1], safe='')}@")
        snap = ingest_logs(uri, T0, T1, tmp_path / "s", load_settings())
        assert snap.manifest["row_count"] == sum(in_window(d) for d in demo_docs)
        assert "p@ss" not in json.dumps(snap.manifest)
    finally:
        cluster.close()


def test_two_credentials_at_once_are_refused(home, monkeypatch):
    from pipelines.config import ConfigError
    from pipelines.elastic import ElasticsearchLogSource

    monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_API_KEY", SECRET)
    monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_BEARER_TOKEN", "other-secret")
    with pytest.raises(ConfigError, match="more than one Elasticsearch credential") as err:
        ElasticsearchLogSource("http://127.0.0.1:1/logs-*", load_settings()).conn
    assert SECRET not in str(err.value) and "other-secret" not in str(err.value)


def test_cloud_id_configures_the_client(home, monkeypatch):
    import base64

    from pipelines.elastic import client_options, parse_uri

    monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_CLOUD_ID", "prod:" + base64.b64encode(b"eu-west-1.aws.found.io$abc123$def456").decode())
    monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_API_KEY", SECRET)
    opts, where, auth_source = client_options(parse_uri("elasticsearch://logs-*"), load_settings().elasticsearch)
    assert opts["cloud_id"].startswith("prod:") and "hosts" not in opts and opts["api_key"] == SECRET
    assert where == "Elastic Cloud deployment prod" and SECRET not in auth_source


def test_airflow_connection_supplies_endpoint_and_credential(demo_docs, home, tmp_path, monkeypatch):
    from pipelines.ingest import ingest_logs

    cluster = ServerCluster(auth={"basic": ("airflow-user", "airflow-pw")})
    try:
        cluster.load(demo_docs)
        monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
        monkeypatch.setenv("AIRFLOW_CONN_NIGHTSHIFT_ES", json.dumps({"conn_type": "elasticsearch", "host": "127.0.0.1", "port": cluster.server.port,
                                                                    "schema": "http", "login": "airflow-user", "password": "airflow-pw"}))
        monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_CONN_ID", "nightshift_es")
        snap = ingest_logs("elasticsearch://logs-*", T0, T1, tmp_path / "s", load_settings())
        assert snap.manifest["row_count"] == sum(in_window(d) for d in demo_docs)
        assert snap.manifest["source"] == "elasticsearch://logs-*"
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path, str]:
    """A self-signed certificate for 127.0.0.1: (cert file, key file, SHA-256 fingerprint)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    folder = tmp_path_factory.mktemp("tls")
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return folder / "cert.pem", folder / "key.pem", cert.fingerprint(hashes.SHA256()).hex()


def test_tls_is_verified_by_default_and_trusts_a_ca_or_fingerprint(demo_docs, certificate, home, tmp_path, monkeypatch, fast_retries):
    from pipelines.config import ConfigError
    from pipelines.elastic import ElasticsearchError
    from pipelines.ingest import ingest_logs

    cert, key, fingerprint = certificate
    cluster = ServerCluster(tls=(str(cert), str(key)))
    try:
        cluster.load(demo_docs)
        uri = source_uri(cluster)
        assert uri.startswith("https://")
        with pytest.raises(ElasticsearchError, match="TLS verification of https://127.0.0.1:.* failed .*elasticsearch.ca_certs"):
            ingest_logs(uri, T0, T1, tmp_path / "a", load_settings())
        monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_CA_CERTS", str(tmp_path / "missing.pem"))
        with pytest.raises(ConfigError, match="elasticsearch.ca_certs .*no such file"):
            ingest_logs(uri, T0, T1, tmp_path / "a", load_settings())
        monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_CA_CERTS", str(cert))
        assert ingest_logs(uri, T0, T1, tmp_path / "a", load_settings()).manifest["row_count"] > 0
        monkeypatch.delenv("NIGHTSHIFT_ELASTICSEARCH_CA_CERTS")
        monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_SSL_FINGERPRINT", fingerprint)
        assert ingest_logs(uri, T0, T1, tmp_path / "b", load_settings()).manifest["row_count"] > 0
    finally:
        cluster.close()


# ---- faults while pulling --------------------------------------------------------------------------------

@pytest.fixture
def server_cluster(demo_docs):
    cluster = ServerCluster()
    cluster.load(demo_docs)
    yield cluster
    cluster.close()


@pytest.fixture
def server(server_cluster):
    return server_cluster.server


def _reference_rows(demo_docs, tmp_path, settings):
    from pipelines.ingest import ingest_logs

    corpus = tmp_path / "reference.ndjson"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in demo_docs))
    return rows(ingest_logs(f"file://{corpus}", T0, T1, tmp_path / "reference", settings))


def test_connection_dropped_mid_pull_is_retried(server, demo_docs, home, tmp_path, monkeypatch, fast_retries):
    from pipelines.ingest import ingest_logs

    monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_PAGE_SIZE", "20")
    server.faults.drop_connection("_search", after=3, count=2)
    snap = ingest_logs(f"{server.url}/logs-*", T0, T1, tmp_path / "s", load_settings())
    assert rows(snap) == _reference_rows(demo_docs, tmp_path, load_settings())
    assert server.faults.drops[0]["count"] == 0 and server.open_pits == 0


def test_429_storm_is_ridden_out_with_backoff(server, demo_docs, home, tmp_path, monkeypatch, fast_retries):
    from pipelines.elastic import ElasticsearchError
    from pipelines.ingest import ingest_logs

    monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_PAGE_SIZE", "20")
    server.faults.storm(3, 429, "_search")
    snap = ingest_logs(f"{server.url}/logs-*", T0, T1, tmp_path / "s", load_settings())
    assert rows(snap) == _reference_rows(demo_docs, tmp_path, load_settings())
    server.faults.storm(10, 429, "_search")  # longer than the retries: a clear error, nothing half-written
    with pytest.raises(ElasticsearchError, match=r"search 'logs-\*': Elasticsearch at .* answered 429 es_rejected_execution_exception"):
        ingest_logs(f"{server.url}/logs-*", T0, T1, tmp_path / "t", load_settings())
    assert not (tmp_path / "t").exists() and server.open_pits == 0


def test_expired_point_in_time_is_reopened_without_loss_or_repeats(server, demo_docs, home, tmp_path, monkeypatch):
    from pipelines.ingest import ingest_logs

    monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_PAGE_SIZE", "15")
    server.faults.expire_pits_after_searches = 3
    snap = ingest_logs(f"{server.url}/logs-*", T0, T1, tmp_path / "s", load_settings())
    assert rows(snap) == _reference_rows(demo_docs, tmp_path, load_settings())
    assert sum(1 for method, path in server.requests if path.endswith("/_pit") and method == "POST") == 2
    assert server.open_pits == 0


def test_expired_point_in_time_with_slices(server, demo_docs, home, tmp_path, monkeypatch):
    from pipelines.ingest import ingest_logs

    monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_PAGE_SIZE", "10")
    monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_SLICES", "2")
    server.faults.expire_pits_after_searches = 5
    snap = ingest_logs(f"{server.url}/logs-*", T0, T1, tmp_path / "s", load_settings())
    assert rows(snap) == _reference_rows(demo_docs, tmp_path, load_settings())
    assert server.open_pits == 0


def test_point_in_time_is_closed_when_the_pull_fails(server, home, tmp_path):
    from pipelines.ingest import ingest_logs
    from pipelines.records import RecordError

    server.load("logs-bad", [{"@timestamp": "2026-11-17T00:30:00Z", "message": "bad label", "labels": {"anomaly": "maybe"}}])
    with pytest.raises(RecordError, match=r"logs-bad/\w+: field 'labels.anomaly' has an unknown label value"):
        ingest_logs(f"{server.url}/logs-*", T0, T1, tmp_path / "s", load_settings())
    assert server.open_pits == 0 and not (tmp_path / "s").exists()


# ---- write-back ------------------------------------------------------------------------------------------

class StandInClassifier:
    """Scores 0.9 for texts with 'fail' or 'error', else 0.1; can be told to crash on its n-th batch."""

    thresholds = np.array([0.5], dtype=np.float32)

    def __init__(self, crash_on_call: int | None = None):
        self.calls, self.crash_on_call, self.texts = 0, crash_on_call, 0

    def probabilities(self, messages, batch_size=64):
        self.calls += 1
        if self.calls == self.crash_on_call:
            raise RuntimeError("killed mid-run")
        self.texts += len(messages)
        return np.array([[0.9 if ("fail" in m.lower() or "error" in m.lower()) else 0.1] for m in messages], dtype=np.float32)


@pytest.fixture
def stand_in(monkeypatch):
    """`score_logs` with the registry answering every anomaly-model reference with a stand-in classifier."""
    import pipelines.registry as registry

    state = {"classifier": StandInClassifier()}

    class Model:
        def unwrap_python_model(self):
            return state["classifier"]

    def load_model(client, ref):
        name, _, version = ref.partition("/")
        if name != "log-anomaly":
            raise registry.RegistryError(f"{ref} is not registered")
        return registry.ModelRef(name, version or "1"), Model()

    monkeypatch.setattr(registry, "use_store", lambda settings: None)
    monkeypatch.setattr(registry, "load_model", load_model)
    monkeypatch.setattr(registry, "alias_version", lambda client, name, alias: None)  # no root-cause champion
    return state


def score(cluster, version="1", sink=None, pattern="logs-*", start=T0, end=T1):
    from serving.score_logs import score_logs

    return score_logs(f"log-anomaly/{version}", source_uri(cluster, pattern), sink, load_settings(), start=start, end=end)


def test_write_back_onto_own_documents_then_nothing_then_rescore_after_promotion(loaded, demo_docs, stand_in, home):
    expected = sum(in_window(d) for d in demo_docs)
    first = score(loaded)
    assert first["read"] == first["scored"] == first["written"] == expected and first["failed"] == 0
    docs = loaded.docs("logs-*")
    scored = {k: d for k, d in docs.items() if "ml" in d}
    assert len(scored) == expected and all(in_window(d) for d in scored.values())
    for doc in scored.values():
        ml = doc["ml"]
        assert ml["model"] == {"name": "log-anomaly", "version": "1"} and ml["scored_at"]
        assert ml["anomaly"]["score"] in (0.1, 0.9) and ml["anomaly"]["is_anomaly"] == (ml["anomaly"]["score"] > 0.5)
        assert doc["message"]  # a partial update: the log fields stay
    assert set(loaded.update_counts().values()) == {1}  # routed documents included: each updated once, in place

    second = score(loaded)
    assert (second["read"], second["written"], second["skipped"]) == (0, 0, expected)
    assert second["skipped_reasons"] == {"already scored by log-anomaly v1": expected}

    promoted = score(loaded, version="2")
    assert promoted["written"] == expected
    assert all(d["ml"]["model"]["version"] == "2" for d in loaded.docs("logs-*").values() if "ml" in d)


def test_write_back_to_a_separate_results_index(loaded, demo_docs, stand_in, home):
    expected = sum(in_window(d) for d in demo_docs)
    results = f"{loaded.url}/{loaded.name('nightshift-ml-results')}"
    first = score(loaded, sink=results)
    assert first["written"] == expected, first["failed_reasons"]
    out = loaded.docs("nightshift-ml-results")
    assert len(out) == expected
    sources = loaded.docs("logs-*")
    for (_, result_id), doc in out.items():
        ref = (doc["source_document"]["index"], doc["source_document"]["id"])
        assert result_id == f"{ref[0]}:{ref[1]}" and "ml" not in sources[ref]
        assert doc["ml"]["model"]["version"] == "1" and doc["@timestamp"]
    second = score(loaded, sink=results)
    assert (second["written"], second["skipped"]) == (0, expected)


def test_crash_then_resume_scores_every_document_exactly_once(loaded, demo_docs, stand_in, home, monkeypatch):
    monkeypatch.setenv("NIGHTSHIFT_SCORE_SORT_WINDOW", "20")
    monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_BULK_MAX_BYTES", "3000")
    monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_PAGE_SIZE", "25")
    expected = sum(in_window(d) for d in demo_docs)
    stand_in["classifier"] = StandInClassifier(crash_on_call=5)
    with pytest.raises(RuntimeError, match="killed mid-run"):
        score(loaded)
    checkpoints = list((home / "checkpoints").glob("score-*.json"))
    assert len(checkpoints) == 1
    state = json.loads(checkpoints[0].read_text())
    written_before = sum(1 for d in loaded.docs("logs-*").values() if "ml" in d)
    assert 0 < written_before < expected and state["written"] == written_before
    if not loaded.live:
        assert loaded.server.open_pits == 0  # closed on failure

    stand_in["classifier"] = StandInClassifier()
    resumed = score(loaded)
    assert resumed["resumed_from"] == state["watermark"]
    assert resumed["written"] == expected - written_before
    assert resumed["skipped_reasons"] == {"already scored by log-anomaly v1": written_before}
    assert sum(1 for d in loaded.docs("logs-*").values() if "ml" in d) == expected
    counts = loaded.update_counts()
    assert len(counts) == expected and set(counts.values()) == {1}  # none lost, none written twice
    assert not list((home / "checkpoints").glob("score-*.json"))  # a finished pass leaves no checkpoint


def test_bulk_with_failed_items_retries_only_those(server_cluster, stand_in, home, fast_retries):
    from pipelines.elastic import ElasticsearchLogSource

    server = server_cluster.server
    source = ElasticsearchLogSource(f"{server.url}/logs-*", load_settings())
    ids = [ref.doc_id for ref, _ in source.iter_docs(T0, T1)]
    server.faults.fail_items(ids[0], (429, "es_rejected_execution_exception"), (503, "unavailable_shards_exception"))
    server.faults.fail_items(ids[1], (400, "document_parsing_exception"))
    bulks_before = server.bulks
    out = score(server_cluster)
    assert out["written"] == len(ids) - 1 and out["failed"] == 1
    assert out["failed_reasons"] == {"400 document_parsing_exception": 1}
    assert server.bulks - bulks_before == 3  # the batch, then the one rejected item alone, twice
    retried = [i for i in server.updates if i[1] == ids[0]]
    assert len(retried) == 1  # injected failures are answered before the update is applied


def test_scoring_a_file_source_into_an_index(stand_in, home, tmp_path, demo_docs):
    from serving.score_logs import score_logs

    cluster = ServerCluster()
    try:
        corpus = tmp_path / "logs.ndjson"
        corpus.write_text("".join(json.dumps(d) + "\n" for d in demo_docs[:50]))
        out = score_logs("log-anomaly/1", f"file://{corpus}", f"{cluster.url}/scored-logs", load_settings())
        assert out["written"] == 50 and len(cluster.docs("scored-logs")) == 50
    finally:
        cluster.close()


def test_scoring_an_index_into_a_file(loaded, demo_docs, stand_in, home, tmp_path):
    out_file = tmp_path / "scored.ndjson"
    out = score(loaded, sink=f"file://{out_file}")
    lines = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert out["written"] == len(lines) == sum(in_window(d) for d in demo_docs)
    assert all(line["ml"]["model"]["version"] == "1" for line in lines)
    assert not any("ml" in d for d in loaded.docs("logs-*").values())  # the index is left alone


# ---- the index template ----------------------------------------------------------------------------------

def test_install_template_maps_ml_fields(cluster, home, capsys):
    from pipelines.cli import main

    cluster.load([{"@timestamp": "2026-11-17T01:00:00Z", "message": "existing", "labels": {"anomaly": False}}], "logs-existing")
    pattern = cluster.name("logs-*")
    assert main(["es", "install-template", "--url", cluster.url, "--index-pattern", pattern, "--update-existing", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["index_patterns"] == [pattern] and cluster.name("logs-existing") in out["updated_indices"]
    if cluster.live:
        cluster.templates += ["nightshift-logs", "nightshift-ml-results"]
    cluster.load([{"@timestamp": "2026-11-18T01:00:00Z", "message": "new", "ml": {"anomaly": {"score": 1, "is_anomaly": True},
                   "rca": {"labels": ["OOM"], "scores": {"OOM": 1}}, "model": {"name": "log-anomaly", "version": "7"}}}], "logs-new")
    for index in ("logs-new", "logs-existing"):
        fields = ["ml.anomaly.score", "ml.anomaly.is_anomaly", "ml.rca.labels", "ml.model.version", "ml.scored_at"]
        mapping = _field_mapping(cluster, index, fields)
        assert {f: mapping[f]["mapping"][f.split(".")[-1]]["type"] for f in fields} == {
            "ml.anomaly.score": "float", "ml.anomaly.is_anomaly": "boolean", "ml.rca.labels": "keyword", "ml.model.version": "keyword",
            "ml.scored_at": "date"}
    assert _field_mapping(cluster, "logs-new", ["ml.rca.scores.OOM"])["ml.rca.scores.OOM"]["mapping"]["OOM"]["type"] == "float"


def _field_mapping(cluster, index: str, fields: list[str]) -> dict:
    from elasticsearch import Elasticsearch

    client = cluster.client if cluster.live else Elasticsearch(cluster.url)
    return client.indices.get_field_mapping(index=cluster.name(index), fields=fields).body[cluster.name(index)]["mappings"]
