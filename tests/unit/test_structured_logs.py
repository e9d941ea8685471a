import io
import ipaddress
import itertools
import json
import logging
import math
import sys
import types
from datetime import datetime, timezone
from pathlib import Path

import pytest

from pipelines import __version__, telemetry
from pipelines.telemetry import EcsFormatter, configure_logging, get_logger, log_context, night_log


def test_json_lines_are_ecs_with_service_host_and_the_job_and_keep_every_extra_under_nightshift(monkeypatch):
    for name in ("AIRFLOW_CTX_DAG_RUN_ID", "AIRFLOW_CTX_TASK_ID", "AIRFLOW_CTX_DAG_ID", "AIRFLOW_CTX_TRY_NUMBER"):
        monkeypatch.delenv(name, raising=False)
    record = logging.LogRecord("nightshift.x", logging.INFO, __file__, 1, "hello %s", ("world",), None)
    record.rows = 3
    record.error = "a string where ECS has an object"  # a caller's key that is an ECS field set of another shape
    record.window = {"start": datetime(2026, 11, 22, tzinfo=timezone.utc), "loss": float("nan"), "file": Path("/tmp/a")}
    with log_context(run_id="run-1", task="ingest"):
        line = json.loads(EcsFormatter("nightshift", "staging").format(record))
    assert line["@timestamp"].endswith("Z") and line["log.level"] == "info" and line["message"] == "hello world"
    assert line["ecs.version"] and line["log"]["logger"] == "nightshift.x"
    assert line["service"] == {"name": "nightshift", "version": __version__, "environment": "staging"}
    assert line["host"]["name"] and all(ipaddress.ip_address(ip) for ip in line["host"].get("ip", []))
    assert line["labels"] == {"job_id": "run-1", "task_id": "ingest"}
    assert line["nightshift"]["extra"] == {"rows": 3, "error": "a string where ECS has an object",
                                           "window": {"start": "2026-11-22 00:00:00+00:00", "loss": "nan", "file": "/tmp/a"}}
    assert "error" not in {k for k in line if k != "nightshift"} and "gpu" not in line["nightshift"]  # not a training task
    assert get_logger("x").name == "nightshift.x"


