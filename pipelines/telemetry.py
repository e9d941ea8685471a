"""Structured logs and hardware telemetry.

Every log line carries service, version, host and the job it belongs to (`labels.job_id`: the Airflow run, or one
`nightshift` command), so that ELK can join a night's lines across the DAG's tasks. A terminal gets a readable one-line
form; anything else gets one line of Elastic Common Schema JSON (`EcsFormatter`). A night's steps also write their lines
to the night's folder (`night_log`), for `nightshift es ship-logs`. Long steps report their progress (`progress`): a
live bar on a terminal, a log line now and then elsewhere.
"""

from __future__ import annotations

import contextvars
import functools
import json
import logging
import math
import os
import re
import socket
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, TypeVar

import ecs_logging

from pipelines import __version__, storage
from pipelines.storage import StoragePath

T = TypeVar("T")
_run_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("run_id", default=None)
_task: contextvars.ContextVar[str | None] = contextvars.ContextVar("task", default=None)
_night: contextvars.ContextVar[str | None] = contextvars.ContextVar("night", default=None)
_HOST = socket.gethostname()
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}
_DROPPED = {"color_message"}  # uvicorn's ANSI-coloured copy of the message
_TRAINING_TASK = re.compile(r"train(_|$)")  # `nightshift train`, the DAG's train_* tasks
GPU_SAMPLE_EVERY_S = 1.0  # lines logged closer together share one NVML reading


