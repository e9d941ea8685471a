"""The log-document contract: reading fields from a document and turning it into a snapshot row.

Documents may use nested objects (`{"service": {"name": ...}}`) or dotted keys
(`{"service.name": ...}`), or a mix; every field name comes from `LogFields`.
"""

from __future__ import annotations

from datetime import datetime, timezone
from itertools import islice
from typing import Any, Iterable, Iterator, TypeVar

from pipelines.config import LogFields

T = TypeVar("T")


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """A stream in lists of `size` (the last one shorter): windows, pages and chunks alike."""
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk

_MISSING = object()

# Snapshot columns, in order, with their Arrow types (see `snapshot.LOG_SCHEMA`).
LOG_COLUMNS = ("timestamp", "message", "service", "level", "host", "anomaly", "root_cause", "job_id")


class RecordError(ValueError):
    """A record breaks the contract; the message names where it is and which field is at fault."""

    def __init__(self, where: str, field: str, problem: str):
        super().__init__(f"{where}: field '{field}' {problem}")
        self.where, self.field, self.problem = where, field, problem


def get_field(doc: dict, path: str, default: Any = None) -> Any:
    """Value at a dotted path, found through nested objects, dotted keys, or any mix of the two."""
    if path in doc:
        return doc[path]
    parts = path.split(".")
    for i in range(1, len(parts)):
        child = doc.get(".".join(parts[:i]))
        if isinstance(child, dict):
            found = get_field(child, ".".join(parts[i:]), _MISSING)
            if found is not _MISSING:
                return found
    return default


def set_field(doc: dict, path: str, value: Any) -> None:
    """Set a dotted path as nested objects (the form ECS documents use)."""
    *parents, leaf = path.split(".")
    node = doc
    for key in parents:
        child = node.get(key)
        if not isinstance(child, dict):
            child = node[key] = {}
        node = child
    node[leaf] = value


def parse_timestamp(value: Any) -> datetime:
    """ISO-8601 (with Z or offset) or epoch milliseconds, as an aware UTC datetime."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.fromtimestamp(value / 1000, tz=timezone.utc)
    if not isinstance(value, str):
        raise ValueError(f"not a timestamp: {value!r}")
    ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts.astimezone(timezone.utc)


def parse_anomaly(value: Any) -> bool | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if value in (0, 1) and isinstance(value, (int, float)):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false", "0", "1"):
        return value.lower() in ("true", "1")
    raise ValueError(f"{value!r} is not a boolean or 0/1")


def to_row(doc: Any, fields: LogFields, where: str, label_space: frozenset[str] | None = None) -> dict[str, Any]:
    """One snapshot row from one document, or a `RecordError` naming the record and field."""
    if not isinstance(doc, dict):
        raise RecordError(where, "(document)", f"must be a JSON object, got {type(doc).__name__}")
    raw_ts = get_field(doc, fields.timestamp)
    if raw_ts is None:
        raise RecordError(where, fields.timestamp, "is missing")
    try:
        ts = parse_timestamp(raw_ts)
    except ValueError as exc:
        raise RecordError(where, fields.timestamp, f"is not an ISO-8601 timestamp ({exc})") from None
    message = get_field(doc, fields.message)
    if message is None:
        raise RecordError(where, fields.message, "is missing")
    if not isinstance(message, str):
        raise RecordError(where, fields.message, f"must be a string, got {type(message).__name__}")
    try:
        anomaly = parse_anomaly(get_field(doc, fields.anomaly))
    except ValueError as exc:
        raise RecordError(where, fields.anomaly, f"has an unknown label value: {exc}") from None
    causes = get_field(doc, fields.root_cause) or []
    if isinstance(causes, str):
        causes = [causes]
    if not isinstance(causes, list) or not all(isinstance(c, str) for c in causes):
        raise RecordError(where, fields.root_cause, f"must be a list of label names, got {causes!r}")
    if label_space is not None:
        unknown = sorted(set(causes) - label_space)
        if unknown:
            raise RecordError(where, fields.root_cause, f"has label(s) not in the label space: {', '.join(unknown)}")
    job = get_field(doc, fields.job_id)
    return {
        "timestamp": ts,
        "message": message,
        "service": _text(get_field(doc, fields.service)),
        "level": _text(get_field(doc, fields.level)),
        "host": _text(get_field(doc, fields.host)),
        "anomaly": anomaly,
        "root_cause": causes,
        "job_id": _text(job),
    }


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
