"""Fuzzed inputs: every file reader and the document mapping either give rows the snapshot schema accepts, or raise
nightshift's own error, one line naming the record (file and line or row, or the document's `index/id`) and the field.

The inputs: random bytes; documents with random types in every field, missing fields, huge numbers, NaN and
infinities, bad and out-of-range timestamps, lone surrogates, objects where strings belong; bad UTF-8, broken CSV
quoting, damaged gzip streams and Parquet files. Most generated values are good and about one in five is odd, so
that records get past their first field and the later ones are fuzzed too. Any exception other than nightshift's
own is a bug in a reader; hypothesis reports the smallest input that raises it.

Reproducible and bounded: `derandomize` fixes the examples (no example database), and each test's `max_examples`
keeps the file well under a minute on two cores. `pytest --hypothesis-show-statistics` shows how the examples ended
(read, or refused with which field).
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import json
import re
from dataclasses import asdict
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Iterable

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from nightshift_models.label_space import load_label_space
from pipelines.config import Settings
from pipelines.data.ingest import log_rows
from pipelines.data.records import RecordError, set_field, to_row
from pipelines.data.snapshots import LOG_SCHEMA
from pipelines.errors import NightshiftError
from pipelines.sources.elastic.writer import DocRef
from pipelines.sources.logs import FileLogSource
from pipelines.sources.prometheus import FileMetricSource, open_metric_source

SETTINGS = Settings()
FIELDS = SETTINGS.fields
SHOW = SETTINGS.inputs.show_chars
LABELS = sorted(load_label_space(None).as_set())
# A record's own fields, and the two that stand for the whole record: a line that is no document, a document that is no object.
RECORD_FIELDS = {*asdict(FIELDS).values(), "(line)", "(document)"}
# An error line: where, field, problem, a value cut to `inputs.show_chars`, and a hint; never the whole value.
MAX_MESSAGE = SHOW + 600

FUZZ = settings(deadline=None, derandomize=True, database=None, print_blob=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def mostly(good: st.SearchStrategy, odd: st.SearchStrategy, odds: int = 5) -> st.SearchStrategy:
    """A `good` value, and one time in `odds` an `odd` one."""
    return st.integers(0, odds - 1).flatmap(lambda i: odd if i == 0 else good)


# ---- values ------------------------------------------------------------------------------------------------

TEXT = st.text(alphabet=st.characters(exclude_categories=()), max_size=12)  # lone surrogates included
GOOD_TEXT = st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=20)  # UTF-8 holds no lone surrogate
LONG_TEXT = st.sampled_from(["y" * 26_200, "é" * 5_000, "line\n" * 1_000])
HUGE_NUMBERS = st.sampled_from([10**20, -(10**20), 2**63, -(2**63) - 1, 10**400, -(10**400), 1e308, -1e308, 5e-324])
SCALARS = st.none() | st.booleans() | st.integers() | HUGE_NUMBERS | st.floats() | TEXT
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
                           max_leaves=6)

GOOD_TIMESTAMPS = st.one_of(
    st.datetimes(min_value=datetime(1973, 3, 4), max_value=datetime(2100, 1, 1), timezones=st.sampled_from([None, timezone.utc]))
    .map(lambda t: t.isoformat()),
    st.integers(10**11, 4 * 10**12),  # epoch milliseconds
    st.floats(1e8, 4e9),  # epoch seconds
)
ODD_TIMESTAMPS = st.one_of(
    st.sampled_from(["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "0001-01-01", "9999-12-31T23:59:59.999999Z",
                     "2026-13-45T00:00:00Z", "2026-02-30", "", " ", "nan", "inf", "-1", "1e400", "1e-400", "0x10", "1_000",
                     "9" * 30, "9" * 400, "9" * 5_000, "١٧٩٤٧٨٧٤٨٦", "+1794787486.357"]),
    st.datetimes(timezones=st.sampled_from([None, timezone.utc])).map(lambda t: t.isoformat()),
    st.integers(), st.floats(), HUGE_NUMBERS, TEXT, JSON_VALUES,
)
GOOD_ANOMALY = st.sampled_from([True, False, 0, 1, 1.0, "true", "false", "1", "0", "-", "normal", " Anomalous ", "", None])
ODD_ANOMALY = st.sampled_from(["maybe", 2, 0.5, float("nan")]) | JSON_VALUES
GOOD_CAUSES = st.lists(st.sampled_from(LABELS), max_size=3)
ODD_CAUSES = st.one_of(st.lists(st.sampled_from([*LABELS, "Cosmic_Ray", "", " "]), max_size=4), JSON_VALUES,
                       st.just([f"L{i}" for i in range(5_000)]))
GOOD_CONTEXT = st.none() | GOOD_TEXT

FIELD_VALUES = {
    FIELDS.timestamp: mostly(GOOD_TIMESTAMPS, ODD_TIMESTAMPS),
    FIELDS.message: mostly(GOOD_TEXT | st.lists(GOOD_TEXT, min_size=1, max_size=3),
                           TEXT | LONG_TEXT | st.just("\ud800 lone surrogate") | JSON_VALUES),
    FIELDS.anomaly: mostly(GOOD_ANOMALY, ODD_ANOMALY),
    FIELDS.root_cause: mostly(GOOD_CAUSES | GOOD_CAUSES.map(",".join), ODD_CAUSES),
    **{name: mostly(GOOD_CONTEXT, JSON_VALUES | LONG_TEXT | st.just("\udfff")) for name in (FIELDS.service, FIELDS.level,
                                                                                            FIELDS.host, FIELDS.job_id)},
}


@st.composite
def documents(draw) -> dict:
    """A log document: each contract field present (nested or dotted) or now and then not, among other keys."""
    doc: dict = draw(st.dictionaries(st.sampled_from(["service", "labels", "log", "host", "extra"]) | TEXT, JSON_VALUES,
                                     max_size=2))
    for path, values in FIELD_VALUES.items():
        if draw(st.integers(0, 9)) == 0:
            continue  # missing
        value = draw(values)
        if draw(st.booleans()):
            doc[path] = value
        else:
            set_field(doc, path, value)
    return doc


# ---- the property ------------------------------------------------------------------------------------------

def outcome(read: Callable[[], Any]) -> NightshiftError | None:
    """None when `read` succeeds, the error when it raises nightshift's own; anything else propagates (a bug)."""
    try:
        read()
    except NightshiftError as exc:
        event(f"refused: {type(exc).__name__} {getattr(exc, 'field', '')}")
        return exc
    event("read")
    return None


