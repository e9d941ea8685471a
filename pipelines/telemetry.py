"""Structured logs and hardware telemetry.

Every log line carries service, version, run id, task and host, so that ELK can join a night's
lines across the DAG's tasks. A terminal gets a readable one-line form; anything else gets JSON.
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
from typing import Any, Iterator

from pipelines import __version__

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
