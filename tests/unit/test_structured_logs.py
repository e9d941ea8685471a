import json
import logging

from pipelines.telemetry import JsonFormatter, get_logger, log_context


def test_json_lines_carry_service_version_run_task_host():
    record = logging.LogRecord("nightshift.x", logging.INFO, __file__, 1, "hello %s", ("world",), None)
    record.rows = 3
    with log_context(run_id="run-1", task="ingest"):
        line = json.loads(JsonFormatter("nightshift").format(record))
    assert line["message"] == "hello world"
    assert line["service.name"] == "nightshift" and line["service.version"]
    assert line["run.id"] == "run-1" and line["task"] == "ingest" and line["host.name"]
    assert line["rows"] == 3
    assert get_logger("x").name == "nightshift.x"