def assert_names_record_and_field(exc: NightshiftError, where: str, columns: Iterable[str] = ()) -> None:
    """One line, bounded, starting with the record; a RecordError also names one of the record's fields (or one of
    the file's `columns`)."""
    message = str(exc)
    assert len(message.splitlines()) == 1, message
    assert len(message) <= MAX_MESSAGE, f"{len(message):,} characters: {message[:400]}"
    assert message.startswith(where), message
    if isinstance(exc, RecordError):
        assert exc.field in RECORD_FIELDS | set(columns), message
        assert message.startswith(f"{exc.where}: field '{exc.field}' "), message


def snapshot_rows(rows: list[dict]) -> None:
    """The rows as the snapshot writer takes them: the contract's Arrow schema refuses anything off it."""
    pa.Table.from_pylist(rows, schema=LOG_SCHEMA)


def read_logs(path: Path, settings_: Settings = SETTINGS) -> None:
    """A whole log file through the ingest path: its reader, the document mapping, the snapshot schema."""
    snapshot_rows(list(log_rows(FileLogSource(f"file://{path}", settings_), settings_, None, None)))


def read_metrics(path: Path) -> None:
    """A whole metric history file, OpenMetrics or CSV by its content."""
    source = open_metric_source(f"file://{path}", SETTINGS)
    assert isinstance(source, FileMetricSource)  # CsvMetricSource too
    source.metric_names()


