"""Ingest: read one window of a source and write it as an immutable snapshot.

Every input comes in here (no separate import step): a file source is read by its content
(`pipelines.data.formats`: NDJSON, gzip, Parquet, CSV/TSV, the PyTorch_pro demos' TSV forms), an Elasticsearch
source through its point-in-time, and each document is checked against the log contract.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Generator

import pyarrow as pa

from nightshift_models.label_space import load_label_space
from pipelines.config import Settings
from pipelines.data.formats import ReadContext
from pipelines.data.records import LOG_COLUMNS, get_field, json_default, to_row
from pipelines.data.snapshots import LOG_SCHEMA, Snapshot, write_snapshot
from pipelines.errors import InputError
from pipelines.sources.logs import LogSource, open_log_source
from pipelines.storage import StoragePath
from pipelines.telemetry import get_logger, progress

log = get_logger("ingest")


def log_rows(source: LogSource, settings: Settings, start: datetime | None, end: datetime | None) -> Generator[dict, None, None]:
    """Snapshot rows of the window, each checked against the log contract and the label space."""
    label_space = load_label_space(settings.rca.label_space or None).as_set()
    ctx = ReadContext.from_settings(settings.fields, settings.inputs)
    extra = extra_columns(source)
    for where, doc in source.iter_docs(start, end):
        row = to_row(doc, settings.fields, where, label_space, labels=ctx.labels, epoch_unit=ctx.epoch_unit)
        for name in extra:
            value = get_field(doc, name)
            row[name] = value if value is None or isinstance(value, str) else json.dumps(value, default=json_default)
        yield row


def extra_columns(source: LogSource) -> list[str]:
    """Extra fields a source is configured to keep (Elasticsearch: `elasticsearch.extra_fields`), as string columns."""
    return [name for name in getattr(source, "extra_fields", ()) if name not in LOG_COLUMNS]


def ingest_logs(source_uri: str, start: datetime | None, end: datetime | None, out: str | StoragePath, settings: Settings,
                dataset: str = "logs") -> Snapshot:
    """Snapshot the documents of `source_uri` with `start <= @timestamp < end` into `out`.

    For a file source a missing `start` or `end` is taken from the data (first timestamp, last + 1 ms),
    so a whole file comes in; an Elasticsearch source needs both. Raises RecordError naming the record
    and field at fault, SnapshotError for an empty window or a conflicting snapshot.
    """
    source = open_log_source(source_uri, settings)
    if start is None or end is None:
        if not hasattr(source, "span"):
            raise InputError(f"source {source.uri}: --start and --end are required (only a file source is read whole)")
        first, after_last = source.span()
        start, end = start or first, end or after_last
    rows = log_rows(source, settings, start, end)
    stats = getattr(source, "stats", None)  # counts the source fills while the rows stream (read, unlabelled, dropped)
    try:
        with progress(f"ingest {dataset}", unit="docs") as meter:
            snapshot = write_snapshot(
                out,
                meter.wrap(rows),
                dataset=dataset,
                source=source.uri,
                query={"range": {settings.fields.timestamp: {"gte": start.isoformat(), "lt": end.isoformat()}}},
                start=start,
                end=end,
                schema=pa.schema(list(LOG_SCHEMA) + [pa.field(name, pa.string()) for name in extra_columns(source)]),
                extra={"source_stats": stats} if stats is not None else None,
            )
    finally:
        rows.close()  # releases what the source holds (an Elasticsearch point-in-time) on failure too
    log.info("snapshot written", extra={"snapshot": str(snapshot.path), "rows": snapshot.manifest["row_count"], "content_hash": snapshot.content_hash})
    return snapshot
