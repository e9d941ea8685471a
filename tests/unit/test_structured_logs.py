import io
import itertools
import json
import logging

import pytest

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


class _Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_progress_is_a_live_bar_on_a_terminal_and_a_log_line_now_and_then_elsewhere(monkeypatch, caplog):
    from pipelines.telemetry import progress

    terminal = _Terminal()
    with caplog.at_level(logging.INFO, logger="nightshift"), progress("score", total=40, unit="docs", stream=terminal, every=3600) as meter:
        for _ in meter.wrap(range(40)):
            pass
    bar = terminal.getvalue()
    assert meter.done == 40 and "score:" in bar and "/40" in bar and "docs/s" in bar  # tqdm: done/total, the rate, time left
    assert not [r for r in caplog.records if r.name == "nightshift.progress"]  # a short step on a terminal: the bar only

    caplog.clear()
    pipe = io.StringIO()  # CI, Airflow, a pipe
    clock = itertools.count(0.0, 10.0)  # each reading of the clock is 10 s later
    monkeypatch.setattr("pipelines.telemetry.time.monotonic", lambda: next(clock))
    with caplog.at_level(logging.INFO, logger="nightshift"), progress("ingest logs", total=6, stream=pipe, every=30) as meter:
        for _ in range(6):
            meter.advance()
    assert pipe.getvalue() == ""  # no bar characters in a log file
    lines = [(r.getMessage(), r.__dict__) for r in caplog.records if r.name == "nightshift.progress"]
    assert [m for m, _ in lines][-1] == "done" and "progress" in [m for m, _ in lines]
    first = next(extra for m, extra in lines if m == "progress")
    assert first["step"] == "ingest logs" and first["total"] == 6 and first["done"] < 6 and first["rate_per_s"] > 0
    assert "seconds_left" in first

    monkeypatch.setenv("NIGHTSHIFT_PROGRESS", "off")
    quiet = _Terminal()
    with progress("epochs", total=2, unit="epochs", stream=quiet) as meter:
        meter.advance(2)
    assert quiet.getvalue() == ""


def test_a_long_step_that_fails_says_where_it_stopped_and_a_short_one_adds_no_line(caplog):
    from pipelines.telemetry import progress

    with caplog.at_level(logging.INFO, logger="nightshift"), pytest.raises(RuntimeError):
        with progress("score", stream=io.StringIO(), every=0) as meter:  # a long step
            meter.advance(3)
            raise RuntimeError("the sink went away")
    stopped = [r for r in caplog.records if r.name == "nightshift.progress" and r.getMessage() == "stopped"]
    assert len(stopped) == 1 and stopped[0].done == 3
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="nightshift"), pytest.raises(RuntimeError):
        with progress("ingest logs", stream=io.StringIO()):  # a short one: its error is its one line
            raise RuntimeError("bad record")
    assert not [r for r in caplog.records if r.name == "nightshift.progress"]