def with_format(fmt: str) -> Settings:
    return dataclasses.replace(SETTINGS, inputs=dataclasses.replace(SETTINGS.inputs, format=fmt))


def pack(data: bytes, how: str) -> bytes:
    """`data` as it is (plain), gzip-compressed, or gzip-compressed and cut short (a broken download)."""
    return data if how == "plain" else gzip.compress(data) if how == "gzip" else gzip.compress(data)[:-9]


PACKING = mostly(st.just("plain"), st.sampled_from(["gzip", "cut"]), odds=3)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


# ---- the document mapping (Elasticsearch hits, and every reader's documents) --------------------------------

@settings(FUZZ, max_examples=600)
@given(doc=mostly(documents(), JSON_VALUES, odds=10))
def test_document_mapping_gives_a_row_or_names_the_document_and_field(doc):
    where = DocRef("logs-2026.11.16", "Qm9vdA", routing="r1")
    error = outcome(lambda: snapshot_rows([to_row(doc, FIELDS, where, frozenset(LABELS))]))
    if error is not None:
        assert isinstance(error, RecordError), error
        assert_names_record_and_field(error, "logs-2026.11.16/Qm9vdA: field '")


# ---- NDJSON ------------------------------------------------------------------------------------------------

LINES = mostly(
    documents().map(lambda d: json.dumps(d, default=str).encode("utf-8", "surrogatepass")),
    st.one_of(JSON_VALUES.map(lambda v: json.dumps(v).encode("utf-8", "surrogatepass")), st.binary(max_size=40),
              st.sampled_from([b"", b"   ", b"{", b"[" * 100_000, b"1" * 5_000, b'{"message": ' + b"9" * 5_000 + b"}",
                               b'{"@timestamp": "\\ud800", "message": "x"}', b"\x00", b"NaN", b"-Infinity"])),
)


@settings(FUZZ, max_examples=200)
@given(lines=st.lists(LINES, min_size=1, max_size=4), newline=st.sampled_from([b"\n", b"\r\n"]), bom=st.booleans(),
       packing=PACKING)
def test_ndjson_gives_rows_or_names_the_line_and_field(folder, lines, newline, bom, packing):
    path = folder / "logs.ndjson"
    path.write_bytes(pack(b"\xef\xbb\xbf" * bom + newline.join(lines) + newline, packing))
    error = outcome(lambda: read_logs(path, with_format("ndjson")))
    if error is not None:
        assert_names_record_and_field(error, "logs.ndjson:" if packing == "plain" else "logs.ndjson")


@settings(FUZZ, max_examples=150)
@given(data=st.binary(max_size=200) | st.sampled_from([b"PAR1", b"\x1f\x8b", b"\x1f\x8bPAR1", b"[1,2]", b"{}\n"]))
def test_any_bytes_are_read_by_content_or_refused_naming_the_file(folder, data):
    path = folder / "anything.bin"
    path.write_bytes(data)
    error = outcome(lambda: read_logs(path))
    if error is not None:
        assert_names_record_and_field(error, "anything.bin")


# ---- CSV and TSV with a header ----------------------------------------------------------------------------

ODD_CELLS = st.one_of(TEXT.map(lambda s: s.replace("\ud800", "")), LONG_TEXT, ODD_TIMESTAMPS.map(str),
                      st.sampled_from(['"', '""', 'a"b', "x\ty", "x,y", "x\ny", "\x00", "\r"]))
CELLS = {
    FIELDS.timestamp: GOOD_TIMESTAMPS.map(str),
    FIELDS.message: GOOD_TEXT.filter(lambda s: s.strip() and not set(s) & set('"\t\n\r,')),
    FIELDS.anomaly: GOOD_ANOMALY.map(lambda v: "" if v is None else str(v)),
    FIELDS.root_cause: GOOD_CAUSES.map(",".join),
}


