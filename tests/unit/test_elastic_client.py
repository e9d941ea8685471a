"""The Elasticsearch client's set-up, without a node: bad source URIs, two credentials at once, an Elastic Cloud id, and
an unreachable host (a clear error after the retries, in the library and from the CLI). Against a real node:
tests/integration/test_elastic.py."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from tests.support.cli import cli_error, no_snapshot_left

T0 = datetime(2026, 11, 17, tzinfo=timezone.utc)
T1 = datetime(2026, 11, 19, tzinfo=timezone.utc)
SECRET = "s3cr3t-api-key-value"


def load_settings():
    from pipelines.config import load_settings as load

    return load()


@pytest.mark.slow  # retries, then a `nightshift` process of its own: `make test-fast` leaves it out
def test_unreachable_host_is_a_clear_error_after_retries(home, tmp_path, fast_retries, capsys):
    import socket

    from pipelines.data.ingest import ingest_logs
    from pipelines.sources.elastic.connection import ElasticsearchError

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ElasticsearchError, match=rf"cannot reach Elasticsearch at http://127.0.0.1:{port} after 4 attempt\(s\) \(.*refused") as err:
        ingest_logs(f"http://user:{SECRET}@127.0.0.1:{port}/logs-*", T0, T1, tmp_path / "s", load_settings())
    assert SECRET not in str(err.value) and no_snapshot_left(tmp_path)
    line = cli_error(capsys, "ingest", "logs", "--source", f"http://user:{SECRET}@127.0.0.1:{port}/logs-*", "--start", "2026-11-17",
                     "--end", "2026-11-18", "--out", str(tmp_path / "s"))
    assert f"cannot reach Elasticsearch at http://127.0.0.1:{port}" in line and SECRET not in line


@pytest.mark.parametrize("uri, match", [
    ("http://127.0.0.1:9200/", "names no index"),
    ("elasticsearch://logs-*", "needs an endpoint: set elasticsearch.url"),
])
def test_bad_source_uri_is_a_clear_error(home, tmp_path, uri, match):
    from pipelines.config import ConfigError
    from pipelines.data.ingest import ingest_logs

    with pytest.raises(ConfigError, match=match):
        ingest_logs(uri, T0, T1, tmp_path / "s", load_settings())


def test_two_credentials_at_once_are_refused(home, monkeypatch):
    from pipelines.config import ConfigError
    from pipelines.sources.elastic.reader import ElasticsearchLogSource

    monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_API_KEY", SECRET)
    monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_BEARER_TOKEN", "other-secret")
    with pytest.raises(ConfigError, match="more than one Elasticsearch credential") as err:
        ElasticsearchLogSource("http://127.0.0.1:1/logs-*", load_settings()).conn
    assert SECRET not in str(err.value) and "other-secret" not in str(err.value)


def test_cloud_id_configures_the_client(home, monkeypatch):
    import base64

    from pipelines.sources.elastic.connection import client_options, parse_uri

    monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_CLOUD_ID", "prod:" + base64.b64encode(b"eu-west-1.aws.found.io$abc123$def456").decode())
    monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_API_KEY", SECRET)
    opts, where, auth_source = client_options(parse_uri("elasticsearch://logs-*"), load_settings().elasticsearch)
    assert opts["cloud_id"].startswith("prod:") and "hosts" not in opts and opts["api_key"] == SECRET
    assert where == "Elastic Cloud deployment prod" and SECRET not in auth_source


def test_bulk_batches_in_flight_together_move_the_checkpoint_in_send_order():
    """Two bulk requests in flight: the second may be acknowledged first, yet the checkpoint (`done`) passes each
    batch in send order, only once every batch before it is acknowledged; after a failed batch nothing later is done
    and the error reaches the caller."""
    import dataclasses
    import threading

    from pipelines.config import ConfigError
    from pipelines.sources.elastic.writer import ElasticsearchLogSink, _Sender

    first_may_finish = threading.Event()
    flushed, done = [], []

    def flush(batch):
        if batch == [0]:
            assert first_may_finish.wait(10)
        if batch == [3]:
            raise RuntimeError("bulk write to the node failed")
        flushed.append(batch[0])
        if batch == [1]:
            first_may_finish.set()  # batch 1 is acknowledged while batch 0 is still in flight

    sender = _Sender(flush, lambda batch: done.append(batch[0]), max_bytes=100, workers=2)
    for i in range(3):
        sender.send([i], 1)
    sender.close()
    assert flushed[0] == 1 and sorted(flushed) == [0, 1, 2] and done == [0, 1, 2]

    done.clear()
    sender = _Sender(lambda batch: flush(batch) if batch != [0] else None, lambda batch: done.append(batch[0]), max_bytes=100, workers=2)
    for i in (0, 3):
        sender.send([i], 1)
    with pytest.raises(RuntimeError, match="bulk write to the node failed"):
        sender.close()
    assert done == [0]
    settings = load_settings()
    one_less = dataclasses.replace(settings, elasticsearch=dataclasses.replace(settings.elasticsearch, bulk_concurrency=0))
    with pytest.raises(ConfigError, match=r"setting elasticsearch.bulk_concurrency \(NIGHTSHIFT_ELASTICSEARCH_BULK_CONCURRENCY\): must be at least 1"):
        ElasticsearchLogSink("http://127.0.0.1:9/logs", one_less)
    no_docs = dataclasses.replace(settings, elasticsearch=dataclasses.replace(settings.elasticsearch, bulk_max_docs=0))
    with pytest.raises(ConfigError, match=r"setting elasticsearch.bulk_max_docs \(NIGHTSHIFT_ELASTICSEARCH_BULK_MAX_DOCS\): must be at least 1, got 0"):
        ElasticsearchLogSink("http://127.0.0.1:9/logs", no_docs)