@contextmanager
def log_context(*, run_id: str | None = None, task: str | None = None, night: str | None = None) -> Iterator[None]:
    """Tag every log line inside the block with a run id, a task name and/or a night (logical date, YYYY-MM-DD)."""
    tokens = []
    for var, value in ((_run_id, run_id), (_task, task), (_night, night)):
        if value is not None:
            tokens.append((var, var.set(value)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and k not in _DROPPED and not k.startswith("_")}


def _plain(value: Any) -> Any:
    """`value` as JSON that Elasticsearch accepts: containers as objects and lists, a NaN or infinity as its text,
    anything else JSON cannot hold (a path, a datetime) as `str`."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def job_labels() -> dict[str, str]:
    """The ECS `labels` that tie a line to its job: `job_id` (the Airflow DAG run id, else the run id of `log_context`:
    one `nightshift` command), `dag_id` and `try_number` (Airflow's), `task_id` (Airflow's, else the `log_context`
    task) and `night` (the logical date of the night being run, `night_log`); absent ones are left out."""
    env = os.environ
    labels = {"job_id": env.get("AIRFLOW_CTX_DAG_RUN_ID") or _run_id.get(), "dag_id": env.get("AIRFLOW_CTX_DAG_ID"),
              "task_id": env.get("AIRFLOW_CTX_TASK_ID") or _task.get(), "try_number": env.get("AIRFLOW_CTX_TRY_NUMBER"),
              "night": _night.get()}
    return {k: str(v) for k, v in labels.items() if v}


@functools.lru_cache(maxsize=1)
def host_addresses() -> tuple[str, ...]:
    """This machine's IP addresses (ECS `host.ip`), loopback and link-local ones left out; read once per process."""
    import ipaddress

    import psutil

    found: list[str] = []
    for addrs in psutil.net_if_addrs().values():
        for addr in addrs:
            if addr.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            try:
                ip = ipaddress.ip_address(addr.address.split("%")[0])
            except ValueError:
                continue
            if not (ip.is_loopback or ip.is_link_local) and str(ip) not in found:
                found.append(str(ip))
    return tuple(found)


class EcsFormatter(ecs_logging.StdlibFormatter):
    """One line of ECS JSON per record (Elastic's `ecs-logging`): `@timestamp`, `log.level`, `message`, `log.logger`,
    `log.origin`, `process`, `error.*` for an exception, plus `service.name` / `service.version` /
    `service.environment`, `host.name` / `host.ip`, the job's `labels` (`job_labels`) and, on the lines of a training
    task (task id `train` or `train_*`) on a machine with an NVIDIA GPU, `nightshift.gpu.*` (`gpu_sample`).
    Whatever a caller passes with `extra={...}` goes under `nightshift.extra`, whole, so that a key of its own never
    collides with an ECS field of another type (`error`, `source`, `file`)."""

    def __init__(self, service: str = "nightshift", environment: str = ""):
        super().__init__(exclude_fields=["log.original"])  # the same text as `message`
        self.service, self.environment = service, environment

    def format_to_ecs(self, record: logging.LogRecord) -> dict[str, Any]:
        extras = _extras(record)
        bare = logging.makeLogRecord({k: v for k, v in record.__dict__.items() if k not in extras and k not in _DROPPED})
        doc = super().format_to_ecs(bare)
        doc["service"] = {"name": self.service, "version": __version__, **({"environment": self.environment} if self.environment else {})}
        doc["host"] = {"name": _HOST, **({"ip": list(host_addresses())} if host_addresses() else {})}
        labels = job_labels()
        if labels:
            doc["labels"] = labels
        ours: dict[str, Any] = {}
        if _TRAINING_TASK.match(labels.get("task_id", "")) and (gpu := gpu_sample()):
            ours["gpu"] = gpu
        if extras:
            ours["extra"] = _plain(extras)
        if ours:
            doc["nightshift"] = ours
        return doc


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        task = f"[{_task.get()}] " if _task.get() else ""
        text = f"{time.strftime('%H:%M:%S', time.localtime(record.created))} {record.levelname[0]} {task}{record.getMessage()}"
        return f"{text} {extras}".rstrip()


def configure_logging(service: str = "nightshift", level: str | None = None, json_lines: bool | None = None,
                      environment: str = "") -> None:
    """Send nightshift's logs to stderr: ECS JSON (`EcsFormatter`, with `service` and `environment`) unless stderr is a
    terminal (or NIGHTSHIFT_LOG_FORMAT says)."""
    fmt = os.environ.get("NIGHTSHIFT_LOG_FORMAT", "")
    if json_lines is None:
        json_lines = fmt == "json" or (fmt != "console" and not sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(EcsFormatter(service, environment) if json_lines else ConsoleFormatter())
    root = logging.getLogger("nightshift")
    level = level or os.environ.get("NIGHTSHIFT_LOG_LEVEL", "INFO")
    handler.setLevel(level)  # on the handler too: a night's log file (`night_log`) keeps INFO lines all the same
    root.handlers[:] = [h for h in root.handlers if isinstance(h, _NightFile)] + [handler]
    root.setLevel(level)
    root.propagate = False
    for noisy in ("urllib3", "elastic_transport", "mlflow", "alembic", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def adopt_logger(name: str) -> None:
    """Send another library's logger (and its children) through nightshift's handlers, so that one process prints one
    format: uvicorn's lines under `nightshift serve`. Call after `configure_logging`."""
    logger = logging.getLogger(name)
    logger.handlers[:] = logging.getLogger("nightshift").handlers
    logger.propagate = False


class _NightFile(logging.FileHandler):
    """The handler of `night_log`: ECS JSON lines appended to a local file, flushed line by line."""


class NightLogEcho:
    """The console's view of a night that runs in other processes: `echo()` logs, through `logger`, the lines that
    `night_log` files in `folder` (`TASK.ndjson`, ECS JSON) gained since the last call, each tagged with its task.
    Lines already in the files when it was made are not echoed (a night run again appends to its files), nor is an
    unfinished last line until it ends."""

    def __init__(self, folder: Path, logger: logging.Logger):
        self.folder, self.logger = folder, logger
        self.offsets = {f: f.stat().st_size for f in folder.glob("*.ndjson")} if folder.is_dir() else {}

    def echo(self) -> int:
        """Log the new lines; returns how many."""
        done = 0
        for path in sorted(self.folder.glob("*.ndjson")) if self.folder.is_dir() else []:
            with path.open("rb") as f:
                f.seek(self.offsets.get(path, 0))
                data = f.read()
            complete = data[:data.rfind(b"\n") + 1]
            self.offsets[path] = self.offsets.get(path, 0) + len(complete)
            for raw in complete.splitlines():
                try:
                    doc = json.loads(raw)
                    message, level = str(doc["message"]), logging.getLevelName(str(doc.get("log.level", "info")).upper())
                except (ValueError, KeyError, TypeError):
                    continue  # not a log line of ours: nothing to show
                extras = ((doc.get("nightshift") or {}).get("extra")) or {}
                with log_context(task=(doc.get("labels") or {}).get("task_id") or path.stem):
                    self.logger.log(level if isinstance(level, int) else logging.INFO, message,
                                    extra={k: v for k, v in extras.items() if k not in _STANDARD})
                done += 1
        return done


@contextmanager
def night_log(path: StoragePath, night: str, service: str = "nightshift", environment: str = "") -> Iterator[Path]:
    """Inside the block, nightshift's log lines (INFO and up, whatever the stderr level) are also appended to `path`
    as ECS JSON, one line each, tagged with `labels.night = night`; yields the local file written.

    Locally the lines go straight to `path`, so a killed task keeps what it logged; on an object store (where nothing
    appends) they go to a local copy of the file, uploaded whole when the block ends, failed or not. A block inside another
    writes to the outer one's file only. An exception leaving the block adds an error line (`step failed: ...`) to the
    file. `nightshift es ship-logs` sends such files to Elasticsearch."""
    root = logging.getLogger("nightshift")
    if any(isinstance(h, _NightFile) for h in root.handlers):
        with log_context(night=night):
            yield Path(next(h for h in root.handlers if isinstance(h, _NightFile)).baseFilename)
        return
    remote = storage.is_remote(path)
    if remote:
        fd, name = tempfile.mkstemp(prefix="nightshift-log-", suffix=".ndjson")
        os.close(fd)
        local = Path(name)
        if path.exists():  # an earlier block of the same task: keep its lines, the upload replaces the object
            local.write_bytes(path.read_bytes())
    else:
        local = Path(path)
        local.parent.mkdir(parents=True, exist_ok=True)
    handler = _NightFile(local, mode="a", encoding="utf-8")
    handler.setFormatter(EcsFormatter(service, environment))
    handler.setLevel(logging.INFO)
    before = root.level
    root.addHandler(handler)
    if root.getEffectiveLevel() > logging.INFO:
        root.setLevel(logging.INFO)  # the file keeps INFO lines even where stderr is quieter (its handler filters)
    try:
        with log_context(night=night):
            yield local
    except Exception as exc:
        # the failure in the file only (`log.level:error`, with its type and trace): on stderr the caller's own error
        # line, or Airflow's, speaks for it
        with log_context(night=night):
            handler.handle(root.makeRecord(root.name, logging.ERROR, __file__, 0, "step failed: %s", (exc,), sys.exc_info()))
        raise
    finally:
        root.removeHandler(handler)
        root.setLevel(before)
        handler.close()
        if remote:
            try:
                storage.upload(local, path)
            finally:
                local.unlink(missing_ok=True)


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


def _nvml_devices(indices: list[int] | None = None) -> list[dict[str, Any]]:
    """Index, name, memory used/total (bytes) and utilisation (0..1) of NVIDIA GPUs through NVML (`nvidia-ml-py`): every
    GPU, or those of `indices`; an empty list where there is no NVIDIA driver or GPU."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return []
    try:
        devices = []
        for i in indices if indices is not None else range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            util = pynvml.nvmlDeviceGetUtilizationRates(handle)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            devices.append({"index": i, "name": name.decode() if isinstance(name, bytes) else str(name),
                            "memory": {"used": int(mem.used), "total": int(mem.total)}, "utilization": util.gpu / 100})
        return devices
    except Exception:  # a GPU that stopped answering must not stop the line being logged
        return []
    finally:
        pynvml.nvmlShutdown()


def gpu_telemetry() -> dict[str, float]:
    """GPU utilisation (%) and memory used (MiB) of every GPU, as per-epoch metrics `gpu{i}_util_pct`,
    `gpu{i}_mem_used_mib`; empty where there is no NVIDIA GPU."""
    stats: dict[str, float] = {}
    for gpu in _nvml_devices():
        stats[f"gpu{gpu['index']}_util_pct"] = float(gpu["utilization"] * 100)
        stats[f"gpu{gpu['index']}_mem_used_mib"] = gpu["memory"]["used"] / 2**20
    return stats


def _visible_gpu() -> int:
    """NVML's index of the GPU that torch calls `cuda:0`: the first of CUDA_VISIBLE_DEVICES when it is a number."""
    first = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    return int(first) if first.isdigit() else 0


_gpu_cache: tuple[float, dict[str, Any]] = (-math.inf, {})


def gpu_sample() -> dict[str, Any]:
    """The training GPU right now (ECS-style, for `nightshift.gpu`): `{"index", "name", "memory": {"used", "total"}
    (bytes), "utilization" (0..1)}`; empty without an NVIDIA GPU. Read at most every `GPU_SAMPLE_EVERY_S` seconds."""
    global _gpu_cache
    now = time.monotonic()
    if now - _gpu_cache[0] >= GPU_SAMPLE_EVERY_S:
        devices = _nvml_devices([_visible_gpu()])
        _gpu_cache = (now, devices[0] if devices else {})
    return _gpu_cache[1]