@st.composite
def delimited_files(draw, delimiter: str) -> tuple[list[str], list[list[str]]]:
    """A header (now and then without the timestamp or message column, or with odd names) and rows of cells, most
    of them good for their column."""
    header = [c for c in (FIELDS.timestamp, FIELDS.message) if draw(st.integers(0, 9))]
    header += draw(st.lists(mostly(st.sampled_from([FIELDS.anomaly, FIELDS.root_cause, FIELDS.service]),
                                   st.sampled_from(["labels", "", "a\nb", FIELDS.message])), max_size=3, unique=True))
    header = draw(st.permutations(header)) or [draw(TEXT)]
    rows = []
    for _ in range(draw(st.integers(0, 4))):
        cells = [draw(mostly(CELLS.get(c, GOOD_TEXT.map(lambda s: s.strip())), ODD_CELLS)) for c in header]
        rows.append(draw(mostly(st.just(cells), st.just([*cells, "extra"]) | st.just(cells[1:]), odds=8)))
    return header, rows


@settings(FUZZ, max_examples=200)
@given(data=st.data(), delimiter=st.sampled_from([",", "\t"]), quoted=st.booleans(), bad_utf8=mostly(st.just(False), st.just(True)),
       packing=PACKING)
def test_csv_and_tsv_give_rows_or_name_the_line_and_field(folder, data, delimiter, quoted, bad_utf8, packing):
    header, rows = data.draw(delimited_files(delimiter))
    buffer = io.StringIO()
    if quoted:
        csv.writer(buffer, delimiter=delimiter, lineterminator="\n").writerows([header, *rows])
    else:
        buffer.write("".join(delimiter.join(line) + "\n" for line in [header, *rows]))
    name = "logs.csv" if delimiter == "," else "logs.tsv"
    path = folder / name
    path.write_bytes(pack(buffer.getvalue().encode("utf-8", "surrogatepass") + b"\xff\xfe,\n" * bad_utf8, packing))
    error = outcome(lambda: read_logs(path, with_format("csv" if delimiter == "," else "tsv")))
    if error is not None:
        assert_names_record_and_field(error, name, header)


# ---- the seed's headerless TSV forms ----------------------------------------------------------------------

GOOD_LEADS = st.datetimes(min_value=datetime(1973, 3, 4), max_value=datetime(2100, 1, 1)).map(lambda t: f"{t:%Y-%m-%d %H:%M:%S}")
ODD_LEADS = st.sampled_from(["0001-01-01 00:00:00+01:00", "9999-12-31 23:59:59-0100", "2025-13-10 12:30:05", "2025-02-30 00:00:00",
                             "0000-01-01 00:00:00", "2025-09-10 25:61:61", "2025-09-10 12:30:05+99:99", "", "no time here"])
SEED_TEXT = st.builds(lambda lead, level, rest: f"{lead} {level}{rest}", mostly(GOOD_LEADS, ODD_LEADS),
                      st.sampled_from(["INFO ", "[ERROR]: ", "", "warn"]), mostly(GOOD_TEXT, TEXT | LONG_TEXT))
SEED_LABELS = {"anomaly-tsv": mostly(GOOD_ANOMALY.map(lambda v: "" if v is None else str(v)), ODD_ANOMALY.map(str)),
               "rca-tsv": mostly(GOOD_CAUSES.map(",".join), ODD_CAUSES.map(str))}


