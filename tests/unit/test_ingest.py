"""Ingest and snapshots: hashing, immutability, and clear errors that leave nothing behind."""

import json
from datetime import datetime, timezone

import pytest

from pipelines.data.ingest import ingest_logs
from pipelines.data.records import RecordError, get_field, set_field
from pipelines.data.snapshots import SnapshotError, load_snapshot

T0 = datetime(2026, 11, 16, tzinfo=timezone.utc)
T1 = datetime(2026, 11, 17, tzinfo=timezone.utc)


def write(path, lines):
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return f"file://{path}"


def doc(ts="2026-11-16T01:00:00Z", message="ok", **labels):
    return {"@timestamp": ts, "message": message, "labels": {"anomaly": False, **labels}}


def test_dotted_and_nested_fields():
    nested = {"service": {"name": "nginx"}, "labels.root_cause": ["OOM"]}
    assert get_field(nested, "service.name") == "nginx"
    assert get_field(nested, "labels.root_cause") == ["OOM"]
    assert get_field({"a": {"b.c": 1}}, "a.b.c") == 1
    out = {}
    set_field(out, "ml.anomaly.score", 0.5)
    assert out == {"ml": {"anomaly": {"score": 0.5}}}


def test_same_input_same_hash_and_immutable(settings, corpus, tmp_path):
    a = ingest_logs(f"file://{corpus}", T0, T1, tmp_path / "a", settings)
    b = ingest_logs(f"file://{corpus}", T0, T1, tmp_path / "b", settings)
    assert a.content_hash == b.content_hash and a.manifest["row_count"] > 0
    assert set(a.manifest) >= {"source", "query", "window", "row_count", "schema", "content_hash", "created_at"}
    again = ingest_logs(f"file://{corpus}", T0, T1, tmp_path / "a", settings)  # same data: a no-op
    assert again.content_hash == a.content_hash
    with pytest.raises(SnapshotError, match="already exists with different data"):
        ingest_logs(f"file://{corpus}", T0, datetime(2026, 11, 18, tzinfo=timezone.utc), tmp_path / "a", settings)
    assert load_snapshot(tmp_path / "a").manifest["row_count"] == a.manifest["row_count"]
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_window_is_half_open(settings, tmp_path):
    src = write(tmp_path / "w.ndjson", [doc("2026-11-16T00:00:00Z"), doc("2026-11-16T23:59:59Z"), doc("2026-11-17T00:00:00Z")])
    snap = ingest_logs(src, T0, T1, tmp_path / "s", settings)
    assert snap.manifest["row_count"] == 2


def test_parquet_source_with_dotted_columns(settings, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"@timestamp": "2026-11-16T01:00:00Z", "message": "x", "labels.anomaly": 1,
                                          "labels.root_cause": ["OOM"]}]), tmp_path / "l.parquet")
    snap = ingest_logs(f"file://{tmp_path / 'l.parquet'}", T0, T1, tmp_path / "s", settings)
    row = snap.read().iloc[0]
    assert bool(row["anomaly"]) is True and list(row["root_cause"]) == ["OOM"]


@pytest.mark.parametrize("lines, match", [
    ([doc(), '{"@timestamp": "2026-11-16T02:00:00Z", "message": '], r"bad\.ndjson:2: field '\(line\)' is not valid JSON"),
    ([doc(), {"@timestamp": "2026-11-16T02:00:00Z", "labels": {"anomaly": 0}}], r"bad\.ndjson:2: field 'message' is missing"),
    ([doc(), doc(anomaly="maybe")], r"bad\.ndjson:2: field 'labels\.anomaly' has an unknown label value"),
    ([doc(root_cause=["Cosmic_Ray"])], r"bad\.ndjson:1: field 'labels\.root_cause' has label\(s\) not in the label space: Cosmic_Ray"),
    ([doc("yesterday")], r"bad\.ndjson:1: field '@timestamp' is not a timestamp: 'yesterday' is neither ISO-8601"),
])
def test_bad_input_names_line_and_field_and_leaves_nothing(settings, tmp_path, lines, match):
    src = write(tmp_path / "bad.ndjson", lines)
    with pytest.raises(RecordError, match=match):
        ingest_logs(src, T0, T1, tmp_path / "snap", settings)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.ndjson"]


def test_empty_window_is_an_error(settings, corpus, tmp_path):
    with pytest.raises(SnapshotError, match="empty window"):
        ingest_logs(f"file://{corpus}", datetime(2030, 1, 1, tzinfo=timezone.utc), datetime(2030, 1, 2, tzinfo=timezone.utc),
                    tmp_path / "snap", settings)
    assert not (tmp_path / "snap").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".snap")]


def test_cli_error_is_one_clear_line(home, tmp_path, capsys):
    from nightshift.cli import main

    src = write(tmp_path / "bad.ndjson", [doc(), "{not json"])
    code = main(["ingest", "logs", "--source", src, "--start", "2026-11-16", "--end", "2026-11-17", "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 2 and "bad.ndjson:2" in err and "Traceback" not in err