def test_an_airflow_task_line_names_the_dag_run_task_and_try_and_an_exception_its_type_and_trace(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CTX_DAG_ID", "nightly_retrain")
    monkeypatch.setenv("AIRFLOW_CTX_DAG_RUN_ID", "scheduled__2026-11-22T02:00:00+00:00")
    monkeypatch.setenv("AIRFLOW_CTX_TASK_ID", "score_fresh_window")
    monkeypatch.setenv("AIRFLOW_CTX_TRY_NUMBER", "2")
    try:
        raise KeyError("ml.anomaly.score")
    except KeyError:
        record = logging.LogRecord("nightshift.flow", logging.ERROR, __file__, 1, "scoring failed", None, sys.exc_info())
    with log_context(run_id="ignored-under-airflow", night="2026-11-22"):
        line = json.loads(EcsFormatter().format(record))
    assert line["labels"] == {"job_id": "scheduled__2026-11-22T02:00:00+00:00", "dag_id": "nightly_retrain",
                              "task_id": "score_fresh_window", "try_number": "2", "night": "2026-11-22"}
    assert line["log.level"] == "error" and line["error"]["type"] == "KeyError" and "ml.anomaly.score" in line["error"]["message"]
    assert "test_structured_logs.py" in line["error"]["stack_trace"]


class _FakeNvml:
    """pynvml's calls that `gpu_sample` makes, answering for two GPUs."""

    def __init__(self):
        self.reads = 0

    def nvmlInit(self):
        pass

    def nvmlShutdown(self):
        pass

    def nvmlDeviceGetCount(self):
        return 2

    def nvmlDeviceGetHandleByIndex(self, i):
        if i > 1:
            raise RuntimeError("NVML_ERROR_INVALID_ARGUMENT")
        self.reads += 1
        return i

    def nvmlDeviceGetName(self, handle):
        return f"NVIDIA H100 #{handle}"

    def nvmlDeviceGetUtilizationRates(self, handle):
        return types.SimpleNamespace(gpu=87 if handle == 1 else 5, memory=40)

    def nvmlDeviceGetMemoryInfo(self, handle):
        return types.SimpleNamespace(used=(30 if handle == 1 else 1) * 2**30, total=80 * 2**30, free=0)


def _train_line() -> dict:
    record = logging.LogRecord("nightshift.training.loop", logging.INFO, __file__, 1, "epoch done", None, None)
    record.epoch = 1
    with log_context(run_id="r", task="train_log_anomaly"):
        return json.loads(EcsFormatter().format(record))


def test_training_lines_carry_the_visible_gpu_read_through_nvml(monkeypatch):
    fake = _FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setattr(telemetry, "_gpu_cache", (-math.inf, {}))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")  # torch's cuda:0 is NVML's GPU 1
    monkeypatch.delenv("AIRFLOW_CTX_TASK_ID", raising=False)
    line = _train_line()
    assert line["nightshift"]["gpu"] == {"index": 1, "name": "NVIDIA H100 #1", "memory": {"used": 30 * 2**30, "total": 80 * 2**30},
                                         "utilization": 0.87}
    assert line["nightshift"]["extra"] == {"epoch": 1}
    _train_line()
    assert fake.reads == 1  # lines within a second share one reading
    assert telemetry.gpu_telemetry() == {"gpu0_util_pct": 5.0, "gpu0_mem_used_mib": 1024.0, "gpu1_util_pct": 87.0,
                                         "gpu1_mem_used_mib": 30 * 1024.0}


def test_without_an_nvidia_gpu_lines_carry_no_gpu_fields(monkeypatch):
    class NoDriver:
        def nvmlInit(self):
            raise RuntimeError("NVML Shared Library Not Found")

    monkeypatch.setitem(sys.modules, "pynvml", NoDriver())
    monkeypatch.setattr(telemetry, "_gpu_cache", (-math.inf, {}))
    monkeypatch.delenv("AIRFLOW_CTX_TASK_ID", raising=False)
    line = _train_line()
    assert "gpu" not in line["nightshift"] and telemetry.gpu_telemetry() == {}


@pytest.fixture
def nightshift_logger():
    """The `nightshift` logger as it was, back after the test (`configure_logging` replaces its handlers)."""
    root = logging.getLogger("nightshift")
    saved = root.handlers[:], root.level, root.propagate
    yield root
    root.handlers[:], root.level, root.propagate = saved


def test_a_night_log_file_gets_info_lines_as_ecs_json_even_when_stderr_shows_warnings_only(tmp_path, monkeypatch, capsys,
                                                                                           nightshift_logger):
    monkeypatch.delenv("AIRFLOW_CTX_TASK_ID", raising=False)
    configure_logging(level="WARNING", json_lines=False)
    log = get_logger("flow")
    path = tmp_path / "runs" / "2026-11-22" / "logs" / "score_fresh_window.ndjson"
    with log_context(run_id="run-7", task="score_fresh_window"), night_log(path, "2026-11-22", "nightshift", "prod"):
        log.info("scored", extra={"scored": 12})
        with night_log(tmp_path / "other.ndjson", "2026-11-22"):  # a step inside a step: the outer file only
            log.warning("slow bulk request")
    log.info("after the block")
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [(x["message"], x["log.level"]) for x in lines] == [("scored", "info"), ("slow bulk request", "warning")]
    assert lines[0]["labels"] == {"job_id": "run-7", "task_id": "score_fresh_window", "night": "2026-11-22"}
    assert lines[0]["service"]["environment"] == "prod" and lines[0]["nightshift"]["extra"] == {"scored": 12}
    assert not (tmp_path / "other.ndjson").exists()
    err = capsys.readouterr().err
    assert "slow bulk request" in err and "scored" not in err and "after the block" not in err
    assert nightshift_logger.level == logging.WARNING


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


def test_a_night_run_elsewhere_is_echoed_line_by_line_with_its_task_and_nothing_twice(tmp_path):
    """What `nightshift retrain` shows a terminal while Airflow runs the night: the lines the tasks add to their log
    files, each once, with its task; not what the files held before, nor a line still being written."""
    from pipelines.telemetry import ConsoleFormatter, NightLogEcho

    folder = tmp_path / "logs"
    folder.mkdir()
    (folder / "train_log_anomaly.ndjson").write_text(json.dumps({"message": "an earlier night", "log.level": "info"}) + "\n")
    shown = io.StringIO()
    handler = logging.StreamHandler(shown)
    handler.setFormatter(ConsoleFormatter())
    logger = logging.getLogger("nightshift.echo-test")
    logger.handlers[:], logger.propagate = [handler], False
    logger.setLevel(logging.INFO)
    echo = NightLogEcho(folder, logger)

    def append(task: str, text: str) -> None:
        with (folder / f"{task}.ndjson").open("a") as f:
            f.write(text)

    append("train_log_anomaly", json.dumps({"message": "epoch done", "log.level": "info", "labels": {"task_id": "train_log_anomaly"},
                                            "nightshift": {"extra": {"epoch": 2, "f1": 0.91}}}) + "\n")
    append("score_fresh_window", '{"message": "scor')  # half written
    assert echo.echo() == 1
    append("score_fresh_window", 'ed", "log.level": "warning"}\n')
    assert echo.echo() == 1 and echo.echo() == 0
    lines = shown.getvalue().splitlines()
    assert len(lines) == 2 and "an earlier night" not in shown.getvalue()
    assert lines[0].endswith("I [train_log_anomaly] epoch done epoch=2 f1=0.91")
    assert lines[1].endswith("W [score_fresh_window] scored")
