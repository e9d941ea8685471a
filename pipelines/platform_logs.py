"""nightshift's own log lines in Elasticsearch: shipping a night's log files to their data stream.

A night's steps write their lines as ECS JSON (`pipelines.telemetry.EcsFormatter`) to `runs/D/logs/TASK.ndjson`
under the storage root (`pipelines.telemetry.night_log`). `ship_logs` sends such files to the data stream named by
setting `elasticsearch.platform_logs` (default `nightshift-platform-logs`, outside the `logs-*` the models read):

- all or nothing per run: every line of every file is read and checked before the first document is sent, so a bad
  line stops the run with its file and line number and nothing shipped;
- no duplicates: a line's `_id` is a hash of its bytes, and it is sent with `op_type: create`; the ids a batch would
  send are first looked up across the whole data stream (a create only conflicts within the current backing index,
  and a rollover starts a new one), and a conflict on create counts as already shipped. Shipping the same file twice,
  or again after an interrupted run, sends each line once.

The data stream's ILM policy and index template are installed by `nightshift es install-template`
(`pipelines.sources.elastic.templates.install_platform_logs`).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, Iterator

from pipelines import storage
from pipelines.config import Settings
from pipelines.data.formats import ndjson_lines
from pipelines.data.records import RecordError, batched
from pipelines.errors import InputError
from pipelines.night_report import latest_night, summary_path
from pipelines.sources.elastic.connection import Connection, ElasticsearchError, parse_uri
from pipelines.sources.elastic.templates import platform_stream
from pipelines.storage import StoragePath
from pipelines.telemetry import get_logger

log = get_logger("platform_logs")
LOOKUP_BATCH = 1000  # lines whose ids one search looks up before their bulk request
_NIGHT = re.compile(r"\d{4}-\d{2}-\d{2}")


def night_logs_dir(settings: Settings, night: str) -> StoragePath:
    """Where the night of logical date `night` (YYYY-MM-DD) keeps its tasks' log lines: `runs/D/logs/` under the
    storage root, beside the night's summary; one `TASK.ndjson` per task."""
    return summary_path(settings, night).parent / "logs"


# ---- shipping -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LogLine:
    """One line of a log file, parsed: where it is (`file:line`), its document and its `_id`."""

    where: str
    doc: dict[str, Any]
    doc_id: str


def log_files(target: str | None, settings: Settings) -> list[StoragePath]:
    """The log files `target` names: a night (YYYY-MM-DD: its `runs/D/logs/*.ndjson`; None: the latest night), a folder
    (its `*.ndjson`) or one file, local or on the object store.

    Raises:
        MissingInput: no night has run yet (target None).
        InputError: the target does not exist, or names a night or folder without log files.
    """
    if target is None or _NIGHT.fullmatch(target):
        night = target or latest_night(settings)
        folder = night_logs_dir(settings, night)
        files = sorted(folder.glob("*.ndjson"), key=lambda p: p.name)
        if not files:
            raise InputError(f"night {night}: no log files in {storage.uri(folder)} (a night run by `nightshift retrain` writes them)")
        return files
    path = storage.path(target)
    if not path.exists():
        raise InputError(f"{target}: no such log file or folder (give a file, a folder of *.ndjson or a night YYYY-MM-DD)")
    if path.is_dir():
        files = sorted(path.glob("*.ndjson"), key=lambda p: p.name)
        if not files:
            raise InputError(f"{target}: no *.ndjson log files in this folder")
        return files
    return [path]


def read_lines(files: list[StoragePath]) -> list[LogLine]:
    """Every non-blank line of `files` (`pipelines.data.formats.ndjson_lines`, as a `file://` source reads them),
    parsed and checked, before anything is sent.

    Raises:
        RecordError: a line is not JSON, not a JSON object, or lacks `@timestamp` (a data stream needs it); the
            message names the file (its URI) and line. InputError: a gzip file is damaged.
    """
    lines: list[LogLine] = []
    for path in files:
        for where, raw, doc in ndjson_lines(path, storage.uri(path)):
            if not isinstance(doc, dict):
                raise RecordError(where, "(document)", f"must be a JSON object, got {type(doc).__name__}")
            if not doc.get("@timestamp"):
                raise RecordError(where, "@timestamp", "is missing (every line of a data stream needs its time)")
            lines.append(LogLine(where, doc, hashlib.sha256(raw.strip().encode()).hexdigest()[:40]))
    return lines


