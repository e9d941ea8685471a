"""The log-document contract: reading fields from a document and turning it into a snapshot row.

Documents may use nested objects (`{"service": {"name": ...}}`) or dotted keys
(`{"service.name": ...}`), or a mix; every field name comes from `LogFields`.

One parser for every timestamp nightshift reads (`parse_timestamp`: ISO-8601 strings, epoch numbers
in s/ms/us/ns, native datetime/pandas/numpy values) and one writer (`format_timestamp`: ISO-8601
with `Z`); one parser and writer of durations in Prometheus's spelling (`parse_duration`, `format_duration`); one reading of the anomaly label (`AnomalyLabels`, spellings from `[inputs]`).

Errors are one line naming the record and field (`RecordError`); a value they quote is cut to `SHOW_CHARS`.
"""

from __future__ import annotations

import base64
import math
import numbers
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from itertools import islice
from typing import Any, Iterable, Iterator, Sequence, TypeVar, cast

from pipelines.config import EPOCH_UNITS, ConfigError, InputSettings, LogFields
from pipelines.errors import InputError, NightshiftError
from pipelines.pages import truncate

T = TypeVar("T")


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """A stream in lists of `size` (the last one shorter): windows, pages and chunks alike."""
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk

_MISSING = object()

# Snapshot columns, in order, with their Arrow types (see `snapshot.LOG_SCHEMA`).
LOG_COLUMNS = ("timestamp", "message", "service", "level", "host", "anomaly", "root_cause", "job_id")
# Characters of a value quoted in an input error (`truncate`). The parsers take no settings: the setting's default.
SHOW_CHARS = InputSettings.show_chars
# What str.splitlines() breaks at, written as escapes so that an error stays one line whatever the data holds.
_LINE_BREAKS = {ord(c): repr(c)[1:-1] for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}


class RecordError(NightshiftError, ValueError):
    """A record breaks the contract; the message, one line, names where it is and which field is at fault."""

    def __init__(self, where: str, field: str, problem: str):
        super().__init__(f"{where}: field '{field}' {problem}".translate(_LINE_BREAKS))
        self.where, self.field, self.problem = where, field, problem


def quoted(value: Any) -> str:
    """`repr(value)` cut to `SHOW_CHARS` (`truncate`): a data value inside an error message."""
    return truncate(repr(value), SHOW_CHARS)


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


# ---- timestamps ------------------------------------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_SHAPES = "ISO-8601 (2026-11-16T00:04:46Z) nor epoch seconds, milliseconds or nanoseconds"


def epoch_unit(magnitude: float, unit: str = "auto") -> str:
    """The unit of an epoch number: `unit` itself, or for "auto" the one that puts it after 1973-03-03.

    Below 1e11 a number is seconds (up to the year 5138), below 1e14 milliseconds, below 1e17
    microseconds, else nanoseconds: for any instant after 1973 the four ranges do not overlap.
    Raises ValueError for a unit outside s, ms, us, ns, auto.
    """
    if unit != "auto":
        if unit not in _PER_SECOND:
            raise InputError(f"epoch unit {unit!r} is not one of {', '.join(EPOCH_UNITS)}")
        return unit
    size = abs(magnitude)
    return "s" if size < 1e11 else "ms" if size < 1e14 else "us" if size < 1e17 else "ns"


def epoch_divisor(magnitude: float, unit: str = "auto") -> int:
    """Units per second of an epoch number (1, 1e3, 1e6 or 1e9), decided as `epoch_unit` does."""
    return _PER_SECOND[epoch_unit(magnitude, unit)]


