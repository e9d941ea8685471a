"""Log sources and sinks, chosen by URI: `file://…` here, Elasticsearch in `pipelines.sources.elastic`.

A source streams `(where, document)` pairs, `where` naming the record for error messages
(`logs.ndjson:42`). For Elasticsearch `where` is a `pipelines.sources.elastic.writer.DocRef` (a str, `index/id`, that also
carries the index, id and routing the sink writes back to). Nothing here holds a whole window in memory.

A file source is one file, a folder (its visible files, by name) or a glob (`file:///exports/*.ndjson.gz`);
each file is read by its content (`pipelines.data.formats`). The file sink writes NDJSON all or nothing and
resumes after a kill (`FileLogSink`).
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import os
import re
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import BinaryIO, Generator, Iterator, Protocol
from urllib.parse import unquote, urlsplit, urlunsplit

from pipelines import storage
from pipelines.config import LogFields, Settings
from pipelines.data.formats import LOG_READERS, ReadContext, sniff_log_format
from pipelines.data.records import RecordError, doc_timestamp, format_timestamp, json_default
from pipelines.errors import InputError, MissingInput, NightshiftError
from pipelines.sources.elastic.reader import ElasticsearchLogSource
from pipelines.sources.elastic.writer import ElasticsearchLogSink
from pipelines.telemetry import get_logger

log = get_logger("sources")


class SinkBusy(NightshiftError, RuntimeError):
    """Another run holds the file sink; the message names it."""


class LogSource(Protocol):
    uri: str  # for manifests and messages: credentials stripped

    # A generator: readers close it to release what the source holds (an Elasticsearch point-in-time).
    def iter_docs(self, start: datetime | None = None, end: datetime | None = None) -> Generator[tuple[str, dict], None, None]: ...


class LogSink(Protocol):
    uri: str

    def write(self, docs: Iterator[tuple[str, dict]]) -> dict[str, int]: ...


def public_uri(uri: str) -> str:
    """The URI without user, password or query secrets: safe to log and to write in a manifest."""
    parts = urlsplit(uri)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        parts = parts._replace(netloc=netloc)
    return urlunsplit(parts._replace(query=""))


def file_path(uri: str) -> Path:
    """Local path of a `file://` URI (or a plain path)."""
    if uri.startswith("file://"):
        parts = urlsplit(uri)
        return Path(unquote(parts.netloc + parts.path))
    if "://" in uri:
        raise InputError(f"not a file URI: {uri}")
    return Path(uri)


def in_window(doc: dict, fields: LogFields, where: str, start: datetime | None, end: datetime | None,
              epoch_unit: str = "auto") -> bool:
    """Whether the document's timestamp lies in [start, end) (always, without a window); RecordError when it has none."""
    if start is None and end is None:
        return True
    ts = doc_timestamp(doc, fields, where, epoch_unit)
    return (start is None or ts >= start) and (end is None or ts < end)


def expand_files(path: Path) -> list[Path]:
    """The files a path names: itself, a folder's visible files (not recursive), or a glob's matches; by name."""
    if any(c in str(path) for c in "*?["):
        files = [Path(p) for p in glob.glob(str(path))]
    elif path.is_dir():
        files = [p for p in path.iterdir() if not p.name.startswith(".")]
    else:
        files = [path]
    return sorted(p for p in files if p.is_file())


