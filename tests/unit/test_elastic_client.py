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
    from pipelines.sources.elastic import ElasticsearchError

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
    from pipelines.sources.elastic import ElasticsearchLogSource

    monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_API_KEY", SECRET)
    monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_BEARER_TOKEN", "other-secret")
    with pytest.raises(ConfigError, match="more than one Elasticsearch credential") as err:
        ElasticsearchLogSource("http://127.0.0.1:1/logs-*", load_settings()).conn
    assert SECRET not in str(err.value) and "other-secret" not in str(err.value)


def test_cloud_id_configures_the_client(home, monkeypatch):
    import base64

    from pipelines.sources.elastic import client_options, parse_uri

    monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_CLOUD_ID", "prod:" + base64.b64encode(b"eu-west-1.aws.found.io$abc123$def456").decode())
    monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_API_KEY", SECRET)
    opts, where, auth_source = client_options(parse_uri("elasticsearch://logs-*"), load_settings().elasticsearch)
    assert opts["cloud_id"].startswith("prod:") and "hosts" not in opts and opts["api_key"] == SECRET
    assert where == "Elastic Cloud deployment prod" and SECRET not in auth_source
