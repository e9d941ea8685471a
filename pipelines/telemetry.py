"""Structured logs and hardware telemetry.

Every log line carries service, version, run id, task and host, so that ELK can join a night's
lines across the DAG's tasks. A terminal gets a readable one-line form; anything else gets JSON.
Long steps report their progress (`progress`): a live bar on a terminal, a log line now and then elsewhere.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import socket
import sys
import time
from contextlib import contextmanager
from typing import IO, Any, Iterable, Iterator, TypeVar

from pipelines import __version__

T = TypeVar("T")
_run_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("run_id", default=None)
_task: contextvars.ContextVar[str | None] = contextvars.ContextVar("task", default=None)
_HOST = socket.gethostname()
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


@contextmanager
def log_context(*, run_id: str | None = None, task: str | None = None) -> Iterator[None]:
    """Tag every log line inside the block with a run id and/or task name."""
    tokens = []
    if run_id is not None:
        tokens.append((_run_id, _run_id.set(run_id)))
    if task is not None:
        tokens.append((_task, _task.set(task)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str):
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "@timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "log.level": record.levelname.lower(),
            "log.logger": record.name,
            "message": record.getMessage(),
            "service.name": self.service,
            "service.version": __version__,
            "host.name": _HOST,
            "run.id": _run_id.get() or os.environ.get("AIRFLOW_CTX_DAG_RUN_ID"),
            "task": _task.get() or os.environ.get("AIRFLOW_CTX_TASK_ID"),
        }
        line.update(_extras(record))
        if record.exc_info:
            line["error.stack_trace"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        task = f"[{_task.get()}] " if _task.get() else ""
        text = f"{time.strftime('%H:%M:%S', time.localtime(record.created))} {record.levelname[0]} {task}{record.getMessage()}"
        return f"{text} {extras}".rstrip()


def configure_logging(service: str = "nightshift", level: str | None = None, json_lines: bool | None = None) -> None:
    """Send nightshift's logs to stderr: JSON unless stderr is a terminal (or NIGHTSHIFT_LOG_FORMAT says)."""
    fmt = os.environ.get("NIGHTSHIFT_LOG_FORMAT", "")
    if json_lines is None:
        json_lines = fmt == "json" or (fmt != "console" and not sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service) if json_lines else ConsoleFormatter())
    root = logging.getLogger("nightshift")
    root.handlers[:] = [handler]
    root.setLevel(level or os.environ.get("NIGHTSHIFT_LOG_LEVEL", "INFO"))
    root.propagate = False
    for noisy in ("urllib3", "elastic_transport", "mlflow", "alembic", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(f"nightshift.{name}")


class Progress:
    """How far a long step has come (`progress`): `advance(n)` after each n items, `note(**facts)` for what the bar
    shows beside the count (an epoch's loss), `wrap(items)` to count an iterable as it is consumed."""

    def __init__(self, what: str, total: int | None, unit: str, bar: Any, logger: logging.Logger, every: float):
        self.what, self.total, self.unit, self.done = what, total, unit, 0
        self._bar, self._log, self._every = bar, logger, every
        self._started = self._logged = time.monotonic()
        self._facts: dict[str, Any] = {}

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif time.monotonic() - self._logged >= self._every:
            self._line("progress")

    @property
    def long(self) -> bool:
        """Whether the step has run `every` seconds or more (a short one ends without a line of its own)."""
        return time.monotonic() - self._started >= self._every

    def note(self, **facts: Any) -> None:
        self._facts = facts
        if self._bar is not None:
            self._bar.set_postfix(facts, refresh=False)

    def wrap(self, items: Iterable[T]) -> Iterator[T]:
        for item in items:
            yield item
            self.advance()

    def _line(self, message: str) -> None:
        self._logged = now = time.monotonic()
        seconds = now - self._started
        rate = self.done / seconds if seconds > 0 else 0.0
        left = (self.total - self.done) / rate if self.total is not None and rate > 0 else None
        self._log.info(message, extra={"step": self.what, "done": self.done, "total": self.total, "unit": self.unit,
                                       "rate_per_s": round(rate, 1), "seconds": round(seconds, 1),
                                       **({"seconds_left": round(left, 1)} if left is not None else {}), **self._facts})


@contextmanager
def progress(what: str, total: int | None = None, unit: str = "docs", *, stream: IO[str] | None = None,
             every: float = 30.0, logger: logging.Logger | None = None) -> Iterator[Progress]:
    """Progress of a long step (ingest, epochs, scoring) for a person to follow: on a terminal (`stream`, default
    stderr, is a TTY) a tqdm bar with the items done, the rate and, with `total`, the time left; anywhere else (CI,
    Airflow, a pipe) a `progress` log line every `every` seconds; a step that ran that long ends with a `done` line
    (or `stopped` on an error), so logs stay readable.
    `NIGHTSHIFT_PROGRESS=off` turns the bar off (log lines only)."""
    stream = stream if stream is not None else sys.stderr
    bar = None
    if stream.isatty() and os.environ.get("NIGHTSHIFT_PROGRESS", "on") != "off":
        from tqdm import tqdm

        bar = tqdm(total=total, desc=what, unit=f" {unit}", file=stream, dynamic_ncols=True, leave=False)
    meter = Progress(what, total, unit, bar, logger or get_logger("progress"), every)
    try:
        yield meter
    except BaseException:
        if meter.long:  # a short step's error speaks for itself, in its one line
            meter._line("stopped")
        raise
    else:
        if meter.long:
            meter._line("done")
    finally:
        if bar is not None:
            bar.close()


def gpu_telemetry() -> dict[str, float]:
    """GPU utilisation and memory through NVML; empty where there is no NVIDIA GPU."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return {}
    try:
        stats: dict[str, float] = {}
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            util = pynvml.nvmlDeviceGetUtilizationRates(handle)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            stats[f"gpu{i}_util_pct"] = float(util.gpu)
            stats[f"gpu{i}_mem_used_mib"] = mem.used / 2**20
        return stats
    finally:
        pynvml.nvmlShutdown()
