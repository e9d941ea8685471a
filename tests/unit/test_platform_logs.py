"""nightshift's own log lines for Elasticsearch without a node: which files a night names, the checks a file passes
before anything is sent, and the order and idempotence of the lifecycle policy and template install (the real node
is in tests/integration/test_platform_logs.py)."""

from __future__ import annotations

import json

import pytest

from pipelines.config import ConfigError, load_settings
from pipelines.data.records import RecordError
from pipelines.errors import InputError, MissingInput
from pipelines.platform_logs import log_files, night_logs_dir, read_lines
from pipelines.sources.elastic.connection import ElasticsearchError
from pipelines.sources.elastic.templates import install_platform_logs

LINE = {"@timestamp": "2026-11-22T02:00:00.000Z", "log.level": "info", "message": "scored"}


def test_a_night_names_its_task_log_files_and_a_missing_one_says_what_to_run(home, tmp_path):
    settings = load_settings()
    with pytest.raises(MissingInput, match="no night has run"):
        log_files(None, settings)
    folder = night_logs_dir(settings, "2026-11-22")
    folder.mkdir(parents=True)
    (folder.parent / "summary.json").write_text("{}")
    for task in ("score_fresh_window", "ingest_fresh_window"):
        (folder / f"{task}.ndjson").write_text(json.dumps(LINE) + "\n")
    assert [p.name for p in log_files(None, settings)] == ["ingest_fresh_window.ndjson", "score_fresh_window.ndjson"]
    assert log_files("2026-11-22", settings) == log_files(str(folder), settings)
    assert log_files(str(folder / "score_fresh_window.ndjson"), settings) == [folder / "score_fresh_window.ndjson"]
    with pytest.raises(InputError, match="night 2026-11-23: no log files"):
        log_files("2026-11-23", settings)
    with pytest.raises(InputError, match="no such log file or folder"):
        log_files(str(tmp_path / "nope.ndjson"), settings)


def test_every_line_is_checked_before_anything_is_sent_and_a_bad_one_named_by_file_and_line(tmp_path):
    good = tmp_path / "a.ndjson"
    good.write_text(json.dumps(LINE) + "\n\n" + json.dumps({**LINE, "message": "other"}) + "\n")
    lines = read_lines([good])
    assert [line.where for line in lines] == [f"{good}:1", f"{good}:3"]
    assert lines[0].doc_id != lines[1].doc_id and read_lines([good])[0].doc_id == lines[0].doc_id  # the same bytes, the same id
    cut = tmp_path / "b.ndjson"
    cut.write_text(json.dumps(LINE) + "\n" + json.dumps(LINE)[:30])  # a task killed mid-line
    with pytest.raises(RecordError, match=rf"^{cut}:2: field '\(line\)' is not valid JSON: "):
        read_lines([good, cut])
    listed = tmp_path / "d.ndjson"
    listed.write_text("[1, 2]\n")
    with pytest.raises(RecordError, match=rf"^{listed}:1: field '\(document\)' must be a JSON object, got list$"):
        read_lines([listed])
    untimed = tmp_path / "c.ndjson"
    untimed.write_text(json.dumps({"message": "x"}) + "\n")
    with pytest.raises(RecordError, match=rf"^{untimed}:1: field '@timestamp' is missing"):
        read_lines([untimed])


def test_log_files_on_the_object_store_read_like_local_ones_gzip_included():
    import gzip

    from pipelines import storage

    plain, packed = storage.path("memory://night/logs/a.ndjson"), storage.path("memory://night/logs/b.ndjson.gz")
    plain.parent.mkdir(parents=True, exist_ok=True)
    plain.write_bytes((json.dumps(LINE) + "\n").encode())
    packed.write_bytes(gzip.compress((json.dumps(LINE) + "\n" + "{").encode()))
    lines = read_lines([plain])
    assert [line.where for line in lines] == ["memory://night/logs/a.ndjson:1"] and lines[0].doc == LINE
    with pytest.raises(RecordError, match=r"^memory://night/logs/b\.ndjson\.gz:2: field '\(line\)' is not valid JSON: "):
        read_lines([plain, packed])


class _Conn:
    """What `install_platform_logs` asks of a `Connection`: `call(what, fn)` on a client that records its requests."""

    where = "http://127.0.0.1:9200"

    def __init__(self, ilm: bool = True):
        self.requests: list[tuple[str, str, dict]] = []
        self.ilm_available = ilm
        conn = self

        class Client:
            class ilm:  # noqa: N801 - the client's namespace
                @staticmethod
                def put_lifecycle(name, policy):
                    if not conn.ilm_available:
                        raise ElasticsearchError(f"install lifecycle policy {name}: Elasticsearch at {conn.where} answered 400 : "
                                                 f"no handler found for uri [/_ilm/policy/{name}] and method [PUT]")
                    conn.requests.append(("ilm", name, policy))

            class indices:  # noqa: N801
                @staticmethod
                def put_index_template(name, body):
                    conn.requests.append(("template", name, body))

        self.client = Client

    def call(self, what, fn):
        return fn(self.client)


