"""Elasticsearch source, write-back and index template, through the real `elasticsearch` client against a real node.

The scenarios run on the node the session starts (security on, basic auth), or, marked `live`, on the cluster named
by `ES_URL`. Faults come from real behaviour where Elasticsearch produces them (a one-thread write pool with a queue
of one for rejected bulk items, a short point-in-time keep-alive for a real expiry, a killed node for a dropped
connection) on a second node with security off; a 429 storm, a connection dropped mid-page and a pause before a
search come from the fault proxy in tests/support/es_proxy.py in front of that node. Scoring here uses a stand-in
classifier so that these tests exercise the Elasticsearch plumbing in seconds; tests/e2e/test_elastic_flow.py runs the
real BERT. The client's set-up without a node (URIs, credentials, Elastic Cloud, an unreachable host) is in
tests/unit/test_elastic_client.py.
"""

from __future__ import annotations

import json
import threading
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tests.support.cli import cli_error, no_snapshot_left
from tests.support.es_cluster import LIVE_URL, Cluster, EsNode, day_index, dotted
from tests.support.es_proxy import FaultProxy
from tests.support.fakes import StandInClassifier

T0 = datetime(2026, 11, 17, tzinfo=timezone.utc)
T1 = datetime(2026, 11, 19, tzinfo=timezone.utc)
SECRET = "s3cr3t-api-key-value"


@pytest.fixture(scope="module")
def demo_docs(tmp_path_factory) -> list[dict]:
    """Six days of demo logs, 60 normal lines a day (plus incidents and failing jobs)."""
    from pipelines.data.demo_logs import write_demo_logs

    path = write_demo_logs(tmp_path_factory.mktemp("es-corpus"), per_day=60)
    return [json.loads(line) for line in path.read_text().splitlines()]


def in_window(doc: dict, start=T0, end=T1) -> bool:
    ts = datetime.fromisoformat(doc["@timestamp"].replace("Z", "+00:00"))
    return start <= ts < end


@pytest.fixture(params=[pytest.param("node"), pytest.param("live", marks=[pytest.mark.live, pytest.mark.skipif(not LIVE_URL, reason="needs ES_URL")])])
def cluster(request, monkeypatch):
    """A fresh index prefix on the session's node (with its user's credential in nightshift's settings), or on the
    cluster named by ES_URL."""
    import os

    if request.param == "node":
        node = request.getfixturevalue("es_node")
        request.getfixturevalue("es_credentials")
        c = Cluster.on(node)
    else:
        c = Cluster.live()
        for env, setting in (("ES_API_KEY", "API_KEY"), ("ES_CA_CERTS", "CA_CERTS"), ("ES_VERIFY_CERTS", "VERIFY_CERTS")):
            if os.environ.get(env):
                monkeypatch.setenv(f"NIGHTSHIFT_ELASTICSEARCH_{setting}", os.environ[env])
    yield c
    c.close()


@pytest.fixture
def loaded(cluster, demo_docs):
    """The demo corpus as daily indices (every 4th document routed, every 2nd in dotted form); the last day in a data
    stream, created by its first document through a matching template."""
    cluster.create_data_stream("logs-stream")
    last_day = max(d["@timestamp"][:10] for d in demo_docs)
    docs = [dotted(d) if i % 2 else d for i, d in enumerate(demo_docs)]
    cluster.load([d for d in docs if d["@timestamp"][:10] != last_day], day_index, routing=lambda d: f"r{len(d['message']) % 3}" if len(d["message"]) % 4 == 0 else None)
    cluster.load([d for d in docs if d["@timestamp"][:10] == last_day], "logs-stream")
    return cluster


def source_uri(cluster, pattern: str = "logs-*", url: str | None = None) -> str:
    return f"{url or cluster.url}/{cluster.name(pattern)}"


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
    from pipelines.data.ingest import ingest_logs

    end = datetime(2026, 11, 22, tzinfo=timezone.utc)  # the last day lives in the data stream
    corpus = tmp_path / "logs.ndjson"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in demo_docs))
    es_snap = ingest_logs(source_uri(loaded), T0, end, tmp_path / "es", load_settings())
    file_snap = ingest_logs(f"file://{corpus}", T0, end, tmp_path / "file", load_settings())
    assert es_snap.manifest["row_count"] == sum(in_window(d, T0, end) for d in demo_docs) > 0
    assert rows(es_snap) == rows(file_snap)
    assert es_snap.manifest["source"] == source_uri(loaded)
    assert es_snap.manifest["source_stats"] == {"read": es_snap.manifest["row_count"], "unlabelled": 0, "dropped": 0}
    assert loaded.open_contexts() == 0  # the point-in-time is closed on success


