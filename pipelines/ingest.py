"""Ingest: read one window of a source and write it as an immutable snapshot."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Iterator

from models.label_space import load_label_space
from pipelines.config import Settings
from pipelines.records import to_row
from pipelines.snapshot import Snapshot, write_snapshot
from pipelines.sources import LogSource, open_log_source
from pipelines.telemetry import get_logger

log = get_logger("ingest")


def log_rows(source: LogSource, settings: Settings, start: datetime | None, end: datetime | None) -> Iterator[dict]:
    """Snapshot rows of the window, each checked against the log contract and the label space."""
    label_space = load_label_space(settings.rca.label_space or None).as_set()
    for where, doc in source.iter_docs(start, end):
        yield to_row(doc, settings.fields, where, label_space)


def ingest_logs(source_uri: str, start: datetime, end: datetime, out: Path, settings: Settings, dataset: str = "logs") -> Snapshot:
    """Snapshot the documents of `source_uri` with `start <= @timestamp < end` into `out`."""
    source = open_log_source(source_uri, settings)
    snapshot = write_snapshot(
        out,
        log_rows(source, settings, start, end),
        dataset=dataset,
        source=source.uri,
        query={"range": {settings.fields.timestamp: {"gte": start.isoformat(), "lt": end.isoformat()}}},
        start=start,
        end=end,
    )
    log.info("snapshot written", extra={"snapshot": str(snapshot.path), "rows": snapshot.manifest["row_count"], "content_hash": snapshot.content_hash})
    return snapshot