def test_the_lifecycle_policy_is_installed_before_the_template_that_names_it_and_again_the_same(home, monkeypatch):
    monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_PLATFORM_LOGS", "nightshift-platform-logs-staging")
    conn = _Conn()
    out = install_platform_logs(conn, load_settings())  # type: ignore[arg-type]
    assert out == {"data_stream": "nightshift-platform-logs-staging", "index_template": "nightshift-platform-logs-staging",
                   "ilm_policy": "nightshift-platform-logs-staging"}
    (kind1, name1, policy), (kind2, name2, template) = conn.requests
    assert (kind1, kind2) == ("ilm", "template") and name1 == name2 == "nightshift-platform-logs-staging"
    assert policy["phases"]["hot"]["actions"]["rollover"] and "delete" in policy["phases"]
    assert template["data_stream"] == {} and template["index_patterns"] == ["nightshift-platform-logs-staging*"]
    assert template["template"]["settings"]["index.lifecycle.name"] == "nightshift-platform-logs-staging"
    props = template["template"]["mappings"]["properties"]
    assert props["host"]["properties"]["ip"]["type"] == "ip" and props["log"]["properties"]["level"]["type"] == "keyword"
    assert props["labels"]["properties"]["job_id"]["type"] == "keyword" and props["@timestamp"]["type"] == "date"
    assert props["nightshift"]["properties"]["gpu"]["properties"]["memory"]["properties"]["used"]["type"] == "long"
    install_platform_logs(conn, load_settings())  # type: ignore[arg-type]
    assert conn.requests[2:] == conn.requests[:2]  # the same two requests: nothing else changes


def test_a_cluster_without_ilm_gets_the_template_without_a_lifecycle(home):
    conn = _Conn(ilm=False)
    out = install_platform_logs(conn, load_settings())  # type: ignore[arg-type]
    assert out["ilm_policy"] is None and [r[0] for r in conn.requests] == ["template"]
    assert "index.lifecycle.name" not in conn.requests[0][2]["template"]["settings"]


def test_a_data_stream_name_elasticsearch_refuses_names_the_setting(home, monkeypatch):
    monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_PLATFORM_LOGS", "Nightshift Logs")
    with pytest.raises(ConfigError, match=r"setting elasticsearch.platform_logs \(NIGHTSHIFT_ELASTICSEARCH_PLATFORM_LOGS\)"):
        install_platform_logs(_Conn(), load_settings())  # type: ignore[arg-type]


def test_an_in_process_night_writes_one_log_file_per_task_and_a_failed_task_ends_with_its_error(home, monkeypatch):
    import pipelines.flow as flow
    from pipelines.telemetry import get_logger

    said = get_logger("flow")

    def step(value):
        def run(*args):
            said.info("step ran", extra={"value": value})
            return value
        return run

    for name, value in {"setup_night": {"logical_date": "2026-11-22"}, "ingest_window": "snap", "ingest_metric_window": "metric-snap",
                        "validate_window": {"status": "passed"}, "train_candidate": {"decision": "pending"},
                        "gate_candidate": {"decision": "kept"}, "publish_forecasts": {}, "write_summary": {}}.items():
        monkeypatch.setattr(flow, name, step(value))
    monkeypatch.setattr(flow, "stop_if_invalid", lambda *args: None)

    def score_fresh(*args):
        raise RuntimeError("the node went away")

    monkeypatch.setattr(flow, "score_fresh", score_fresh)
    with pytest.raises(RuntimeError):
        flow.run_in_process(load_settings(), "2026-11-22", None, None)
    folder = night_logs_dir(load_settings(), "2026-11-22")
    assert {p.stem for p in folder.iterdir()} >= {"plan", "ingest_training_window", "train_log_anomaly", "score_fresh_window"}
    train = [json.loads(x) for x in (folder / "train_log_anomaly.ndjson").read_text().splitlines()]
    assert [(x["message"], x["labels"]["task_id"], x["labels"]["night"]) for x in train] == [
        ("step ran", "train_log_anomaly", "2026-11-22")]
    failed = [json.loads(x) for x in (folder / "score_fresh_window.ndjson").read_text().splitlines()]
    assert [(x["log.level"], x["message"], x["error"]["type"]) for x in failed] == [
        ("error", "step failed: the node went away", "RuntimeError")]