def parse_timestamp(value: Any, unit: str = "auto") -> datetime:
    """Any timestamp nightshift reads, as an aware UTC datetime.

    - strings: ISO-8601 with `Z`, an offset, or none (read as UTC), `T` or a space between date and
      time, `.` or `,` before the fraction; a string of digits is an epoch number;
    - numbers: epoch seconds, milliseconds, microseconds or nanoseconds, told apart by magnitude
      (`epoch_unit`) or given by `unit` (setting `inputs.epoch_unit`);
    - native values: `datetime` and `pandas.Timestamp` (naive ones are UTC), `numpy.datetime64`, `date`.

    Raises ValueError (InputError) saying what was expected, the value cut to `SHOW_CHARS`.
    """
    if isinstance(value, str):
        text = value.strip()
        if _NUMBER.fullmatch(text):
            try:
                number = float(text) if any(c in text for c in ".eE") else int(text)
            except ValueError:  # more digits than int() converts (sys.get_int_max_str_digits)
                raise InputError(f"{quoted(value)} is out of range as an epoch number") from None
            return _from_epoch(number, unit)
        try:
            ts = datetime.fromisoformat(text.upper())
        except ValueError:
            raise InputError(f"{quoted(value)} is neither {_SHAPES}") from None
        return _utc(ts, value)
    if isinstance(value, datetime):  # pandas.Timestamp too
        if value != value:  # NaT
            raise InputError("is NaT (a missing time)")
        # pandas: nanoseconds dropped on purpose (snapshots keep milliseconds), without a warning per row
        return _utc(value.to_pydatetime(warn=False) if hasattr(value, "to_pydatetime") else value, value)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
    if type(value).__name__ == "datetime64":  # numpy, without importing it here
        import numpy as np

        if np.isnat(value):
            raise InputError("is NaT (a missing time)")
        return _from_epoch(int(value.astype("datetime64[ns]").astype(np.int64)), "ns")
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return _from_epoch(cast(float, value), unit)  # any real (numpy's too): typeshed's numbers.Real is no float
    raise InputError(f"{quoted(value)} ({type(value).__name__}) is neither {_SHAPES}")


def _utc(ts: datetime, value: Any) -> datetime:
    """`ts` in UTC (naive: read as UTC); InputError when UTC has no such date (0001-01-01T00:00+01:00)."""
    if ts.tzinfo is None:
        return ts.replace(tzinfo=timezone.utc)
    try:
        return ts.astimezone(timezone.utc)
    except OverflowError:
        raise InputError(f"{quoted(value)} is out of range: in UTC it falls outside the years 1 to 9999") from None