def _already_there(conn: Connection, stream: str, ids: list[str]) -> set[str]:
    """Of `ids`, those the data stream holds already, in any of its backing indices."""
    resp = conn.call(f"look up shipped lines in '{stream}'", lambda c: c.search(
        index=stream, query={"ids": {"values": ids}}, source=False, size=len(ids), ignore_unavailable=True, allow_no_indices=True))
    return {hit["_id"] for hit in resp["hits"]["hits"]}


def _actions(stream: str, lines: list[LogLine]) -> Iterator[dict[str, Any]]:
    for line in lines:
        yield {"_op_type": "create", "_index": stream, "_id": line.doc_id, "_source": line.doc}


def ship_logs(target: str | None, settings: Settings, url: str | None = None) -> dict[str, Any]:
    """Send the log lines of `target` (`log_files`) to the data stream of setting `elasticsearch.platform_logs` on the
    cluster `url` (default: the settings' endpoint).

    Returns `{"cluster", "data_stream", "files", "lines", "shipped", "already_shipped"}`: `shipped` counts the lines
    sent now, `already_shipped` those the stream held before (a re-run, or a run after an interrupted one).

    Raises:
        InputError, RecordError: a line cannot be shipped (`read_lines`; nothing is sent).
        ElasticsearchError: the cluster refused documents (after the others were sent; the message gives the first
            reason) or cannot be reached.
    """
    from elasticsearch import helpers

    stream = platform_stream(settings)
    files = log_files(target, settings)
    lines = read_lines(files)
    es = settings.elasticsearch
    conn = Connection(parse_uri(url or "elasticsearch://", need_index=False), es)
    shipped = already = 0
    failures: list[str] = []
    try:
        for batch in batched(lines, LOOKUP_BATCH):
            unique = list({line.doc_id: line for line in batch}.values())  # the same line twice in a file is one document
            already += len(batch) - len(unique)
            there = _already_there(conn, stream, [line.doc_id for line in unique])
            todo = [line for line in unique if line.doc_id not in there]
            already += len(unique) - len(todo)
            if not todo:
                continue
            # the helper splits by documents and bytes and retries items rejected with 429; a retried request's
            # creates that already landed conflict (409), which counts as shipped before
            ok, errors = conn.call(f"bulk send to '{stream}'", lambda c: helpers.bulk(
                c, _actions(stream, todo), chunk_size=es.bulk_max_docs, max_chunk_bytes=es.bulk_max_bytes, raise_on_error=False,
                max_retries=es.retries, initial_backoff=max(es.retry_backoff, 0.1)))
            shipped += ok
            for error in errors if isinstance(errors, list) else []:
                (_, item), = error.items()
                if item.get("status") == 409:
                    already += 1
                else:
                    failures.append(f"{item.get('status')} {(item.get('error') or {}).get('type', 'error')}: "
                                    f"{(item.get('error') or {}).get('reason', '')}"[:300])
    finally:
        conn.close()
    if failures:
        raise ElasticsearchError(f"ship logs to '{stream}' at {conn.where}: {len(failures)} of {len(lines)} line(s) refused "
                                 f"({shipped} shipped, {already} already there), first: {failures[0]}; run it again once fixed")
    log.info("log lines shipped", extra={"data_stream": stream, "files": len(files), "lines": len(lines), "shipped": shipped,
                                        "already_shipped": already})
    return {"cluster": conn.where, "data_stream": stream, "files": [storage.uri(p) for p in files], "lines": len(lines),
            "shipped": shipped, "already_shipped": already}
