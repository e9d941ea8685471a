"""Immutable snapshots: a folder of Parquet data plus `manifest.json`.

A snapshot lives under the storage root (`pipelines.storage`: a local folder or an object store). On the local disk
it is written into a hidden temporary folder beside its destination and renamed into place only once complete. An
object store has no rename: the Parquet data is written under a temporary prefix, copied beside the destination's
manifest, and the manifest is written LAST, as the commit marker: a prefix without `manifest.json` is no snapshot
(`load_snapshot` refuses it, a retry overwrites it). Either way a reader never sees a half-written one. The content hash covers the
source, the window and every row, so the same source, window and data always give the same hash;
re-ingesting them is a no-op, and different data for an existing snapshot is refused.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import storage
from pipelines.data.records import batched, format_timestamp, parse_timestamp
from pipelines.errors import NightshiftError
from pipelines.storage import StoragePath

LOG_SCHEMA = pa.schema([
    ("timestamp", pa.timestamp("ms", tz="UTC")),
    ("message", pa.string()),
    ("service", pa.string()),
    ("level", pa.string()),
    ("host", pa.string()),
    ("anomaly", pa.bool_()),
    ("root_cause", pa.list_(pa.string())),
    ("job_id", pa.string()),
])
DATA_FILE = "data.parquet"
MANIFEST = "manifest.json"


class SnapshotError(NightshiftError, RuntimeError):
    pass


Window = tuple[datetime | None, datetime | None]


@dataclass(frozen=True)
class Split:
    """A part of a snapshot that a run used on its own: the validation split a candidate was chosen on.

    `name`: what the part is (`validation`); `digest`: `rows_digest` of its rows, in order; `rows`: how many
    examples it holds (log lines, failed jobs or forecast windows).
    """

    name: str
    digest: str
    rows: int


def rows_digest(frame: pd.DataFrame) -> str:
    """sha256 (hex) of a frame's rows in order, from pandas' per-row hash of its values: the same rows give the same
    digest on any machine."""
    return hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes()).hexdigest()


def window_tag(window: Window) -> str:
    """A window as MLflow tags and JSON records hold it: `START/END`, ISO-8601 UTC (the `data.window` tag)."""
    return "/".join(_iso(t) or "" for t in window)


def parse_window_tag(text: str | None) -> tuple[datetime, datetime] | None:
    """The closed window of a `window_tag` string; None when it is missing, open or unreadable (a tag is free text)."""
    try:
        start, end = (parse_timestamp(t) for t in (text or "").split("/"))
    except ValueError:
        return None
    return start, end


@dataclass(frozen=True)
class Snapshot:
    path: StoragePath  # a local Path, or a UPath on the object store (`storage.uri(path)` is its lineage string)
    manifest: dict[str, Any]

    @property
    def content_hash(self) -> str:
        return self.manifest["content_hash"]

    @property
    def window(self) -> Window:
        """[start, end) in UTC of the source window the snapshot holds (None: open on that side)."""
        w = self.manifest["window"]
        return (parse_timestamp(w["start"]) if w["start"] else None, parse_timestamp(w["end"]) if w["end"] else None)

    def read(self, columns: list[str] | None = None):
        """The whole snapshot as a pandas DataFrame."""
        return self.table(columns).to_pandas()

    def table(self, columns: list[str] | None = None) -> pa.Table:
        """The whole snapshot as an Arrow table."""
        where, fs = storage.arrow(self.path / DATA_FILE)
        return pq.read_table(where, columns=columns, filesystem=fs)

    def parquet(self) -> pq.ParquetFile:
        """The data file, opened for its schema or a streamed read (close it, or read it whole, when done)."""
        where, fs = storage.arrow(self.path / DATA_FILE)
        return pq.ParquetFile(where, filesystem=fs)

    def batches(self, batch_size: int = 8192, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        """Stream the snapshot in record batches (bounded memory)."""
        with self.parquet() as data:
            yield from data.iter_batches(batch_size=batch_size, columns=columns)


def _iso(ts: datetime | None) -> str | None:
    return format_timestamp(ts) if ts else None


def load_snapshot(path: str | StoragePath) -> Snapshot:
    """Open a snapshot (a local folder, a `file://` or `s3://…` URI), checking that it is complete.

    Raises `SnapshotError` when it has no manifest (absent, or a write that never committed)."""
    path = storage.path(path)
    manifest_file = path / MANIFEST
    if not manifest_file.is_file():
        raise SnapshotError(f"{storage.uri(path)} is not a snapshot: no {MANIFEST}")
    return Snapshot(path, json.loads(manifest_file.read_text()))


def write_snapshot(
    out: str | StoragePath,
    rows: Iterable[dict[str, Any]],
    *,
    dataset: str,
    source: str,
    query: dict[str, Any] | str | None,
    start: datetime | None,
    end: datetime | None,
    schema: pa.Schema = LOG_SCHEMA,
    chunk_rows: int = 20_000,
    extra: dict[str, Any] | None = None,
) -> Snapshot:
    """Stream rows into an immutable snapshot at `out` (a local folder or an `s3://…` URI), all or nothing.

    Raises `SnapshotError` on an empty window, or when `out` already holds different data.
    """
    out = storage.path(out)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    storage.makedirs(tmp)
    digest = hashlib.sha256()
    digest.update(json.dumps({"source": source, "query": query, "start": _iso(start), "end": _iso(end)}, sort_keys=True).encode())
    count = 0
    try:
        where, fs = storage.arrow(tmp / DATA_FILE)
        with pq.ParquetWriter(where, schema, compression="zstd", filesystem=fs) as writer:
            for chunk in batched(rows, chunk_rows):
                table = pa.Table.from_pylist(chunk, schema=schema)
                for row in chunk:
                    digest.update(json.dumps(row, sort_keys=True, default=str).encode())
                writer.write_table(table)
                count += len(chunk)
        if count == 0:
            raise SnapshotError(f"empty window: source {source} has no records in [{_iso(start)}, {_iso(end)})")
        manifest = {
            "dataset": dataset,
            "source": source,
            "query": query,
            "window": {"start": _iso(start), "end": _iso(end)},
            "row_count": count,
            "schema": {f.name: str(f.type) for f in schema},
            "content_hash": f"sha256:{digest.hexdigest()}",
            "created_at": _iso(datetime.now(timezone.utc)),
            "files": [DATA_FILE],
            **(extra or {}),
        }
        if (out / MANIFEST).exists() or (not storage.is_remote(out) and out.exists()):
            existing = load_snapshot(out)
            if existing.content_hash != manifest["content_hash"]:
                raise SnapshotError(f"snapshot {storage.uri(out)} already exists with different data ({existing.content_hash}); "
                                    "snapshots are immutable")
            return existing
        if storage.is_remote(out):
            # no rename on an object store: the data beside the manifest first, the manifest last (the commit marker)
            storage.copy(tmp / DATA_FILE, out / DATA_FILE)
            (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
        else:
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp.rename(out)
        return Snapshot(out, manifest)
    finally:
        storage.remove_tree(tmp)