class FileLogSource:
    """Local files, each read by its content or as setting `inputs.format` says (`pipelines.data.formats`)."""

    def __init__(self, uri: str, settings: Settings):
        path = file_path(uri)
        self.fields = settings.fields
        self.ctx = ReadContext.from_settings(settings.fields, settings.inputs)
        self.files = expand_files(path)
        if not self.files:
            raise MissingInput(f"source {uri}: no such file {path}")
        self.uri = f"file://{path.resolve()}"
        forced = settings.inputs.format
        self.formats = {f: forced if forced != "auto" else sniff_log_format(f, self.ctx) for f in self.files}

    def fingerprint(self) -> list[list]:
        """(path, size, mtime in ns) of each file: what a resumed scoring run must find unchanged."""
        return [[str(f), (st := f.stat()).st_size, st.st_mtime_ns] for f in self.files]

    def iter_docs(self, start: datetime | None = None, end: datetime | None = None) -> Generator[tuple[str, dict], None, None]:
        """The documents in [start, end) (all of them without a window), file by file in name order."""
        for path in self.files:
            for where, doc in LOG_READERS[self.formats[path]](path, self.ctx):
                if not isinstance(doc, dict):
                    raise RecordError(where, "(document)", f"must be a JSON object, got {type(doc).__name__}")
                if in_window(doc, self.fields, where, start, end, self.ctx.epoch_unit):
                    yield where, doc

    def span(self) -> tuple[datetime, datetime]:
        """[first, last + 1 ms): the window that holds every document (one extra pass over the files).
        Raises ValueError when there are no documents."""
        first: datetime | None = None
        last: datetime | None = None
        for where, doc in self.iter_docs():
            ts = doc_timestamp(doc, self.fields, where, self.ctx.epoch_unit)
            first, last = (ts, ts) if first is None or last is None else (min(first, ts), max(last, ts))
        if first is None or last is None:
            raise InputError(f"source {self.uri}: holds no documents")
        return first, last + timedelta(milliseconds=1)


