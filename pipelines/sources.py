"""Log sources and sinks, chosen by URI: `file://…ndjson|parquet` here, Elasticsearch in `pipelines.elastic`.

A source streams `(where, document)` pairs, `where` naming the record for error messages
(`logs.ndjson:42`). For Elasticsearch `where` is a `pipelines.elastic.DocRef` (a str, `index/id`, that also
carries the index, id and routing the sink writes back to). Nothing here holds a whole window in memory.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Iterator, Protocol
from urllib.parse import unquote, urlsplit, urlunsplit

from pipelines.config import LogFields, Settings
from pipelines.records import RecordError, get_field, parse_timestamp


class LogSource(Protocol):
    uri: str  # for manifests and messages: credentials stripped

    def iter_docs(self, start: datetime | None = None, end: datetime | None = None) -> Iterator[tuple[str, dict]]: ...


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
        raise ValueError(f"not a file URI: {uri}")
    return Path(uri)


def in_window(doc: dict, fields: LogFields, where: str, start: datetime | None, end: datetime | None) -> bool:
    if start is None and end is None:
        return True
    raw = get_field(doc, fields.timestamp)
    if raw is None:
        raise RecordError(where, fields.timestamp, "is missing")
    try:
        ts = parse_timestamp(raw)
    except ValueError as exc:
        raise RecordError(where, fields.timestamp, f"is not an ISO-8601 timestamp ({exc})") from None
    return (start is None or ts >= start) and (end is None or ts < end)


class FileLogSource:
    """NDJSON (one document per line) or Parquet (one document per row)."""

    def __init__(self, uri: str, fields: LogFields):
        self.path = file_path(uri)
        self.uri = f"file://{self.path.resolve()}"
        self.fields = fields
        if self.path.suffix not in (".ndjson", ".jsonl", ".json", ".parquet"):
            raise ValueError(f"source {uri}: expected a .ndjson or .parquet file")
        if not self.path.is_file():
            raise FileNotFoundError(f"source {uri}: no such file {self.path}")

    def iter_docs(self, start: datetime | None = None, end: datetime | None = None) -> Iterator[tuple[str, dict]]:
        docs = self._parquet() if self.path.suffix == ".parquet" else self._ndjson()
        for where, doc in docs:
            if not isinstance(doc, dict):
                raise RecordError(where, "(document)", f"must be a JSON object, got {type(doc).__name__}")
            if in_window(doc, self.fields, where, start, end):
                yield where, doc

    def _ndjson(self) -> Iterator[tuple[str, dict]]:
        with self.path.open() as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                where = f"{self.path.name}:{number}"
                try:
                    yield where, json.loads(line)
                except json.JSONDecodeError as exc:
                    raise RecordError(where, "(line)", f"is not valid JSON: {exc.msg} at column {exc.colno}") from None

    def _parquet(self) -> Iterator[tuple[str, dict]]:
        import pyarrow.parquet as pq

        row = 0
        for batch in pq.ParquetFile(self.path).iter_batches(batch_size=4096):
            for doc in batch.to_pylist():
                row += 1
                yield f"{self.path.name}:row {row}", doc


class FileLogSink:
    """Scored documents as NDJSON, written to a temporary file and renamed: all or nothing."""

    def __init__(self, uri: str):
        self.path = file_path(uri)
        self.uri = f"file://{self.path.resolve()}"

    def write(self, docs: Iterator[tuple[str, dict]]) -> dict[str, int]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        written = 0
        try:
            with tmp.open("w") as fh:
                for _, doc in docs:
                    fh.write(json.dumps(doc, default=str) + "\n")
                    written += 1
            tmp.replace(self.path)
        finally:
            tmp.unlink(missing_ok=True)
        return {"written": written}


def open_log_source(uri: str, settings: Settings) -> LogSource:
    """The source behind a URI: a local file, or an Elasticsearch index pattern over http(s)."""
    if uri.startswith(("http://", "https://", "elasticsearch://")):
        from pipelines.elastic import ElasticsearchLogSource

        return ElasticsearchLogSource(uri, settings)
    return FileLogSource(uri, settings.fields)


def open_log_sink(uri: str, settings: Settings) -> LogSink:
    if uri.startswith(("http://", "https://", "elasticsearch://")):
        from pipelines.elastic import ElasticsearchLogSink

        return ElasticsearchLogSink(uri, settings)
    return FileLogSink(uri)