def test_pages_fetch_only_the_mapped_fields(loaded, home, tmp_path, monkeypatch):
    """What the reader asks for, seen through the proxy: `_source` filtering, (timestamp, `_shard_doc`) order, and
    `search_after` pages of the configured size."""
    from pipelines.data.ingest import ingest_logs

    monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_PAGE_SIZE", "25")
    monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_EXTRA_FIELDS", "event.dataset, labels.team")
    loaded.load([{"@timestamp": "2026-11-17T12:00:00Z", "message": "with extras", "labels": {"anomaly": False, "team": "sre"},
                  "event": {"dataset": "nginx.access"}, "secret_blob": "x" * 1000}], "logs-extra")
    proxy = FaultProxy(loaded.url).start()
    try:
        snap = ingest_logs(source_uri(loaded, url=proxy.url), T0, T1, tmp_path / "s", load_settings())
    finally:
        proxy.close()
    frame = snap.read()
    extra = frame[frame["message"] == "with extras"].iloc[0]
    assert (extra["event.dataset"], extra["labels.team"]) == ("nginx.access", "sre")
    assert frame["labels.team"].isna().sum() == len(frame) - 1
    pages = [b for b in proxy.searches if "pit" in b]
    assert len(pages) == snap.manifest["row_count"] // 25 + 1  # search_after pages of 25
    assert pages[0]["_source"] == {"includes": ["@timestamp", "message", "service.name", "log.level", "host.name", "labels.anomaly",
                                                "labels.root_cause", "labels.job_id", "event.dataset", "labels.team"]}
    assert pages[0]["sort"][0]["@timestamp"]["order"] == "asc" and "_shard_doc" in pages[0]["sort"][1]
    after = [p["search_after"] for p in pages[1:]]
    assert "search_after" not in pages[0] and after == sorted(after) and len({tuple(a) for a in after}) == len(after)


def test_sliced_parallel_read_gives_the_same_snapshot(loaded, home, tmp_path, monkeypatch):
    from pipelines.data.ingest import ingest_logs

    monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_PAGE_SIZE", "10")
    proxy = FaultProxy(loaded.url).start()  # both reads through it: the source URI is part of the content hash
    try:
        one = ingest_logs(source_uri(loaded, url=proxy.url), T0, T1, tmp_path / "one", load_settings())
        monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_SLICES", "3")
        three = ingest_logs(source_uri(loaded, url=proxy.url), T0, T1, tmp_path / "three", load_settings())
    finally:
        proxy.close()
    assert three.content_hash == one.content_hash  # same rows in the same (time) order
    assert {b["slice"]["id"] for b in proxy.searches if "slice" in b} == {0, 1, 2}
    assert loaded.open_contexts() == 0


@pytest.mark.parametrize("policy, kept", [("keep", 2), ("drop", 0)])
def test_unlabelled_documents_are_counted_then_kept_or_dropped(cluster, home, tmp_path, monkeypatch, policy, kept):
    from pipelines.data.ingest import ingest_logs

    monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_UNLABELLED", policy)
    cluster.load([{"@timestamp": "2026-11-17T01:00:00Z", "message": "labelled", "labels": {"anomaly": True}},
                  {"@timestamp": "2026-11-17T02:00:00Z", "message": "no label"},
                  {"@timestamp": "2026-11-17T03:00:00Z", "message": "no label either", "labels": {"root_cause": []}}])
    snap = ingest_logs(source_uri(cluster), T0, T1, tmp_path / "s", load_settings())
    assert snap.manifest["source_stats"] == {"read": 3, "unlabelled": 2, "dropped": 2 - kept}
    assert snap.manifest["row_count"] == 1 + kept
    assert snap.read()["anomaly"].isna().sum() == kept


# ---- clear errors ----------------------------------------------------------------------------------------

def test_missing_index_is_a_clear_error(cluster, home, tmp_path, capsys):
    from pipelines.data.ingest import ingest_logs
    from pipelines.sources.elastic.connection import ElasticsearchError

    err = cli_error(capsys, "ingest", "logs", "--source", source_uri(cluster, "nope-logs"), "--start", "2026-11-17", "--end", "2026-11-18",
                    "--out", str(tmp_path / "s"))
    assert f"no index or data stream '{cluster.name('nope-logs')}' at {cluster.url}" in err

    with pytest.raises(ElasticsearchError, match=r"no index or data stream '.*nope-logs' at"):
        ingest_logs(source_uri(cluster, "nope-logs"), T0, T1, tmp_path / "s", load_settings())
    with pytest.raises(ElasticsearchError, match=r"no index or data stream matches '.*nope-\*'"):
        ingest_logs(source_uri(cluster, "nope-*"), T0, T1, tmp_path / "s", load_settings())
    assert no_snapshot_left(tmp_path)