class FileLogSink:
    """Documents as NDJSON, all or nothing, resumable after a kill.

    Documents go to `.NAME.partial` beside the destination, renamed into place once complete. Every
    `checkpoint_every` documents the partial is flushed to disk and `.NAME.partial.json` records the
    run's key, the documents and the bytes written so far. A run stopped by an error or a kill leaves
    both; the next run with the same key (`resume`: same source files, model version and window) cuts
    the partial back to the recorded bytes and learns how many source documents to skip. A run with
    another key, or none, starts afresh. Whoever takes the sink removes the temp files that killed runs
    left (`.NAME.<pid>.tmp`). A lock on the partial keeps two runs from writing one sink at once.

    An object-store sink (`s3://…`, under the storage root) is built the same way in a local staging file (resumable on
    this machine) and uploaded once complete, in one PUT: readers see all of it or nothing.
    """

    def __init__(self, uri: str, checkpoint_every: int = 2048):
        self.remote = storage.path(uri) if "://" in uri and not uri.startswith("file://") else None
        if self.remote is not None:
            self.path = Path(tempfile.gettempdir(), "nightshift-sinks", hashlib.sha1(uri.encode()).hexdigest()[:16], self.remote.name)
            self.uri = storage.uri(self.remote)
        else:
            self.path = file_path(uri)
            self.uri = f"file://{self.path.resolve()}"
        if self.path.suffix == ".gz":
            raise InputError(f"sink {uri}: the file sink writes plain NDJSON; name it .ndjson and compress it afterwards")
        self.partial = self.path.with_name(f".{self.path.name}.partial")
        self.state_file = self.path.with_name(f".{self.path.name}.partial.json")
        self.checkpoint_every = max(1, checkpoint_every)
        self._fh: BinaryIO | None = None
        self._key: dict | None = None
        self._resumed_docs = 0
        self._resumed_bytes = 0

    def resume(self, key: dict | None) -> int:
        """Take the sink for one run; returns how many documents an interrupted run with the same `key`
        already wrote (skip that many from the source), 0 when starting afresh. `key` None: never resume.
        Raises RuntimeError when another run holds the sink."""
        self._take()
        assert self._fh is not None  # _take opened it
        saved = self._saved()
        size = os.fstat(self._fh.fileno()).st_size
        if key is not None and saved and saved.get("key") == key and 0 <= saved.get("bytes", -1) <= size:
            self._resumed_docs, self._resumed_bytes = int(saved["docs"]), int(saved["bytes"])
            log.info("resuming the file sink", extra={"sink": self.uri, "documents": self._resumed_docs})
        else:
            self._resumed_docs = self._resumed_bytes = 0
            self.state_file.unlink(missing_ok=True)
        self._fh.truncate(self._resumed_bytes)  # drops what was written after the last checkpoint
        self._key = key
        return self._resumed_docs

    def write(self, docs: Iterator[tuple[str, dict]]) -> dict[str, int]:
        """Append the documents and put the file in place; returns `written` (this run) and `resumed_docs`.
        On any error the written part is checkpointed for the next run (when resumable), then the error goes on."""
        if self._fh is None:
            self.resume(None)
        assert self._fh is not None  # resume opened it
        fh, written, size = self._fh, 0, self._resumed_bytes
        try:
            for _, doc in docs:
                line = (json.dumps(doc, default=json_default) + "\n").encode()
                fh.write(line)
                written, size = written + 1, size + len(line)
                if written % self.checkpoint_every == 0:
                    self._checkpoint(self._resumed_docs + written, size)
        except BaseException:
            self._stop(self._resumed_docs + written, size)
            raise
        fh.flush()
        os.fsync(fh.fileno())
        os.replace(self.partial, self.path)
        if self.remote is not None:
            storage.upload(self.path, self.remote)
            self.path.unlink()
        self.state_file.unlink(missing_ok=True)
        self._release()
        return {"written": written, "resumed_docs": self._resumed_docs}

    # -- internals --
    def _take(self) -> None:
        """Lock the partial (created empty if absent) and clear what killed runs left."""
        if self._fh is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.partial, "a+b")  # append mode: writes land after the truncation point
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise SinkBusy(f"sink {self.uri}: another run is writing it (it holds {self.partial.name}); let it finish") from None
        self._fh = fh
        leftover = re.compile(rf"\.{re.escape(self.path.name)}\..*?(\d+)\.tmp")
        for other in self.path.parent.iterdir():
            m = leftover.fullmatch(other.name)
            if m and not _alive(int(m[1])):
                other.unlink(missing_ok=True)
                log.info("removed a killed run's temp file", extra={"file": str(other)})

    def _saved(self) -> dict | None:
        try:
            saved = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return None
        return saved if isinstance(saved, dict) else None

    def _checkpoint(self, docs: int, size: int) -> None:
        """Make `size` bytes durable, then record them (atomically: a kill leaves the old record or the new)."""
        assert self._fh is not None  # only called while the sink is taken
        self._fh.flush()
        os.fsync(self._fh.fileno())
        if self._key is None:
            return
        tmp = self.state_file.with_name(f"{self.state_file.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"key": self._key, "docs": docs, "bytes": size,
                                   "saved_at": format_timestamp(datetime.now(timezone.utc))}, default=str))
        tmp.replace(self.state_file)

    def _stop(self, docs: int, size: int) -> None:
        """After an error: keep a resumable partial with its checkpoint, remove one that cannot be resumed."""
        try:
            if self._key is not None:
                self._checkpoint(docs, size)
            else:
                self.partial.unlink(missing_ok=True)
        except OSError as exc:  # the original error matters more; the next run starts from the last checkpoint
            log.warning("could not checkpoint the file sink", extra={"sink": self.uri, "reason": str(exc)})
        self._release()

    def _release(self) -> None:
        if self._fh is not None:
            self._fh.close()  # also releases the lock
            self._fh = None


def _alive(pid: int) -> bool:
    """Whether a process with this id runs (a temp file named after it may still be in use)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def open_log_source(uri: str, settings: Settings) -> LogSource:
    """The source behind a URI: a local file, or an Elasticsearch index pattern over http(s)."""
    if uri.startswith(("http://", "https://", "elasticsearch://")):
        return ElasticsearchLogSource(uri, settings)
    return FileLogSource(uri, settings)


def open_log_sink(uri: str, settings: Settings) -> LogSink:
    if uri.startswith(("http://", "https://", "elasticsearch://")):
        return ElasticsearchLogSink(uri, settings)
    return FileLogSink(uri, settings.score.sort_window)
