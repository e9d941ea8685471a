"""Local files by their content: every format a `file://` source may hold, read as a stream.

Reading order:
1. `open_binary` / `iter_lines`: gzip is recognised by its magic bytes (whatever the suffix), text
   is UTF-8 with or without a BOM, lines end in LF or CRLF. Errors name the file and line.
2. `sniff_log_format`: the format from the first bytes and lines, unless setting `inputs.format`
   names it.
3. One reader per log format (`LOG_READERS`), each yielding `(where, document)`:
   - `ndjson`: one JSON object per line;
   - `parquet`: one row per document; native timestamps stay native (the one parser in
     `pipelines.data.records` reads them), struct columns are nested objects, map columns objects;
   - `csv` / `tsv` with a header: a row is `{column: cell}`, an empty cell is null; the `[fields]`
     settings name the columns, so they are the column mapping (`fields.message = "text"`);
   - the PyTorch_pro demos' two headerless TSV forms, whose text starts with `YYYY-MM-DD HH:MM:SS LEVEL`
     (timestamp and level become fields, the rest is the message):
     `anomaly-tsv` (`label<TAB>text`, label in the `[inputs]` spellings) and
     `rca-tsv` (`LABEL[,LABEL…]<TAB>text`, one failed job per line, job id `FILE:LINE`).
4. Metric CSVs (`timestamp,value[,label columns]`): `sniff_metric_format`, `metric_csv_samples`.

Whatever the bytes, a reader yields documents or raises nightshift's own error: `RecordError` naming the file, the
line or row and the field, or `InputError` naming the file when the file as a whole is damaged.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Literal

from pipelines.config import InputSettings, LogFields
from pipelines.data.records import (
    SHOW_CHARS,
    AnomalyLabels,
    RecordError,
    format_timestamp,
    parse_timestamp,
    quoted,
    root_causes,
    set_field,
)
from pipelines.errors import InputError
from pipelines.pages import truncate
from pipelines.storage import StoragePath

GZIP_MAGIC = b"\x1f\x8b"
PARQUET_MAGIC = b"PAR1"
BOM = b"\xef\xbb\xbf"
SNIFF_BYTES = 64 * 1024  # enough for the first lines of any text format
SNIFF_LINES = 200

# The PyTorch_pro demos' text: `2025-09-10 12:30:05 INFO rest…`, with an optional fraction, zone and [LEVEL].
_LEADING = re.compile(
    r"(?P<ts>\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?)\s*"
    r"(?:\[?(?P<level>TRACE|DEBUG|INFO|NOTICE|WARN|WARNING|ERROR|ERR|CRITICAL|CRIT|FATAL|SEVERE|ALERT|EMERG|PANIC)\]?:?(?:\s+|$))?",
    re.IGNORECASE)
_LABEL_LIST = re.compile(r"\s*[A-Za-z_][\w.\-]*(?:\s*,\s*[A-Za-z_][\w.\-]*)*\s*")


@dataclass(frozen=True)
class ReadContext:
    """What a reader needs from the settings: field names, label spellings, the epoch unit."""

    fields: LogFields
    labels: AnomalyLabels
    epoch_unit: str

    @classmethod
    def from_settings(cls, fields: LogFields, inputs: InputSettings) -> "ReadContext":
        """Raises ConfigError for clashing label spellings (the format and epoch unit are checked when settings load)."""
        return cls(fields, AnomalyLabels.from_settings(inputs), inputs.epoch_unit)


def _reason(exc: BaseException) -> str:
    """A library's reason for an error message: one line, cut to `SHOW_CHARS` (Arrow's span several lines)."""
    return truncate(" ".join(str(exc).split()), SHOW_CHARS)


# ---- bytes and lines -------------------------------------------------------------------------------------

class _Gunzip(gzip.GzipFile):
    """A gzip stream over a file it owns: closing the stream closes the file (a local one, or an object store's)."""

    def __init__(self, source: BinaryIO):
        super().__init__(fileobj=source, mode="rb")
        self._source = source

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._source.close()


def open_binary(path: Path | StoragePath) -> BinaryIO | gzip.GzipFile:
    """The file's bytes, decompressed when they are gzip (told by the magic bytes, not the suffix); local or on the
    object store."""
    fh = path.open("rb")
    magic = fh.read(2)
    fh.seek(0)
    return _Gunzip(fh) if magic == GZIP_MAGIC else fh


def head_text(path: Path) -> list[str]:
    """The first lines of a text file (decompressed, BOM dropped), for format detection; a line cut
    by the sample's end is left out. Raises ValueError for a damaged gzip file."""
    try:
        with open_binary(path) as fh:
            data = fh.read(SNIFF_BYTES)
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(f"{path.name}: the gzip stream is damaged ({_reason(exc)})") from None
    lines = data.removeprefix(BOM).decode("utf-8", errors="replace").splitlines()
    if len(data) == SNIFF_BYTES and lines:
        lines = lines[:-1]
    return lines[:SNIFF_LINES]


def iter_lines(path: Path | StoragePath, name: str | None = None) -> Iterator[tuple[int, str]]:
    """(line number, text) of each line, decoded as UTF-8 without the BOM and the LF/CRLF ending. `name` is the file
    as errors name it (default: its file name).

    Raises RecordError `FILE:LINE` for a line that is not UTF-8, InputError for a damaged gzip stream.
    """
    name = name or path.name
    number = 0
    try:
        with open_binary(path) as fh:
            for number, raw in enumerate(fh, 1):
                if number == 1:
                    raw = raw.removeprefix(BOM)
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise RecordError(f"{name}:{number}", "(line)", f"is not UTF-8 text (byte {exc.start + 1})") from None
                yield number, text.rstrip("\r\n")
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise InputError(f"{name}: the gzip stream is damaged after line {number} ({_reason(exc)})") from None


def csv_rows(path: Path, delimiter: str, quoting: Literal[0, 1, 2, 3] = csv.QUOTE_MINIMAL) -> Iterator[tuple[int, list[str]]]:
    """(line number, cells) of each row of a CSV/TSV file: UTF-8 without the BOM, plain or gzip. The number is the
    row's last line (a quoted cell may span lines).

    Raises RecordError `FILE:LINE` (field `(line)`) for a line that is not UTF-8 or not CSV, InputError for a damaged
    gzip stream.
    """
    # surrogateescape: a bad byte is refused with its own line, not with whichever line the decoder's read-ahead was on
    with io.TextIOWrapper(open_binary(path), encoding="utf-8-sig", errors="surrogateescape", newline="") as stream:
        reader = csv.reader(_utf8_lines(stream, path), delimiter=delimiter, quoting=quoting)
        try:
            for cells in reader:
                yield reader.line_num, cells
        except csv.Error as exc:
            raise RecordError(f"{path.name}:{reader.line_num}", "(line)", f"is not valid CSV: {exc}") from None
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise InputError(f"{path.name}: the gzip stream is damaged after line {reader.line_num} ({_reason(exc)})") from None


def _utf8_lines(stream: io.TextIOWrapper, path: Path) -> Iterator[str]:
    """The lines of a stream decoded with `surrogateescape`; RecordError `FILE:LINE` for one that held a byte UTF-8 has not."""
    for number, line in enumerate(stream, 1):
        if not line.isascii():
            try:
                line.encode("utf-8")
            except UnicodeEncodeError as exc:
                byte = len(line[:exc.start].encode("utf-8", "surrogateescape")) + 1
                raise RecordError(f"{path.name}:{number}", "(line)", f"is not UTF-8 text (byte {byte})") from None
        yield line


# ---- format detection ------------------------------------------------------------------------------------

def sniff_log_format(path: Path, ctx: ReadContext) -> str:
    """The log format of a file from its content: one of `LOG_READERS`.

    Raises ValueError naming the file and what was expected when no format fits.
    """
    with path.open("rb") as fh:
        magic = fh.read(4)
    if magic == PARQUET_MAGIC:
        return "parquet"
    lines = head_text(path)
    if magic[:2] == GZIP_MAGIC and lines and lines[0].startswith(PARQUET_MAGIC.decode()):
        raise InputError(f"{path.name}: is gzip-compressed Parquet; decompress it (Parquet compresses its own columns)")
    first = next((line for line in lines if line.strip()), None)
    if first is None:
        return "ndjson"  # an empty file: no documents, whatever the format
    if first.lstrip().startswith("{"):
        return "ndjson"
    if first.lstrip().startswith("["):
        raise InputError(f"{path.name}: holds a JSON array; nightshift reads NDJSON, one document per line "
                         f"(convert it with: jq -c '.[]' {path.name})")
    for delimiter, name in (("\t", "tsv"), (",", "csv")):
        if ctx.fields.message in next(csv.reader([first], delimiter=delimiter)):
            return name
    if "\t" in first:
        seed = _seed_form([line for line in lines if line.strip()], ctx.labels)
        if seed:
            return seed
    raise InputError(f"{path.name}: cannot tell its format from the content (first line {first[:60]!r}); expected NDJSON, "
                     f"Parquet, CSV/TSV with a header naming the column '{ctx.fields.message}' (setting fields.message), "
                     "label<TAB>text or LABEL[,LABEL…]<TAB>text; or name it with --format (setting inputs.format)")


def _seed_form(lines: list[str], labels: AnomalyLabels) -> str | None:
    """`anomaly-tsv` when every first cell is an anomaly-label spelling, `rca-tsv` when every one is a
    list of label names (empty cells aside); None when neither holds."""
    if not all("\t" in line for line in lines):
        return None
    cells = [line.split("\t", 1)[0] for line in lines]
    given = [c for c in cells if c.strip()]
    if not given:
        return None
    if all(labels.is_label(c) for c in given):
        return "anomaly-tsv"
    if all(_LABEL_LIST.fullmatch(c) for c in given):
        return "rca-tsv"
    return None


def sniff_metric_format(path: Path, inputs: InputSettings) -> str:
    """`csv` when the first line is a header naming the timestamp and value columns (settings
    `inputs.metric_timestamp`, `inputs.metric_value`), else `openmetrics`."""
    first = next((line for line in head_text(path) if line.strip()), "")
    if first.startswith("#"):
        return "openmetrics"
    for delimiter in (",", "\t", ";"):
        cells = [c.strip() for c in next(csv.reader([first], delimiter=delimiter))] if first else []
        if inputs.metric_timestamp in cells and inputs.metric_value in cells:
            return "csv"
    return "openmetrics"


# ---- log readers -----------------------------------------------------------------------------------------

def ndjson_lines(path: Path | StoragePath, name: str | None = None) -> Iterator[tuple[str, str, object]]:
    """(where, line, value) of each non-blank line of an NDJSON file (plain or gzip, local or on the object store):
    `where` is `NAME:LINE`, NAME being `name` (default: the file's name), `line` the text as read, `value` its JSON.

    Raises RecordError `NAME:LINE` (field `(line)`) for a line that is not UTF-8 or not JSON, or JSON that Python
    cannot hold (nested too deep, a number too long); InputError for a damaged gzip stream.
    """
    name = name or path.name
    for number, line in iter_lines(path, name):
        if not line.strip():
            continue
        where = f"{name}:{number}"
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RecordError(where, "(line)", f"is not valid JSON: {exc.msg} at column {exc.colno}") from None
        except ValueError:  # the only other ValueError json raises: int() refusing a number this long
            raise RecordError(where, "(line)", f"is not valid JSON: a number of more than {sys.get_int_max_str_digits():,} digits") from None
        except RecursionError:
            raise RecordError(where, "(line)", "is not valid JSON: nested deeper than Python's recursion limit") from None
        yield where, line, value


def read_ndjson(path: Path, ctx: ReadContext) -> Iterator[tuple[str, object]]:
    """One JSON value per non-blank line (`ndjson_lines`; the source checks that it is an object)."""
    for where, _, value in ndjson_lines(path):
        yield where, value


def read_parquet(path: Path, ctx: ReadContext) -> Iterator[tuple[str, dict]]:
    """One document per row, in batches of 4096 rows; map columns become objects.

    Raises InputError naming the file when it is not Parquet or a page of it is damaged, RecordError `FILE:row N`
    naming the column when a value has no Python form (a timestamp or date beyond the year 9999).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        schema = parquet.schema_arrow
    except (pa.ArrowException, OSError, ValueError) as exc:  # a damaged footer gives UnicodeDecodeError too
        raise InputError(f"{path.name}: is not a readable Parquet file ({_reason(exc)})") from None
    with_maps = {f.name: f.type for f in schema if _has_map(f.type)}
    row = 0
    batches = parquet.iter_batches(batch_size=4096)
    while True:
        try:
            batch = next(batches, None)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise InputError(f"{path.name}: is damaged after row {row} ({_reason(exc)})") from None
        if batch is None:
            return
        columns = [_column_values(batch.column(i), name, path, row) for i, name in enumerate(batch.schema.names)]
        for values in zip(*columns):
            doc = dict(zip(batch.schema.names, values))
            row += 1
            for name, kind in with_maps.items():
                doc[name] = _maps_as_objects(doc[name], kind)
            yield f"{path.name}:row {row}", doc


def _column_values(column, name: str, path: Path, rows_before: int) -> list:
    """A batch's column as Python values; RecordError naming the row and column for a value Python has no form for."""
    try:
        return column.to_pylist()
    except (ValueError, OverflowError) as exc:
        for i in range(len(column)):  # only to find the row to name
            try:
                column[i].as_py()
            except (ValueError, OverflowError):
                raise RecordError(f"{path.name}:row {rows_before + i + 1}", name,
                                  f"has a {column.type} value that is out of range ({_reason(exc)})") from None
        raise  # no single value fails: not the data's fault


def _has_map(kind) -> bool:
    import pyarrow as pa

    if pa.types.is_map(kind):
        return True
    if pa.types.is_struct(kind):
        return any(_has_map(f.type) for f in kind)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        return _has_map(kind.value_type)
    return False


def _maps_as_objects(value, kind):
    """Arrow hands a map as a list of (key, value) pairs; a JSON document holds it as an object."""
    import pyarrow as pa

    if value is None:
        return None
    if pa.types.is_map(kind):
        return {str(k): _maps_as_objects(v, kind.item_type) for k, v in value}
    if pa.types.is_struct(kind):
        return {f.name: _maps_as_objects(value.get(f.name), f.type) for f in kind}
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        return [_maps_as_objects(v, kind.value_type) for v in value]
    return value



def _data_rows(rows: Iterator[tuple[int, list[str]]], header: list[str], path: Path) -> Iterator[tuple[str, list[str]]]:
    """The rows of `csv_rows` after its header, as (`FILE:LINE`, cells): blank lines skipped, a row
    whose cell count differs from the header's refused with a RecordError naming the line."""
    for line, cells in rows:
        where = f"{path.name}:{line}"
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            raise RecordError(where, "(line)", f"has {len(cells)} cells, the header has {len(header)}")
        yield where, cells


def _columns(header: list[str]) -> str:
    """The header's columns for an error message, cut to `SHOW_CHARS`."""
    return truncate(", ".join(header), SHOW_CHARS)


def read_delimited(path: Path, ctx: ReadContext, delimiter: str) -> Iterator[tuple[str, dict]]:
    """Rows of a CSV (quoted cells allowed) or TSV (no quoting: tabs separate, quotes are text) with a
    header; the header must name the timestamp and message columns of `[fields]`."""
    rows = csv_rows(path, delimiter, csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL)
    header = next(rows, (0, None))[1]
    if header is None:
        return
    for setting in ("timestamp", "message"):
        column = getattr(ctx.fields, setting)
        if column not in header:
            raise RecordError(f"{path.name}:1", column, f"has no column in the header (columns: {_columns(header)}); "
                                                        f"name the column with setting fields.{setting}")
    repeated = sorted({c for c in header if header.count(c) > 1})
    if repeated:
        raise RecordError(f"{path.name}:1", repeated[0], "names two columns of the header")
    for where, cells in _data_rows(rows, header, path):
        yield where, {column: (cell if cell != "" else None) for column, cell in zip(header, cells)}


def read_seed_tsv(path: Path, ctx: ReadContext, form: str) -> Iterator[tuple[str, dict]]:
    """The PyTorch_pro demos' `label<TAB>text` (anomaly-tsv) and `LABEL[,LABEL…]<TAB>text` (rca-tsv) lines as
    contract documents: timestamp (ISO-8601 Z) and level from the text's start, the rest as the message."""
    f = ctx.fields
    for number, line in iter_lines(path):
        if not line.strip():
            continue
        where = f"{path.name}:{number}"
        label, tab, text = line.partition("\t")
        if not tab:
            raise RecordError(where, "(line)", f"has no tab; the {form} form is "
                                               + ("label<TAB>text" if form == "anomaly-tsv" else "LABEL[,LABEL…]<TAB>text"))
        lead = _LEADING.match(text)
        if not lead:
            raise RecordError(where, f.timestamp, "is missing: the text does not start with a timestamp like 2025-09-10 12:30:05")
        try:
            ts = parse_timestamp(lead["ts"], ctx.epoch_unit)
        except ValueError as exc:
            raise RecordError(where, f.timestamp, f"is not a timestamp: {exc}") from None
        doc: dict = {}
        set_field(doc, f.timestamp, format_timestamp(ts))
        set_field(doc, f.message, text[lead.end():] or text)
        if lead["level"]:
            set_field(doc, f.level, lead["level"].upper())
        if form == "anomaly-tsv":
            try:
                set_field(doc, f.anomaly, ctx.labels.parse(label))
            except ValueError as exc:
                raise RecordError(where, f.anomaly, f"has an unknown label value: {exc}") from None
        else:
            set_field(doc, f.root_cause, root_causes(label))
            set_field(doc, f.job_id, where)  # one failed job per line
        yield where, doc


LOG_READERS: dict[str, Callable[[Path, ReadContext], Iterator[tuple[str, object]]]] = {
    "ndjson": read_ndjson,
    "parquet": read_parquet,
    "csv": lambda path, ctx: read_delimited(path, ctx, ","),
    "tsv": lambda path, ctx: read_delimited(path, ctx, "\t"),
    "anomaly-tsv": lambda path, ctx: read_seed_tsv(path, ctx, "anomaly-tsv"),
    "rca-tsv": lambda path, ctx: read_seed_tsv(path, ctx, "rca-tsv"),
}


# ---- metric CSV ------------------------------------------------------------------------------------------

def metric_name(path: Path) -> str:
    """A Prometheus metric name from a file name: `node-cpu.csv.gz` -> `node_cpu`."""
    name = re.sub(r"[^a-zA-Z0-9_:]", "_", path.name.split(".")[0]) or "metric"
    return f"_{name}" if name[0].isdigit() else name


def metric_csv_samples(path: Path, inputs: InputSettings) -> Iterator[tuple[dict[str, str], float, float]]:
    """(labels with `__name__`, epoch seconds, value) of each row of a metric CSV/TSV.

    The timestamp and value columns are settings `inputs.metric_timestamp` / `inputs.metric_value`;
    a `__name__` column names the metric (else the file name does); every other non-empty cell is a
    label. A row with an empty value is a gap and left out. Raises RecordError `FILE:LINE` naming the field.
    """
    first = next((line for line in head_text(path) if line.strip()), "")
    delimiter = max((",", "\t", ";"), key=first.count)
    default_name = metric_name(path)
    rows = csv_rows(path, delimiter)
    header = [c.strip() for c in next(rows, (0, []))[1]]
    for setting in ("metric_timestamp", "metric_value"):
        if getattr(inputs, setting) not in header:
            raise RecordError(f"{path.name}:1", getattr(inputs, setting),
                              f"has no column in the header (columns: {_columns(header)}); set inputs.{setting}")
    ts_col, value_col = header.index(inputs.metric_timestamp), header.index(inputs.metric_value)
    label_cols = [(i, c) for i, c in enumerate(header) if i not in (ts_col, value_col)]
    for where, cells in _data_rows(rows, header, path):
        if not cells[value_col].strip():
            continue
        try:
            ts = parse_timestamp(cells[ts_col], inputs.epoch_unit).timestamp()
        except ValueError as exc:
            raise RecordError(where, inputs.metric_timestamp, f"is not a timestamp: {exc}") from None
        try:
            value = float(cells[value_col])
        except ValueError:
            raise RecordError(where, inputs.metric_value, f"is not a number: {quoted(cells[value_col])}") from None
        labels = {c: cells[i].strip() for i, c in label_cols if cells[i].strip()}
        labels.setdefault("__name__", default_name)
        yield labels, ts, value