def test_mapping_without_the_text_field_is_a_clear_error(cluster, home, tmp_path, monkeypatch, capsys):
    from nightshift.cli import main

    cluster.load([{"@timestamp": "2026-11-17T01:00:00Z", "msg": "text lives elsewhere", "labels": {"anomaly": False}}], "logs-odd")
    code = main(["ingest", "logs", "--source", source_uri(cluster, "logs-odd"), "--start", "2026-11-17", "--end", "2026-11-18",
                 "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 2 and "maps the text field 'message'" in err and "fields.message" in err and "Traceback" not in err
    monkeypatch.setenv("NIGHTSHIFT_FIELDS_MESSAGE", "msg")
    assert main(["ingest", "logs", "--source", source_uri(cluster, "logs-odd"), "--start", "2026-11-17", "--end", "2026-11-18",
                 "--out", str(tmp_path / "s"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 1


@pytest.mark.parametrize("kind", ["api_key", "password"])
def test_bad_credential_names_the_setting_never_the_secret(es_node, es_credentials, home, tmp_path, monkeypatch, capsys, kind):
    """The node checks the credential (401): one line naming the setting, exit 2, the secret nowhere."""
    from nightshift.cli import main

    cluster = Cluster.on(es_node)
    cluster.load([{"@timestamp": "2026-11-17T01:00:00Z", "message": "x", "labels": {"anomaly": False}}], "logs-a")
    if kind == "api_key":
        monkeypatch.delenv("NIGHTSHIFT_ELASTICSEARCH_USERNAME")
        monkeypatch.delenv("NIGHTSHIFT_ELASTICSEARCH_PASSWORD")
        monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_API_KEY", SECRET)
        setting = "setting elasticsearch.api_key (NIGHTSHIFT_ELASTICSEARCH_API_KEY)"
    else:
        monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_PASSWORD", SECRET)
        setting = "settings elasticsearch.username (NIGHTSHIFT_ELASTICSEARCH_USERNAME) / elasticsearch.password (NIGHTSHIFT_ELASTICSEARCH_PASSWORD)"
    monkeypatch.setenv("NIGHTSHIFT_LOG_FORMAT", "json")
    try:
        code = main(["ingest", "logs", "--source", source_uri(cluster), "--start", "2026-11-17", "--end", "2026-11-18", "--out", str(tmp_path / "s")])
    finally:
        cluster.close()
    captured = capsys.readouterr()
    assert code == 2
    assert f"rejected the credential from {setting} (401 security_exception)" in captured.err
    assert len(captured.err.strip().splitlines()) == 1 and "Traceback" not in captured.err
    assert SECRET not in captured.err + captured.out and not (tmp_path / "s").exists()


# ---- authentication and TLS ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["settings", "uri"])
def test_basic_auth_from_settings_or_the_uri_is_accepted(es_node, demo_docs, home, tmp_path, monkeypatch, kind):
    from urllib.parse import quote

    from pipelines.data.ingest import ingest_logs

    user, password = es_node.credential
    cluster = Cluster.on(es_node)
    try:
        cluster.load(demo_docs)
        uri = source_uri(cluster)
        if kind == "settings":
            monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_USERNAME", user)
            monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_PASSWORD", password)
        else:
            uri = uri.replace("http://", f"http://{user}:{quote(password, safe='')}@")
        snap = ingest_logs(uri, T0, T1, tmp_path / "s", load_settings())
        assert snap.manifest["row_count"] == sum(in_window(d) for d in demo_docs)
        assert password not in json.dumps(snap.manifest)
    finally:
        cluster.close()


def test_bearer_token_is_authenticated_and_its_missing_privilege_named(es_node, home, tmp_path, monkeypatch, capsys):
    """The node's bearer credential is a service token of elastic/kibana: the node authenticates it (no 401), and
    refuses the search with 403, which nightshift reports naming the credential's setting."""
    from nightshift.cli import main

    cluster = Cluster.on(es_node)
    cluster.load([{"@timestamp": "2026-11-17T01:00:00Z", "message": "x", "labels": {"anomaly": False}}], "logs-a")
    monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_BEARER_TOKEN", es_node.env["ES_BEARER_TOKEN"])
    try:
        # a named index: on a wildcard the node silently leaves out the indices a credential may not read
        code = main(["ingest", "logs", "--source", source_uri(cluster, "logs-a"), "--start", "2026-11-17", "--end", "2026-11-18",
                     "--out", str(tmp_path / "s")])
    finally:
        cluster.close()
    err = capsys.readouterr().err
    assert code == 2 and "the credential from setting elasticsearch.bearer_token (NIGHTSHIFT_ELASTICSEARCH_BEARER_TOKEN) is not allowed" in err
    assert "(403)" in err and es_node.env["ES_BEARER_TOKEN"] not in err


def test_airflow_connection_supplies_endpoint_and_credential(es_node, demo_docs, home, tmp_path, monkeypatch):
    from pipelines.data.ingest import ingest_logs

    user, password = es_node.credential
    cluster = Cluster.on(es_node)
    try:
        cluster.load(demo_docs)
        monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
        monkeypatch.setenv("AIRFLOW_CONN_NIGHTSHIFT_ES", json.dumps({"conn_type": "elasticsearch", "host": "127.0.0.1", "port": es_node.port,
                                                                    "schema": "http", "login": user, "password": password}))
        monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_CONN_ID", "nightshift_es")
        snap = ingest_logs(f"elasticsearch://{cluster.name('logs-*')}", T0, T1, tmp_path / "s", load_settings())
        assert snap.manifest["row_count"] == sum(in_window(d) for d in demo_docs)
        assert snap.manifest["source"] == f"elasticsearch://{cluster.name('logs-*')}"
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


def test_tls_is_verified_by_default_and_trusts_a_ca_or_fingerprint(es_node, es_credentials, demo_docs, certificate, home, tmp_path,
                                                                   monkeypatch, fast_retries):
    """TLS terminated by the proxy with a self-signed certificate, in front of the node (the minimal distribution's
    own TLS would need a keystore per test; the client side, which is nightshift's, is the same)."""
    from pipelines.config import ConfigError
    from pipelines.data.ingest import ingest_logs
    from pipelines.sources.elastic.connection import ElasticsearchError

    cert, key, fingerprint = certificate
    cluster = Cluster.on(es_node)
    proxy = FaultProxy(cluster.url, tls=(str(cert), str(key))).start()
    try:
        cluster.load(demo_docs)
        uri = source_uri(cluster, url=proxy.url)
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
        proxy.close()
        cluster.close()


# ---- faults while pulling --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def faults_node():
    """A second node, security off, made to fail for real: a write pool of one thread with a queue of one (bulk items
    are rejected with 429 under load), and point-in-times reaped within 100 ms of their keep-alive running out."""
    node = EsNode(settings={"thread_pool.write.size": "1", "thread_pool.write.queue_size": "1",
                            "search.keep_alive_interval": "100ms"}).start()
    yield node
    node.stop()


@pytest.fixture
def faults_cluster(faults_node, demo_docs):
    cluster = Cluster.on(faults_node)
    cluster.load(demo_docs)
    yield cluster
    cluster.close()


@pytest.fixture
def proxy(faults_cluster):
    proxy = FaultProxy(faults_cluster.url).start()
    yield proxy
    proxy.close()


def _reference_rows(demo_docs, tmp_path, settings):
    from pipelines.data.ingest import ingest_logs

    corpus = tmp_path / "reference.ndjson"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in demo_docs))
    return rows(ingest_logs(f"file://{corpus}", T0, T1, tmp_path / "reference", settings))


def test_connection_dropped_mid_pull_is_retried(faults_cluster, proxy, demo_docs, home, tmp_path, monkeypatch, fast_retries):
    from pipelines.data.ingest import ingest_logs

    monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_PAGE_SIZE", "20")
    proxy.faults.drop_connection("_search", after=3, count=2)
    snap = ingest_logs(source_uri(faults_cluster, url=proxy.url), T0, T1, tmp_path / "s", load_settings())
    assert rows(snap) == _reference_rows(demo_docs, tmp_path, load_settings())
    assert proxy.faults.drops[0]["count"] == 0 and faults_cluster.open_contexts() == 0


def test_429_storm_is_ridden_out_with_backoff(faults_cluster, proxy, demo_docs, home, tmp_path, monkeypatch, fast_retries):
    from pipelines.data.ingest import ingest_logs
    from pipelines.sources.elastic.connection import ElasticsearchError

    monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_PAGE_SIZE", "20")
    uri = source_uri(faults_cluster, url=proxy.url)
    proxy.faults.storm(3, 429, "_search")
    snap = ingest_logs(uri, T0, T1, tmp_path / "s", load_settings())
    assert rows(snap) == _reference_rows(demo_docs, tmp_path, load_settings())
    proxy.faults.storm(10, 429, "_search")  # longer than the retries: a clear error, nothing half-written
    with pytest.raises(ElasticsearchError, match=r"search '.*logs-\*': Elasticsearch at .* answered 429 es_rejected_execution_exception"):
        ingest_logs(uri, T0, T1, tmp_path / "t", load_settings())
    assert not (tmp_path / "t").exists() and faults_cluster.open_contexts() == 0


@pytest.mark.parametrize("slices", [1, 2])
def test_expired_point_in_time_is_reopened_without_loss_or_repeats(faults_cluster, proxy, demo_docs, home, tmp_path, monkeypatch, slices):
    """A real expiry: a 2 s keep-alive, and the reader held for 3.5 s before its fourth page, so the node reaps the
    point-in-time and answers the next page with 404 search_context_missing_exception. (With 1 s, a page that waited
    a second on a busy host's cores expired too.)"""
    from pipelines.data.ingest import ingest_logs

    monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_PAGE_SIZE", "15")
    monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_SLICES", str(slices))
    monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_KEEP_ALIVE", "2s")
    proxy.faults.delay(3.5, "_search", after=3)
    snap = ingest_logs(source_uri(faults_cluster, url=proxy.url), T0, T1, tmp_path / "s", load_settings())
    assert rows(snap) == _reference_rows(demo_docs, tmp_path, load_settings())
    assert sum(1 for method, path in proxy.requests if path.endswith("/_pit") and method == "POST") == 2
    assert faults_cluster.open_contexts() == 0


def test_expiry_inside_one_millisecond_resumes_without_loss_or_repeats(faults_cluster, proxy, home, monkeypatch):
    """70 documents share one timestamp, so the read resumes inside that millisecond: the 45 already yielded are
    not yielded again, the 25 after them are, and so are the documents of the next millisecond."""
    from pipelines.sources.elastic.reader import ElasticsearchLogSource

    monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_PAGE_SIZE", "15")
    monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_KEEP_ALIVE", "2s")
    same = [{"@timestamp": "2026-11-17T09:00:00.000Z", "message": f"same millisecond {i}", "labels": {"anomaly": False}} for i in range(70)]
    after = [{"@timestamp": "2026-11-17T09:00:00.001Z", "message": f"next millisecond {i}", "labels": {"anomaly": False}} for i in range(5)]
    faults_cluster.load(same + after, "tied")
    proxy.faults.delay(3.5, "_search", after=3)  # the fourth page waits out the keep-alive: 45 documents read by then
    source = ElasticsearchLogSource(f"{proxy.url}/{faults_cluster.name('tied')}", load_settings())
    read = [(str(ref), doc["message"]) for ref, doc in source.iter_docs()]
    assert len(read) == len(set(read)) == 75
    assert [m for _, m in read[70:]] == [d["message"] for d in after]
    assert sum(1 for method, path in proxy.requests if path.endswith("/_pit") and method == "POST") == 2
    assert faults_cluster.open_contexts() == 0


def test_point_in_time_is_closed_when_the_pull_fails(faults_cluster, home, tmp_path):
    from pipelines.data.ingest import ingest_logs
    from pipelines.data.records import RecordError

    faults_cluster.load([{"@timestamp": "2026-11-17T00:30:00Z", "message": "bad label", "labels": {"anomaly": "maybe"}}], "logs-bad")
    with pytest.raises(RecordError, match=r"logs-bad/[\w-]+: field 'labels.anomaly' has an unknown label value"):
        ingest_logs(source_uri(faults_cluster), T0, T1, tmp_path / "s", load_settings())
    assert faults_cluster.open_contexts() == 0 and not (tmp_path / "s").exists()


# ---- write-back ------------------------------------------------------------------------------------------

def score(cluster, version="1", sink=None, pattern="logs-*", start=T0, end=T1, url=None):
    from pipelines.scoring.score_logs import score_logs

    return score_logs(f"log-anomaly/{version}", source_uri(cluster, pattern, url), sink, load_settings(), start=start, end=end)


def test_write_back_onto_own_documents_then_nothing_then_rescore_after_promotion(loaded, demo_docs, stand_in, home):
    expected = sum(in_window(d) for d in demo_docs)
    first = score(loaded)
    assert first["read"] == first["scored"] == first["written"] == expected and first["failed"] == 0
    docs = loaded.docs("logs-*")
    scored = {k: d for k, d in docs.items() if "ml" in d}
    assert len(scored) == expected and all(in_window(d) for d in scored.values())
    for doc in scored.values():
        ml = doc["ml"]
        assert ml["model"] == {"name": "log-anomaly", "version": "1", "family": "bert"} and ml["scored_at"]
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
    monkeypatch.setenv("NIGHTSHIFT_SCORE_MAX_PENDING", "20")  # a model call per window
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
    assert loaded.open_contexts() == 0  # closed on failure

    stand_in["classifier"] = StandInClassifier()
    resumed = score(loaded)
    assert resumed["resumed_from"] == state["watermark"]
    assert resumed["written"] == expected - written_before
    assert resumed["skipped_reasons"] == {"already scored by log-anomaly v1": written_before}
    assert sum(1 for d in loaded.docs("logs-*").values() if "ml" in d) == expected
    counts = loaded.update_counts()
    assert len(counts) == expected and set(counts.values()) == {1}  # none lost, none written twice
    assert not list((home / "checkpoints").glob("score-*.json"))  # a finished pass leaves no checkpoint


def write_rejections(cluster) -> int:
    stats = cluster.client.nodes.stats(metric="thread_pool")
    return sum(n["thread_pool"]["write"]["rejected"] for n in stats["nodes"].values())


def test_rejected_bulk_items_are_retried_and_unwritable_ones_counted(faults_node, faults_cluster, demo_docs, stand_in, home, monkeypatch):
    """Real rejections: other writers flood the node's one-slot write queue while scoring writes back, so the node
    rejects bulk items with 429; a document whose index maps `ml` as a keyword fails for real with 400. Every
    rejected item is retried until written once; the unwritable one is counted, not retried."""
    from elasticsearch import Elasticsearch

    monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_RETRY_BACKOFF", "0.05")
    monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_RETRIES", "12")
    monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_BULK_MAX_BYTES", "4000")
    faults_cluster.client.indices.create(index=faults_cluster.name("logs-conflict"), mappings={"properties": {"ml": {"type": "keyword"}}})
    faults_cluster.load([{"@timestamp": "2026-11-17T05:00:00Z", "message": "unwritable", "labels": {"anomaly": False}}], "logs-conflict")
    rejected_before = write_rejections(faults_cluster)
    stop = threading.Event()

    def flood(i: int) -> None:
        client = Elasticsearch(faults_node.url)
        ops = [op for j in range(30) for op in ({"index": {"_index": faults_cluster.name(f"flood-{j % 3}")}}, {"n": i, "j": j})]
        while not stop.is_set():
            client.options(ignore_status=429).bulk(operations=ops)
        client.close()

    # The flood lasts the first seconds of the write-back: long enough for rejections, short enough that the retries
    # (and a bulk spanning more shards than the one-slot pool takes, which is rejected in part on its own) get through.
    threads = [threading.Thread(target=flood, args=(i,), daemon=True) for i in range(3)]
    for t in threads:
        t.start()
    threading.Timer(5.0, stop.set).start()
    try:
        out = score(faults_cluster)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    expected = sum(in_window(d) for d in demo_docs)
    assert out["written"] == expected and out["failed"] == 1
    assert out["failed_reasons"] == {"400 document_parsing_exception": 1}
    assert write_rejections(faults_cluster) > rejected_before  # the node did reject writes
    counts = faults_cluster.update_counts()
    assert len(counts) == expected and set(counts.values()) == {1}  # each rejected item written once in the end


def test_writes_overlap_scoring_and_failures_mid_stream_are_counted(faults_cluster, demo_docs, stand_in, home, monkeypatch):
    """A window's bulk requests go out while the next windows are scored: from the third window on, the classifier
    only answers once the node has acknowledged a bulk request (writing everything at the end never satisfies it).
    Documents that fail for real mid-stream (an index mapping `ml` as a keyword, interleaved in time with the
    others) are each counted under their reason while the batches around them are written; every other document is
    written exactly once."""
    monkeypatch.setenv("NIGHTSHIFT_SCORE_SORT_WINDOW", "20")
    monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_BULK_MAX_DOCS", "5")
    monkeypatch.setenv("NIGHTSHIFT_SCORE_MAX_PENDING", "20")  # a model call per window
    monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_RETRY_BACKOFF", "0.05")
    expected = sum(in_window(d) for d in demo_docs)
    faults_cluster.client.indices.create(index=faults_cluster.name("logs-conflict"), mappings={"properties": {"ml": {"type": "keyword"}}})
    bad = [{"@timestamp": f"2026-11-{17 + i // 4}T{(i % 4) * 6 + 1:02d}:30:00Z", "message": f"unwritable {i}", "labels": {"anomaly": False}}
           for i in range(8)]
    faults_cluster.load(bad, "logs-conflict")
    proxy = FaultProxy(faults_cluster.url).start()
    acknowledged = threading.Event()
    proxy.faults.on_bulk = lambda n: acknowledged.set()

    class WaitsForWrites(StandInClassifier):
        def probabilities(self, messages, batch_size=64):
            if self.calls >= 2:
                assert acknowledged.wait(60), "no bulk request acknowledged while windows were still being scored"
            return super().probabilities(messages, batch_size)

    stand_in["classifier"] = classifier = WaitsForWrites()
    try:
        out = score(faults_cluster, url=proxy.url)
    finally:
        proxy.close()
    assert classifier.calls > 3 and proxy.bulks > 3
    assert out["read"] == out["scored"] == expected + len(bad)
    assert out["written"] == expected and out["failed"] == len(bad)
    assert out["failed_reasons"] == {"400 document_parsing_exception": len(bad)}
    counts = faults_cluster.update_counts()
    assert len(counts) == expected and set(counts.values()) == {1}
    assert not any("ml" in d for d in faults_cluster.docs("logs-conflict").values())


def test_killed_node_is_a_clear_error_then_scoring_resumes_after_restart(faults_node, faults_cluster, demo_docs, stand_in, home, monkeypatch):
    """The node is SIGKILLed after acknowledging the third bulk: scoring stops with one line naming the endpoint;
    the node restarts on its own data, and the rerun resumes from the checkpoint, writing each document once."""
    from pipelines.sources.elastic.connection import ElasticsearchError

    monkeypatch.setenv("NIGHTSHIFT_SCORE_SORT_WINDOW", "20")
    monkeypatch.setenv("NIGHTSHIFT_SCORE_MAX_PENDING", "20")  # a model call per window
    monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_BULK_MAX_BYTES", "3000")
    monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_PAGE_SIZE", "25")
    monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_RETRIES", "2")
    monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_RETRY_BACKOFF", "0.05")
    expected = sum(in_window(d) for d in demo_docs)
    proxy = FaultProxy(faults_cluster.url).start()  # both runs through it: the checkpoint is keyed by the source URI
    proxy.faults.on_bulk = lambda n: faults_node.kill() if n == 3 else None
    try:
        with pytest.raises(ElasticsearchError, match=r"cannot reach Elasticsearch at http://127.0.0.1:\d+ after 3 attempt"):
            score(faults_cluster, url=proxy.url)
        proxy.faults.on_bulk = None
        faults_node.start()  # same folder and port: the acknowledged writes are on disk
        written_before = sum(1 for d in faults_cluster.docs("logs-*").values() if "ml" in d)
        assert 0 < written_before < expected
        resumed = score(faults_cluster, url=proxy.url)
    finally:
        proxy.close()
    assert resumed["resumed_from"] is not None and resumed["written"] == expected - written_before
    counts = faults_cluster.update_counts()
    assert len(counts) == expected and set(counts.values()) == {1}


def test_scoring_a_file_source_into_an_index(cluster, stand_in, home, tmp_path, demo_docs):
    from pipelines.scoring.score_logs import score_logs

    corpus = tmp_path / "logs.ndjson"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in demo_docs[:50]))
    out = score_logs("log-anomaly/1", f"file://{corpus}", f"{cluster.url}/{cluster.name('scored-logs')}", load_settings())
    assert out["written"] == 50 and len(cluster.docs("scored-logs")) == 50


def test_scoring_an_index_into_a_file(loaded, demo_docs, stand_in, home, tmp_path):
    out_file = tmp_path / "scored.ndjson"
    out = score(loaded, sink=f"file://{out_file}")
    lines = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert out["written"] == len(lines) == sum(in_window(d) for d in demo_docs)
    assert all(line["ml"]["model"]["version"] == "1" for line in lines)
    assert not any("ml" in d for d in loaded.docs("logs-*").values())  # the index is left alone


# ---- shadow scoring --------------------------------------------------------------------------------------

def shadow_score(cluster, shadow: str, version="1"):
    from pipelines.scoring.score_logs import score_logs

    return score_logs(f"log-anomaly/{version}", source_uri(cluster), None, load_settings(), start=T0, end=T1, shadow_model=f"log-anomaly/{shadow}")


@pytest.fixture
def shadowed(stand_in):
    """v1 the champion, v2 a rejected candidate scoring 0.8 for 'fail'/'timeout' (else 0.2), v3 a pending one."""
    stand_in["registry"].register("log-anomaly", 1, "promoted", alias="champion")
    stand_in["registry"].register("log-anomaly", 2, "rejected")
    stand_in["registry"].register("log-anomaly", 3, "pending")
    stand_in["versions"]["2"] = StandInClassifier(words=("fail", "timeout"), high=0.8, low=0.2)
    return stand_in


def test_shadow_fields_are_written_in_place_and_a_new_shadow_reads_again(loaded, demo_docs, shadowed, home):
    expected = sum(in_window(d) for d in demo_docs)
    first = shadow_score(loaded, "2")
    assert first["written"] == expected and first["shadow"]["documents"] == expected and first["shadow"]["covers"] == "pass"
    scored = [d for d in loaded.docs("logs-*").values() if "ml" in d]
    assert len(scored) == expected
    for doc in scored:
        text = doc["message"].lower()
        assert doc["ml"]["shadow"] == {"score": 0.8 if ("fail" in text or "timeout" in text) else 0.2,
                                       "is_anomaly": "fail" in text or "timeout" in text, "model": {"name": "log-anomaly", "version": "2"}}
    flags = [(d["ml"]["anomaly"]["is_anomaly"], d["ml"]["shadow"]["is_anomaly"]) for d in scored]
    assert first["shadow"]["agreement"] == round(sum(c == s for c, s in flags) / expected, 6)
    assert shadowed["registry"].metrics["run-log-anomaly-2"]["shadow.documents"] == [(float(expected), 20261117)]

    again = shadow_score(loaded, "2")  # the filter finds champion and shadow on every document: nothing to read
    assert (again["read"], again["skipped"], again["shadow"]["documents"], again["shadow"]["covers"]) == (0, expected, 0, "this run")
    assert len(shadowed["registry"].metrics["run-log-anomaly-2"]["shadow.documents"]) == 1  # nothing compared: nothing logged
    other = shadow_score(loaded, "3")  # another shadow: every document is read and written again
    assert other["written"] == expected and {d["ml"]["shadow"]["model"]["version"] for d in loaded.docs("logs-*").values() if "ml" in d} == {"3"}


def test_shadow_index_mode_writes_a_results_index_and_resumes_with_the_main_sink(loaded, demo_docs, shadowed, home, monkeypatch):
    monkeypatch.setenv("NIGHTSHIFT_SCORE_SHADOW", "index")
    monkeypatch.setenv("NIGHTSHIFT_SCORE_SHADOW_SINK", loaded.name("nightshift-ml-results-shadow"))  # on the source's cluster
    monkeypatch.setenv("NIGHTSHIFT_SCORE_SORT_WINDOW", "20")
    monkeypatch.setenv("NIGHTSHIFT_SCORE_MAX_PENDING", "20")  # a model call per window
    monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_BULK_MAX_BYTES", "3000")
    expected = sum(in_window(d) for d in demo_docs)
    shadowed["classifier"] = StandInClassifier(crash_on_call=5)
    with pytest.raises(RuntimeError, match="killed mid-run"):
        shadow_score(loaded, "2")
    written_before = sum(1 for d in loaded.docs("logs-*").values() if "ml" in d)
    assert 0 < written_before <= len(loaded.docs("nightshift-ml-results-shadow"))  # the shadow index is never behind

    shadowed["classifier"] = StandInClassifier()
    resumed = shadow_score(loaded, "2")
    assert resumed["resumed_from"] is not None and resumed["shadow"]["covers"] == "this run"
    sources = loaded.docs("logs-*")
    assert sum(1 for d in sources.values() if "ml" in d) == expected and all("shadow" not in d.get("ml", {}) for d in sources.values())
    assert {n for (index, _), n in loaded.update_counts().items() if "shadow" not in index} == {1}  # the main sink: each document once
    results = loaded.docs("nightshift-ml-results-shadow")
    assert len(results) == expected and resumed["shadow"]["sink"]["failed"] == 0
    for (_, result_id), doc in results.items():
        ref = (doc["source_document"]["index"], doc["source_document"]["id"])
        assert result_id == f"{ref[0]}:{ref[1]}" and "ml" in sources[ref] and doc["@timestamp"]
        assert set(doc["ml"]) == {"shadow"} and doc["ml"]["shadow"]["model"]["version"] == "2"


# ---- the index template ----------------------------------------------------------------------------------

def test_install_template_maps_ml_fields(cluster, home, capsys):
    from nightshift.cli import main

    cluster.load([{"@timestamp": "2026-11-17T01:00:00Z", "message": "existing", "labels": {"anomaly": False}}], "logs-existing")
    pattern = cluster.name("logs-*")
    assert main(["es", "install-template", "--url", cluster.url, "--index-pattern", pattern, "--update-existing", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["index_patterns"] == [pattern] and cluster.name("logs-existing") in out["updated_indices"]
    cluster.templates += ["nightshift-logs", "nightshift-ml-results", "nightshift-platform-logs"]
    cluster.load([{"@timestamp": "2026-11-18T01:00:00Z", "message": "new", "ml": {"anomaly": {"score": 1, "is_anomaly": True},
                   "rca": {"labels": ["OOM"], "scores": {"OOM": 1}}, "model": {"name": "log-anomaly", "version": "7"}}}], "logs-new")
    for index in ("logs-new", "logs-existing"):
        fields = ["ml.anomaly.score", "ml.anomaly.is_anomaly", "ml.rca.labels", "ml.model.version", "ml.scored_at"]
        mapping = _field_mapping(cluster, index, fields)
        assert {f: mapping[f]["mapping"][f.split(".")[-1]]["type"] for f in fields} == {
            "ml.anomaly.score": "float", "ml.anomaly.is_anomaly": "boolean", "ml.rca.labels": "keyword", "ml.model.version": "keyword",
            "ml.scored_at": "date"}
    assert _field_mapping(cluster, "logs-new", ["ml.rca.scores.OOM"])["ml.rca.scores.OOM"]["mapping"]["OOM"]["type"] == "float"
    # New indices keep their documents in time order on disk; an index's sort is fixed when it is created.
    sorts = {index: cluster.client.indices.get_settings(index=cluster.name(index)).body[cluster.name(index)]["settings"]["index"].get("sort")
             for index in ("logs-new", "logs-existing")}
    assert sorts == {"logs-new": {"field": "@timestamp", "order": "asc"}, "logs-existing": None}


def _field_mapping(cluster, index: str, fields: list[str]) -> dict:
    return cluster.client.indices.get_field_mapping(index=cluster.name(index), fields=fields).body[cluster.name(index)]["mappings"]