def _from_epoch(number: float, unit: str) -> datetime:
    integral = isinstance(number, numbers.Integral)  # exact: no float rounding of nanoseconds, nor overflow of huge ints
    if not integral and not math.isfinite(float(number)):
        raise InputError(f"{quoted(number)} is not a time")
    per_second = epoch_divisor(number, unit)
    try:
        if integral:
            return _EPOCH + timedelta(microseconds=int(number) * 1_000_000 // per_second)
        return _EPOCH + timedelta(seconds=float(number) / per_second)
    except OverflowError:
        raise InputError(f"{quoted(number)} is out of range as epoch {epoch_unit(number, unit)}") from None


def format_timestamp(ts: datetime) -> str:
    """ISO-8601 in UTC with `Z`: whole seconds `2026-11-16T00:04:46Z`, else milliseconds or microseconds as needed."""
    ts = ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts.astimezone(timezone.utc)
    spec = "seconds" if not ts.microsecond else "milliseconds" if ts.microsecond % 1000 == 0 else "microseconds"
    return ts.isoformat(timespec=spec).replace("+00:00", "Z")


# Prometheus duration units (https://prometheus.io/docs/prometheus/latest/querying/basics/#float-literals-and-time-durations)
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")


def parse_duration(value: str | float, setting: str = "step") -> float:
    """Seconds from a Prometheus duration (`15m`, `1h30m`, `90s`) or a plain number of seconds."""
    text = str(value).strip()
    try:
        seconds = float(text)
    except ValueError:
        parts = _DURATION.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise InputError(f"{setting}: {text!r} is not a duration like 15m, 1h or 90s") from None
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if not seconds > 0:
        raise InputError(f"{setting}: {text!r} must be a positive duration")
    return seconds


def format_duration(seconds: float) -> str:
    """The Prometheus spelling of a duration: 900 -> 15m, 5400 -> 1h30m."""
    if seconds != int(seconds):
        return f"{int(seconds * 1000)}ms"
    out, rest = "", int(seconds)
    for unit in ("d", "h", "m", "s"):
        size = int(_UNITS[unit])
        if rest >= size:
            out, rest = out + f"{rest // size}{unit}", rest % size
    return out or "0s"


def json_default(value: Any) -> Any:
    """`json.dumps(default=...)` for values native readers (Parquet, pandas, numpy) put in documents:
    times as ISO-8601 with `Z`, numpy scalars as numbers, Decimal as float, bytes as UTF-8 (else base64)."""
    if isinstance(value, (datetime, date)) or type(value).__name__ == "datetime64":
        return format_timestamp(parse_timestamp(value))
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        return value.item()
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy array
        return value.tolist()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(bytes(value)).decode("ascii")
    return str(value)


def doc_timestamp(doc: dict, fields: LogFields, where: str, unit: str = "auto") -> datetime:
    """The document's timestamp field, parsed; `RecordError` naming the record when it is missing or not a time."""
    raw = get_field(doc, fields.timestamp)
    if raw is None:
        raise RecordError(where, fields.timestamp, "is missing")
    try:
        return parse_timestamp(raw, unit)
    except ValueError as exc:
        raise RecordError(where, fields.timestamp, f"is not a timestamp: {exc}") from None


# ---- labels and text ---------------------------------------------------------------------------------------

def _spellings(text: str) -> frozenset[str]:
    return frozenset(s.strip().lower() for s in text.split(",") if s.strip())


@dataclass(frozen=True)
class AnomalyLabels:
    """How the anomaly label is spelled: the values read as anomalous and as normal (any case).

    Booleans and the numbers 0/1 are always understood; an empty string or null is no label.
    """

    anomalous: frozenset[str] = _spellings(InputSettings.anomaly_true)
    normal: frozenset[str] = _spellings(InputSettings.anomaly_false)

    @classmethod
    def from_settings(cls, inputs: InputSettings) -> "AnomalyLabels":
        """Raises ConfigError when a spelling is in both lists or a list is empty."""
        anomalous, normal = _spellings(inputs.anomaly_true), _spellings(inputs.anomaly_false)
        if not anomalous or not normal:
            raise ConfigError("settings inputs.anomaly_true and inputs.anomaly_false must each list at least one value")
        both = sorted(anomalous & normal)
        if both:
            raise ConfigError(f"settings inputs.anomaly_true and inputs.anomaly_false both list {', '.join(map(repr, both))}")
        return cls(anomalous, normal)

    def parse(self, value: Any) -> bool | None:
        """True (anomalous), False (normal) or None (no label). Raises ValueError naming the accepted spellings."""
        if value is None:
            return None
        if isinstance(value, bool):
            return value
        if isinstance(value, numbers.Real) and value in (0, 1):
            return bool(value)
        if isinstance(value, str):
            key = value.strip().lower()
            if not key:
                return None
            if key in self.anomalous:
                return True
            if key in self.normal:
                return False
        raise InputError(f"{quoted(value)} is not one of {', '.join(sorted(self.anomalous))} (anomalous) or "
                         f"{', '.join(sorted(self.normal))} (normal); settings inputs.anomaly_true / inputs.anomaly_false")

    def is_label(self, text: str) -> bool:
        """Whether a string is one of the spellings (format detection of label<TAB>text files)."""
        return text.strip().lower() in self.anomalous | self.normal


def message_text(value: Any) -> str:
    """The text of a message field: a string, or an array of strings joined by newlines (a multi-valued
    field). Raises ValueError saying what the value is instead."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return "\n".join(value)
    if value is None:
        raise InputError("is missing")
    kind = ("a boolean" if isinstance(value, bool) else "a number" if isinstance(value, numbers.Number)
            else "an object" if isinstance(value, dict) else "an empty array" if value == []
            else "an array that is not all strings" if isinstance(value, list)
            else f"a {type(value).__name__}")
    raise InputError(f"must be a string or an array of strings, got {kind}")


def root_causes(value: Any) -> list[str]:
    """Root-cause labels: a list of names, one name, or names separated by commas (`OOM,Disk_Full`,
    the PyTorch_pro demos' and CSV's spelling); empty or null: none. Raises ValueError for anything else."""
    if value is None:
        return []
    if isinstance(value, str):
        return [name.strip() for name in value.split(",") if name.strip()]
    if isinstance(value, (list, tuple)) and all(isinstance(c, str) for c in value):
        return list(value)
    raise InputError(f"must be a list of label names, got {quoted(value)}")


# ---- one document -> one row --------------------------------------------------------------------------------

def to_row(doc: Any, fields: LogFields, where: str, label_space: frozenset[str] | None = None, *,
           labels: AnomalyLabels = AnomalyLabels(), epoch_unit: str = "auto") -> dict[str, Any]:
    """One snapshot row (`LOG_COLUMNS`) from one document (a JSON object: an Elasticsearch hit's `_source`, a file's
    line or row), or a `RecordError` naming the record (`where`) and the field."""
    if not isinstance(doc, dict):
        raise RecordError(where, "(document)", f"must be a JSON object, got {type(doc).__name__}")
    ts = doc_timestamp(doc, fields, where, epoch_unit)
    try:
        message = message_text(get_field(doc, fields.message))
    except ValueError as exc:
        raise RecordError(where, fields.message, str(exc)) from None
    try:
        anomaly = labels.parse(get_field(doc, fields.anomaly))
    except ValueError as exc:
        raise RecordError(where, fields.anomaly, f"has an unknown label value: {exc}") from None
    try:
        causes = root_causes(get_field(doc, fields.root_cause))
    except ValueError as exc:
        raise RecordError(where, fields.root_cause, str(exc)) from None
    if label_space is not None:
        unknown = sorted(set(causes) - label_space)
        if unknown:
            raise RecordError(where, fields.root_cause,
                              f"has label(s) not in the label space: {truncate(', '.join(unknown), SHOW_CHARS)}")
    row: dict[str, Any] = {
        "timestamp": ts,
        "message": message,
        "service": _text(get_field(doc, fields.service)),
        "level": _text(get_field(doc, fields.level)),
        "host": _text(get_field(doc, fields.host)),
        "anomaly": anomaly,
        "root_cause": causes,
        "job_id": _text(get_field(doc, fields.job_id)),
    }
    for name, text in ((fields.message, message), (fields.service, row["service"]), (fields.level, row["level"]),
                       (fields.host, row["host"]), (fields.job_id, row["job_id"]), *((fields.root_cause, c) for c in causes)):
        at = _lone_surrogate(text)
        if at is not None:  # the snapshot (Parquet, UTF-8) could not hold it
            raise RecordError(where, name, f"is not valid Unicode text (a lone surrogate at character {at + 1})")
    return row


def _lone_surrogate(text: str | None) -> int | None:
    """Index of the first character UTF-8 cannot hold (a lone surrogate, which JSON's \\ud800 escapes can give), else None."""
    if text is None or text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def doc_context(docs: Sequence[dict], fields: LogFields, names: Sequence[str]) -> dict[str, list[str | None]]:
    """Each context column of `names` (`level`, `service`, `host`: the snapshot's names) as the documents hold it,
    through its field in `fields` (e.g. `log.level`); None where absent."""
    return {name: [_text(get_field(doc, getattr(fields, name))) for doc in docs] for name in names}


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