@settings(FUZZ, max_examples=200)
@given(data=st.data(), form=st.sampled_from(["anomaly-tsv", "rca-tsv"]), packing=PACKING)
def test_seed_tsv_forms_give_rows_or_name_the_line_and_field(folder, data, form, packing):
    lines = data.draw(st.lists(st.tuples(SEED_LABELS[form], mostly(st.just("\t"), st.sampled_from(["", "\t\t", " "])), SEED_TEXT),
                               min_size=1, max_size=4))
    path = folder / "seed.tsv"
    text = "".join(f"{label}{tab}{rest}".replace("\n", " ").replace("\r", " ") + "\n" for label, tab, rest in lines)
    path.write_bytes(pack(text.encode("utf-8", "surrogatepass"), packing))
    error = outcome(lambda: read_logs(path, with_format(form)))
    if error is not None:
        assert_names_record_and_field(error, "seed.tsv")


# ---- Parquet ------------------------------------------------------------------------------------------------

INT64 = st.integers(-(2**63), 2**63 - 1)


def three(values: st.SearchStrategy) -> st.SearchStrategy:
    """A column of three rows."""
    return st.lists(values | st.none(), min_size=3, max_size=3)


# Any Arrow type with any values it holds: out-of-range times and dates included.
ODD_COLUMNS: list[tuple[pa.DataType, st.SearchStrategy]] = [
    (pa.string(), three(TEXT.map(lambda s: s.replace("\ud800", "")) | LONG_TEXT)),
    (pa.large_string(), three(TEXT.map(lambda s: s.replace("\ud800", "")))),
    (pa.binary(), three(st.binary(max_size=8))),
    (pa.int64(), three(INT64)),
    (pa.float64(), three(st.floats())),
    (pa.bool_(), three(st.booleans())),
    (pa.decimal128(38, 4), three(st.decimals(allow_nan=False, allow_infinity=False, places=4,
                                             min_value=Decimal("-1e30"), max_value=Decimal("1e30")))),
    (pa.list_(pa.string()), three(st.lists(st.sampled_from(LABELS) | st.none(), max_size=2))),
    (pa.map_(pa.string(), pa.string()), three(st.dictionaries(st.sampled_from(["a", "b"]), st.sampled_from(["x", "y"]),
                                                              max_size=2).map(lambda d: list(d.items())))),
    (pa.struct([("name", pa.string())]), three(st.fixed_dictionaries({"name": st.sampled_from(["nginx", "db"]) | st.none()}))),
    (pa.null(), st.just([None, None, None])),
    (pa.date32(), three(st.integers(-(2**31), 2**31 - 1))),
    (pa.date64(), three(INT64)),
    (pa.duration("s"), three(INT64)),
    # Parquet stores seconds as milliseconds: second values beyond int64 milliseconds cannot be written at all
    *[(pa.timestamp(unit, tz), three(st.integers(-(2**63 // 1000), (2**63 - 1) // 1000) if unit == "s" else INT64))
      for unit in ("s", "ms", "us", "ns") for tz in (None, "UTC", "+05:30")],
]
# The types and values each contract column holds in files people have.
GOOD_COLUMNS: dict[str, list[tuple[pa.DataType, st.SearchStrategy]]] = {
    FIELDS.timestamp: [(pa.timestamp("ms", "UTC"), three(st.integers(10**11, 4 * 10**12))),
                       (pa.timestamp("ns"), three(st.integers(10**17, 4 * 10**18))),
                       (pa.string(), three(GOOD_TIMESTAMPS.filter(lambda t: isinstance(t, str)))),
                       (pa.int64(), three(st.integers(10**11, 4 * 10**12)))],
    FIELDS.message: [(pa.string(), three(GOOD_TEXT)), (pa.list_(pa.string()), three(st.lists(GOOD_TEXT, min_size=1, max_size=2)))],
    FIELDS.anomaly: [(pa.bool_(), three(st.booleans())), (pa.int64(), three(st.integers(0, 1))),
                     (pa.string(), three(st.sampled_from(["true", "false", "-", "normal"])))],
    FIELDS.root_cause: [(pa.list_(pa.string()), three(GOOD_CAUSES)), (pa.string(), three(GOOD_CAUSES.map(",".join)))],
    FIELDS.service: [(pa.string(), three(GOOD_TEXT)), (pa.dictionary(pa.int32(), pa.string()), three(st.sampled_from(["a", "b"])))],
}


def arrow_array(kind: pa.DataType, values: list) -> pa.Array:
    """`values` as an array of `kind`; times and durations are given as their integer storage."""
    if pa.types.is_temporal(kind):
        return pa.array(values, pa.int32() if kind == pa.date32() else pa.int64()).view(kind)
    return pa.array(values, kind)


@st.composite
def parquet_tables(draw) -> pa.Table:
    """Three rows; each contract column (a dotted name, or inside a `labels` struct) of a good type, now and then
    of any type or absent."""
    columns: dict[str, pa.Array] = {}
    for name, good in GOOD_COLUMNS.items():
        if draw(st.integers(0, 9)) == 0:
            continue
        kind, values = draw(mostly(st.sampled_from(good), st.sampled_from(ODD_COLUMNS)))
        columns[name] = arrow_array(kind, draw(values))
    if draw(st.booleans()) and FIELDS.anomaly in columns:
        labels = {"anomaly": columns.pop(FIELDS.anomaly)}
        if FIELDS.root_cause in columns:
            labels["root_cause"] = columns.pop(FIELDS.root_cause)
        columns["labels"] = pa.StructArray.from_arrays(list(labels.values()), list(labels))
    return pa.table(columns) if columns else pa.table({"other": [1, 2, 3]})


@settings(FUZZ, max_examples=150)
@given(table=parquet_tables(),
       damage=mostly(st.none(), st.tuples(st.floats(0.05, 0.95), st.binary(min_size=1, max_size=8)), odds=4))
def test_parquet_gives_rows_or_names_the_row_and_field(folder, table, damage):
    path = folder / "logs.parquet"
    pq.write_table(table, path)
    if damage is not None:  # bytes overwritten inside the file: the footer may still read, a page not
        data = bytearray(path.read_bytes())
        at = int(len(data) * damage[0])
        data[at:at + len(damage[1])] = damage[1]
        path.write_bytes(bytes(data))
    error = outcome(lambda: read_logs(path, with_format("parquet")))
    if error is not None:
        assert_names_record_and_field(error, "logs.parquet", table.column_names)


# ---- metric files: OpenMetrics text, metric CSV -------------------------------------------------------------

GOOD_VALUES = st.floats(allow_nan=False, allow_infinity=False).map(repr) | st.sampled_from(["NaN", "+Inf", "-Inf", "0", "1e3"])
GOOD_TIMES = st.integers(10**8, 4 * 10**9).map(str) | st.integers(10**11, 4 * 10**12).map(str)  # seconds, milliseconds
ODD_NUMBERS = st.sampled_from(["nan", "inf", "1e400", "-1e400", "1e-400", "0x10", "1_000", "9" * 400, "abc", "∞", ""]) \
    | st.floats().map(repr) | st.integers().map(str) | TEXT.map(lambda s: s.replace("\ud800", "").strip() or "x")
SAMPLE_LINES = mostly(
    st.builds(lambda name, labels, value, ts: f"{name}{labels} {value} {ts}",
              st.sampled_from(["up", "node_cpu_seconds", "a:b", "_x"]),
              mostly(st.sampled_from(["", '{a="b"}', '{a="b",c="d\\"e"}', '{a="x\\\\"}', '{a="\\n"}']),
                     st.sampled_from(["{a=b}", "{}", '{a="b"', '{="b"}', '{a="' + "v" * 5_000 + '"}']) | TEXT.map(lambda s: "{" + s + "}")),
              mostly(GOOD_VALUES, ODD_NUMBERS), mostly(GOOD_TIMES, ODD_NUMBERS)),
    st.sampled_from(["# TYPE up gauge", "# EOF", "", "   ", "up 1", "9bad 1 2", "é 1 2"]) | TEXT,
)


@settings(FUZZ, max_examples=200)
@given(lines=st.lists(SAMPLE_LINES, min_size=1, max_size=5), packing=PACKING, tail=mostly(st.just(b""), st.binary(max_size=6)))
def test_openmetrics_gives_series_or_names_the_line(folder, lines, packing, tail):
    path = folder / "history.om"
    path.write_bytes(pack("".join(line.replace("\n", " ") + "\n" for line in lines).encode("utf-8", "surrogatepass") + tail,
                          packing))
    error = outcome(lambda: read_metrics(path))
    if error is not None:
        assert_names_record_and_field(error, "history.om")


@st.composite
def metric_csvs(draw) -> tuple[list[str], list[list[str]]]:
    """A `timestamp,value[,labels]` header (now and then without one of them, or repeating one) and rows of cells."""
    header = draw(mostly(st.permutations(["timestamp", "value", *draw(st.lists(st.sampled_from(["host", "__name__"]), unique=True))]),
                         st.lists(st.sampled_from(["timestamp", "value", "host", "", "timestamp"]), min_size=1, max_size=4)))
    good = {"timestamp": GOOD_TIMES | GOOD_TIMESTAMPS.map(str), "value": GOOD_VALUES}
    rows = [[draw(mostly(good.get(c, GOOD_TEXT.map(lambda s: s.strip())), ODD_NUMBERS | ODD_CELLS)) for c in header]
            for _ in range(draw(st.integers(0, 4)))]
    return header, rows


@settings(FUZZ, max_examples=150)
@given(table=metric_csvs(), delimiter=st.sampled_from([",", "\t", ";"]), bad_utf8=mostly(st.just(False), st.just(True)),
       packing=PACKING)
def test_metric_csv_gives_series_or_names_the_line_and_field(folder, table, delimiter, bad_utf8, packing):
    header, rows = table
    buffer = io.StringIO()
    csv.writer(buffer, delimiter=delimiter, lineterminator="\n").writerows([header, *rows])
    path = folder / "metric.csv"
    path.write_bytes(pack(buffer.getvalue().encode("utf-8", "surrogatepass") + b"1,\xff\n" * bad_utf8, packing))
    error = outcome(lambda: read_metrics(path))
    if error is not None:
        assert_names_record_and_field(error, "metric.csv", header)


# ---- what the fuzz found, pinned --------------------------------------------------------------------------

@pytest.mark.parametrize("value, problem", [
    ("0001-01-01T00:00:00+01:00", r"'0001-01-01T00:00:00\+01:00' is out of range: in UTC it falls outside the years 1 to 9999"),
    (10**400, r"1000+… \(401 chars\) is out of range as epoch ns"),
    ("9" * 5_000, r"'9999+… \(5,002 chars\) is out of range as an epoch number"),
    ("x" * 26_200, r"'xxx+… \(26,202 chars\) is neither ISO-8601"),
], ids=["offset-before-year-1", "huge-int", "huge-digit-string", "long-text"])
def test_a_timestamp_out_of_range_or_huge_names_the_field_with_the_value_cut(value, problem):
    with pytest.raises(RecordError, match=rf"^idx/1: field '@timestamp' is not a timestamp: {problem}"):
        to_row({"@timestamp": value, "message": "m"}, FIELDS, "idx/1")


def test_a_lone_surrogate_names_the_field():
    """JSON's `\\ud800` escapes decode to text that UTF-8 (and so the snapshot) cannot hold."""
    with pytest.raises(RecordError, match=r"^idx/1: field 'message' is not valid Unicode text \(a lone surrogate at character 3\)$"):
        to_row({"@timestamp": "2026-11-16T00:00:00Z", "message": "ab\ud800c"}, FIELDS, "idx/1")
    with pytest.raises(RecordError, match=r"^idx/1: field 'host\.name' is not valid Unicode text"):
        to_row({"@timestamp": "2026-11-16T00:00:00Z", "message": "m", "host": {"name": "\udfff"}}, FIELDS, "idx/1")


def test_a_line_nested_too_deep_or_with_a_huge_number_names_the_line(tmp_path):
    path = tmp_path / "deep.ndjson"
    path.write_bytes(b'{"@timestamp": "2026-11-16T00:00:00Z", "message": "ok"}\n' + b"[" * 100_000 + b"\n")
    with pytest.raises(RecordError, match=r"^deep\.ndjson:2: field '\(line\)' is not valid JSON: nested deeper than"):
        read_logs(path)
    path.write_bytes(b'{"@timestamp": ' + b"9" * 5_000 + b', "message": "ok"}\n')
    with pytest.raises(RecordError, match=r"^deep\.ndjson:1: field '\(line\)' is not valid JSON: a number of more than 4,300 digits$"):
        read_logs(path)


def test_parquet_times_beyond_the_year_9999_name_the_row_and_column(tmp_path):
    times = pa.array([1_794_787_486, 2**50], pa.int64()).view(pa.timestamp("s"))  # 2**50 s: the year 35 million
    pq.write_table(pa.table({"@timestamp": times, "message": ["a", "b"]}), tmp_path / "far.parquet")
    with pytest.raises(RecordError, match=r"^far\.parquet:row 2: field '@timestamp' has a timestamp\[ms\] value that is out of range"):
        read_logs(tmp_path / "far.parquet")


def test_damaged_files_name_the_file_in_one_line(tmp_path):
    pq.write_table(pa.table({"@timestamp": ["2026-11-16T00:00:00Z"] * 100, "message": ["m"] * 100}), tmp_path / "bad.parquet")
    data = bytearray((tmp_path / "bad.parquet").read_bytes())
    data[-60:-40] = b"\x80" * 20  # inside the footer
    (tmp_path / "bad.parquet").write_bytes(bytes(data))
    with pytest.raises(NightshiftError, match=r"^bad\.parquet: is not a readable Parquet file \(.*\)$") as caught:
        read_logs(tmp_path / "bad.parquet")
    assert len(str(caught.value).splitlines()) == 1
    (tmp_path / "cut.csv").write_bytes(gzip.compress(b"@timestamp,message\n" + b"2026-11-16T00:00:00Z,m\n" * 20_000)[:-40])
    with pytest.raises(NightshiftError, match=r"^cut\.csv: the gzip stream is damaged after line \d+ \("):
        read_logs(tmp_path / "cut.csv")
    (tmp_path / "metric.csv").write_bytes(b"timestamp,value\n1794787486,1\n1794787487,\xff\n")
    with pytest.raises(RecordError, match=r"^metric\.csv:3: field '\(line\)' is not UTF-8 text \(byte 12\)$"):
        read_metrics(tmp_path / "metric.csv")


def test_an_openmetrics_line_names_the_part_it_cannot_read(tmp_path):
    path = tmp_path / "h.om"
    for line, match in (("up 1 1e400", r"^h\.om:1: the timestamp '1e400' is not a time$"),
                        ("up abc 1794787486", r"^h\.om:1: the value 'abc' is not a number$"),
                        ('up{a="' + "v" * 5_000 + "} 1 2", r"^h\.om:1: cannot read the label set '\{a=\"vvv+… \(5,007 chars\)$")):
        path.write_text(line + "\n")
        with pytest.raises(NightshiftError, match=match):
            read_metrics(path)


def test_an_error_about_a_long_value_is_one_short_line():
    labels = [f"L{i}\n" for i in range(5_000)]
    with pytest.raises(RecordError) as caught:
        to_row({"@timestamp": "2026-11-16T00:00:00Z", "message": "m", "labels": {"root_cause": labels}}, FIELDS, "idx/1",
               frozenset(LABELS))
    message = str(caught.value)
    assert len(message.splitlines()) == 1 and len(message) < SHOW + 200
    assert re.search(r"label\(s\) not in the label space: L0\\n, L1\\n, .*… \([\d,]+ chars\)$", message)
