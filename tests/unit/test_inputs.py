"""The inputs people have: every file format read by content, one timestamp parser, label spellings, metric CSVs."""

import gzip
import json
from datetime import datetime, timezone

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.data.ingest import ingest_logs
from pipelines.data.records import RecordError
from pipelines.sources.logs import FileLogSource

T0 = datetime(2026, 11, 16, tzinfo=timezone.utc)
T1 = datetime(2026, 11, 17, tzinfo=timezone.utc)
DOCS = [
    {"@timestamp": "2026-11-16T01:00:00Z", "message": "GET /healthz 200", "service": {"name": "nginx"}, "labels": {"anomaly": False}},
    {"@timestamp": "2026-11-16T02:00:00.250Z", "message": "worker crashed", "log.level": "ERROR",
     "labels": {"anomaly": True, "root_cause": ["OOM"], "job_id": "j1"}},
]
EXPECTED = [
    {"timestamp": pd.Timestamp("2026-11-16T01:00:00Z"), "message": "GET /healthz 200", "service": "nginx", "level": None,
     "anomaly": False, "root_cause": [], "job_id": None},
    {"timestamp": pd.Timestamp("2026-11-16T02:00:00.250Z"), "message": "worker crashed", "service": None, "level": "ERROR",
     "anomaly": True, "root_cause": ["OOM"], "job_id": "j1"},
]


def rows(snapshot) -> list[dict]:
    """The snapshot's rows as Python values (None where empty)."""
    columns = ["timestamp", "message", "service", "level", "anomaly", "root_cause", "job_id"]
    return pq.read_table(snapshot.path / "data.parquet", columns=columns).to_pylist()


def ndjson_bytes(docs, newline="\n") -> bytes:
    return "".join(json.dumps(d) + newline for d in docs).encode()


# ---- NDJSON, however it is packed -----------------------------------------------------------------------

@pytest.mark.parametrize("name, pack", [
    ("plain.ndjson", lambda b: b),
    ("packed.ndjson.gz", gzip.compress),
    ("bom.ndjson", lambda b: b"\xef\xbb\xbf" + b),
    ("crlf.ndjson", lambda b: b.replace(b"\n", b"\r\n")),
    ("everything.jsonl.gz", lambda b: gzip.compress(b"\xef\xbb\xbf" + b.replace(b"\n", b"\r\n"))),
    ("export.txt", lambda b: b),  # read by content, not by suffix
    ("no-suffix", gzip.compress),
])
def test_ndjson_plain_gzip_bom_crlf_and_any_suffix_give_the_same_rows(settings, tmp_path, name, pack):
    (tmp_path / name).write_bytes(pack(ndjson_bytes(DOCS)))
    snap = ingest_logs(f"file://{tmp_path / name}", T0, T1, tmp_path / "snap", settings)
    assert rows(snap) == EXPECTED


def test_bad_lines_inside_a_gzip_file_name_the_line(settings, tmp_path):
    (tmp_path / "bad.ndjson.gz").write_bytes(gzip.compress(ndjson_bytes(DOCS) + b'{"@timestamp": "2026-11-16T03:00:00Z"}\n\xff\xfe\n'))
    with pytest.raises(RecordError, match=r"^bad\.ndjson\.gz:3: field 'message' is missing$"):
        ingest_logs(f"file://{tmp_path / 'bad.ndjson.gz'}", T0, T1, tmp_path / "snap", settings)
    (tmp_path / "bad2.ndjson.gz").write_bytes(gzip.compress(ndjson_bytes(DOCS) + b"\xff\xfe\n"))
    with pytest.raises(RecordError, match=r"^bad2\.ndjson\.gz:3: field '\(line\)' is not UTF-8 text \(byte 1\)$"):
        ingest_logs(f"file://{tmp_path / 'bad2.ndjson.gz'}", T0, T1, tmp_path / "snap", settings)
    for copies, match in ((50, r"^cut\.ndjson\.gz: the gzip stream is damaged \(Compressed file ended"),
                          (2000, r"^cut\.ndjson\.gz: the gzip stream is damaged after line \d+ \(Compressed file ended")):
        (tmp_path / "cut.ndjson.gz").write_bytes(gzip.compress(ndjson_bytes(DOCS * copies))[:-30])  # a cut download
        with pytest.raises(ValueError, match=match):
            ingest_logs(f"file://{tmp_path / 'cut.ndjson.gz'}", T0, T1, tmp_path / "snap", settings)
    assert not (tmp_path / "snap").exists()


def test_a_json_array_and_an_unknown_format_are_one_clear_line(settings, tmp_path):
    (tmp_path / "array.json").write_text(json.dumps(DOCS))
    with pytest.raises(ValueError, match=r"array\.json: holds a JSON array; .* jq -c '\.\[\]' array\.json"):
        FileLogSource(f"file://{tmp_path / 'array.json'}", settings)
    (tmp_path / "notes.txt").write_text("just some words\n")
    with pytest.raises(ValueError, match=r"notes\.txt: cannot tell its format .* --format \(setting inputs\.format\)"):
        FileLogSource(f"file://{tmp_path / 'notes.txt'}", settings)


def test_a_folder_or_glob_reads_every_file_by_name(settings, tmp_path):
    folder = tmp_path / "exports"
    folder.mkdir()
    (folder / "a.ndjson").write_bytes(ndjson_bytes(DOCS[:1]))
    (folder / "b.ndjson.gz").write_bytes(gzip.compress(ndjson_bytes(DOCS[1:])))
    (folder / ".hidden.ndjson").write_text("not read\n")
    for uri in (f"file://{folder}", f"file://{folder}/*.ndjson*"):
        source = FileLogSource(uri, settings)
        assert [where for where, _ in source.iter_docs()] == ["a.ndjson:1", "b.ndjson.gz:1"]
    assert rows(ingest_logs(f"file://{folder}/*", T0, T1, tmp_path / "snap", settings)) == EXPECTED


# ---- Parquet: native timestamps, structs, maps ------------------------------------------------------------

@pytest.mark.parametrize("tz", [None, "UTC"])
def test_parquet_native_timestamps_and_struct_columns(settings, tmp_path, tz):
    table = pa.table({
        "@timestamp": pa.array(pd.to_datetime(["2026-11-16T01:00:00", "2026-11-16T02:00:00.250", "2026-11-17T00:00:00"], format="ISO8601").as_unit("ns"),
                               pa.timestamp("ns", tz=tz)),
        "message": ["GET /healthz 200", "worker crashed", "next day"],
        "service": pa.array([{"name": "nginx"}, None, None], pa.struct([("name", pa.string())])),
        "log": pa.array([None, {"level": "ERROR"}, None], pa.struct([("level", pa.string())])),
        "labels": pa.array([{"anomaly": False, "root_cause": [], "job_id": None},
                            {"anomaly": True, "root_cause": ["OOM"], "job_id": "j1"},
                            {"anomaly": False, "root_cause": [], "job_id": None}],
                           pa.struct([("anomaly", pa.bool_()), ("root_cause", pa.list_(pa.string())), ("job_id", pa.string())])),
        "host": pa.array([[("name", "gpu-1")], None, None], pa.map_(pa.string(), pa.string())),
    })
    pq.write_table(table, tmp_path / "logs.parquet")
    snap = ingest_logs(f"file://{tmp_path / 'logs.parquet'}", T0, T1, tmp_path / "snap", settings)  # the window filters native times
    assert rows(snap) == EXPECTED
    assert pq.read_table(snap.path / "data.parquet", columns=["host"])["host"].to_pylist() == ["gpu-1", None]  # a map column is an object, read through the dotted path


# ---- CSV and TSV with a column mapping --------------------------------------------------------------------

def test_csv_with_a_column_mapping(home, tmp_path, monkeypatch):
    from pipelines.config import load_settings

    (tmp_path / "export.csv").write_text(
        "time,text,label,causes,svc\n"
        '1794790800000,"GET /healthz 200, fine",normal,,nginx\n'
        '2026-11-16 02:00:00.250,"worker crashed\nwith a second line",abnormal,"OOM,Disk_Full",trainer\n'
        "1794787199,too early,-,,nginx\n")
    for field, column in (("TIMESTAMP", "time"), ("MESSAGE", "text"), ("ANOMALY", "label"), ("ROOT_CAUSE", "causes"), ("SERVICE", "svc")):
        monkeypatch.setenv(f"NIGHTSHIFT_FIELDS_{field}", column)
    snap = ingest_logs(f"file://{tmp_path / 'export.csv'}", T0, T1, tmp_path / "snap", load_settings())
    assert rows(snap) == [
        {**EXPECTED[0], "message": "GET /healthz 200, fine"},  # epoch milliseconds
        {**EXPECTED[1], "message": "worker crashed\nwith a second line", "service": "trainer", "level": None,
         "root_cause": ["OOM", "Disk_Full"], "job_id": None},
    ]


def test_tsv_with_a_header_and_its_errors(settings, tmp_path):
    (tmp_path / "export.tsv").write_text('@timestamp\tmessage\tlabels.anomaly\n2026-11-16T01:00:00Z\tsaid "hi", left\t0\n')
    snap = ingest_logs(f"file://{tmp_path / 'export.tsv'}", T0, T1, tmp_path / "snap", settings)
    assert rows(snap)[0]["message"] == 'said "hi", left' and rows(snap)[0]["anomaly"] is False
    (tmp_path / "short.tsv").write_text("@timestamp\tmessage\n2026-11-16T01:00:00Z\n")
    with pytest.raises(RecordError, match=r"^short\.tsv:2: field '\(line\)' has 1 cells, the header has 2$"):
        ingest_logs(f"file://{tmp_path / 'short.tsv'}", T0, T1, tmp_path / "snap2", settings)
    (tmp_path / "nots.csv").write_text("when,message\n2026-11-16T01:00:00Z,x\n")
    with pytest.raises(RecordError, match=r"^nots\.csv:1: field '@timestamp' has no column in the header \(columns: when, message\); "
                                          r"name the column with setting fields\.timestamp$"):
        ingest_logs(f"file://{tmp_path / 'nots.csv'}", T0, T1, tmp_path / "snap3", settings)


# ---- the seed project's files -----------------------------------------------------------------------------

ANOMALY_TSV = ("0\t2025-09-10 12:30:05 INFO Nginx request 200 OK\n"
               "1\t2025-09-10 12:32:00 CRITICAL Nginx worker crashed with exit code 137\n")
RCA_TSV = ("CUDA_OutOfMemory,OOM\t2025-09-10 12:30:10 ERROR RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB\n"
           "DataLoader_Stuck\t2025-09-10 12:31:30 WARN DataLoader worker (pid 1234) is killed by signal: 9\n")
SEED_DAY = (datetime(2025, 9, 10, tzinfo=timezone.utc), datetime(2025, 9, 11, tzinfo=timezone.utc))


def test_seed_log_anomaly_tsv_is_detected_and_read(settings, tmp_path):
    (tmp_path / "train.txt").write_text(ANOMALY_TSV)
    source = FileLogSource(f"file://{tmp_path / 'train.txt'}", settings)
    assert source.formats == {tmp_path / "train.txt": "anomaly-tsv"}
    assert rows(ingest_logs(source.uri, *SEED_DAY, tmp_path / "snap", settings)) == [
        {"timestamp": pd.Timestamp("2025-09-10T12:30:05Z"), "message": "Nginx request 200 OK", "service": None, "level": "INFO",
         "anomaly": False, "root_cause": [], "job_id": None},
        {"timestamp": pd.Timestamp("2025-09-10T12:32:00Z"), "message": "Nginx worker crashed with exit code 137", "service": None,
         "level": "CRITICAL", "anomaly": True, "root_cause": [], "job_id": None},
    ]


def test_seed_root_cause_tsv_is_detected_and_read_one_job_per_line(settings, tmp_path):
    (tmp_path / "train.tsv").write_text(RCA_TSV)
    snap = ingest_logs(f"file://{tmp_path / 'train.tsv'}", None, None, tmp_path / "snap", settings)  # the whole file
    assert rows(snap) == [
        {"timestamp": pd.Timestamp("2025-09-10T12:30:10Z"), "message": "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB",
         "service": None, "level": "ERROR", "anomaly": None, "root_cause": ["CUDA_OutOfMemory", "OOM"], "job_id": "train.tsv:1"},
        {"timestamp": pd.Timestamp("2025-09-10T12:31:30Z"), "message": "DataLoader worker (pid 1234) is killed by signal: 9",
         "service": None, "level": "WARN", "anomaly": None, "root_cause": ["DataLoader_Stuck"], "job_id": "train.tsv:2"},
    ]
    assert snap.manifest["window"] == {"start": "2025-09-10T12:30:10Z", "end": "2025-09-10T12:31:30.001Z"}


def test_seed_tsv_with_other_label_spellings(settings, tmp_path):
    (tmp_path / "bgl.tsv").write_text("-\t2025-09-10 12:30:05 INFO ok\nAnomaly\t2025-09-10 12:31:00 ERROR bad\n"
                                      "normal\t2025-09-10 12:32:00 ok again\nabnormal\t2025-09-10T12:33:00Z [ERROR] bad again\n")
    snap = ingest_logs(f"file://{tmp_path / 'bgl.tsv'}", *SEED_DAY, tmp_path / "snap", settings)
    assert [(r["anomaly"], r["level"], r["message"]) for r in rows(snap)] == [
        (False, "INFO", "ok"), (True, "ERROR", "bad"), (False, None, "ok again"), (True, "ERROR", "bad again")]


@pytest.mark.parametrize("text, fmt, match", [
    ("0\tno time here\n", None, r"^s\.tsv:1: field '@timestamp' is missing: the text does not start with a timestamp"),
    ("0\t2025-09-10 12:30:05 ok\nmaybe\t2025-09-10 12:30:06 ok\n", "anomaly-tsv",
     r"^s\.tsv:2: field 'labels\.anomaly' has an unknown label value: 'maybe' is not one of"),
    ("OOM\t2025-09-10 12:30:05 ok\nno tab here\n", "rca-tsv", r"^s\.tsv:2: field '\(line\)' has no tab; the rca-tsv form is"),
    ("Cosmic_Ray\t2025-09-10 12:30:05 ERROR bit flip\n", None,
     r"^s\.tsv:1: field 'labels\.root_cause' has label\(s\) not in the label space: Cosmic_Ray$"),
    ("0\t2025-13-10 12:30:05 bad month\n", None, r"^s\.tsv:1: field '@timestamp' is not a timestamp"),
])
def test_seed_tsv_errors_name_file_line_and_field(settings, tmp_path, text, fmt, match):
    import dataclasses

    (tmp_path / "s.tsv").write_text(text)
    if fmt:
        settings = dataclasses.replace(settings, inputs=dataclasses.replace(settings.inputs, format=fmt))
    with pytest.raises(RecordError, match=match):
        ingest_logs(f"file://{tmp_path / 's.tsv'}", *SEED_DAY, tmp_path / "snap", settings)
    assert not (tmp_path / "snap").exists()


def test_seed_label_file_with_string_actions_is_a_label_space(settings, tmp_path, monkeypatch):
    from nightshift_models.label_space import LabelSpaceError, load_label_space
    from pipelines.config import load_settings

    seed = {"labels": ["OOM", "CUDA_OutOfMemory", "DataLoader_Stuck"],
            "actions": {"OOM": "Increase memory / reduce batch size / enable gradient checkpointing",
                        "CUDA_OutOfMemory": "Reduce batch size / use mixed precision / accumulate gradients"}}
    (tmp_path / "labels.json").write_text(json.dumps(seed))
    space = load_label_space(tmp_path / "labels.json")
    assert space.labels == ("OOM", "CUDA_OutOfMemory", "DataLoader_Stuck")
    assert space.actions["OOM"] == ("Increase memory / reduce batch size / enable gradient checkpointing",)
    assert space.actions["DataLoader_Stuck"] == ()
    assert space.to_json()["labels"]["CUDA_OutOfMemory"] == ["Reduce batch size / use mixed precision / accumulate gradients"]
    # as the configured label space, it judges what ingest accepts
    monkeypatch.setenv("NIGHTSHIFT_RCA_LABEL_SPACE", str(tmp_path / "labels.json"))
    (tmp_path / "train.tsv").write_text(RCA_TSV + "Disk_Full\t2025-09-10 12:32:00 ERROR No space left on device\n")
    with pytest.raises(RecordError, match=r"train\.tsv:3: field 'labels\.root_cause' has label\(s\) not in the label space: Disk_Full"):
        ingest_logs(f"file://{tmp_path / 'train.tsv'}", *SEED_DAY, tmp_path / "snap", load_settings())
    for bad, match in (({"labels": ["OOM", "OOM"]}, "listed twice: OOM"),
                       ({"labels": ["OOM"], "actions": {"Disk_Full": "x"}}, "'actions' names label\\(s\\) not in 'labels': Disk_Full"),
                       ({"labels": ["OOM,Disk_Full"]}, "label 'OOM,Disk_Full' contains a comma"),
                       ({"labels": ["OOM"], "actions": {"OOM": 3}}, "actions of label 'OOM' must be a list of strings")):
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(LabelSpaceError, match=match):
            load_label_space(tmp_path / "bad.json")


# ---- metric CSVs ------------------------------------------------------------------------------------------

def test_metric_csv_is_ingested_like_openmetrics(home, settings, tmp_path):
    from pipelines.sources.prometheus import ingest_metrics

    start = datetime(2026, 11, 16, tzinfo=timezone.utc)
    csv_lines = ["timestamp,value,gpu"] + [f"{int(start.timestamp() * 1000) + i * 60_000},{i},{g}" for i in range(30) for g in ("0", "1")]
    (tmp_path / "gpu-util.csv.gz").write_bytes(gzip.compress(("\r\n".join(csv_lines) + "\r\n").encode()))
    om_lines = [f'gpu_util{{gpu="{g}"}} {i} {int(start.timestamp()) + i * 60}' for i in range(30) for g in ("0", "1")] + ["# EOF"]
    (tmp_path / "gpu.om").write_text("\n".join(om_lines) + "\n")
    end = datetime(2026, 11, 16, 0, 30, tzinfo=timezone.utc)
    from_csv = ingest_metrics(f"file://{tmp_path / 'gpu-util.csv.gz'}", {"gpu_util": "gpu_util"}, start, end, "5m", tmp_path / "a", settings)
    from_om = ingest_metrics(f"file://{tmp_path / 'gpu.om'}", {"gpu_util": "gpu_util"}, start, end, "5m", tmp_path / "b", settings)
    a, b = from_csv.read(), from_om.read()
    assert a["series"].tolist() == b["series"].tolist() == ['gpu_util{gpu="0"}'] * 6 + ['gpu_util{gpu="1"}'] * 6
    assert a["value"].tolist() == b["value"].tolist() == [0.0, 5.0, 10.0, 15.0, 20.0, 25.0] * 2
    assert a["timestamp"].tolist() == b["timestamp"].tolist()


def test_metric_csv_through_the_cli_whole_file_and_its_errors(home, tmp_path, capsys):
    from nightshift.cli import main

    (tmp_path / "metrics.csv").write_text("timestamp,value\n" + "".join(f"{i},{i * 0.5}\n" for i in range(120)))
    assert main(["ingest", "metrics", "--source", f"file://{tmp_path / 'metrics.csv'}", "--step", "1s", "--out", str(tmp_path / "m"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["series"], out["rows"]) == (1, 120)
    assert out["window"] == {"start": "1970-01-01T00:00:00Z", "end": "1970-01-01T00:02:00Z"}
    (tmp_path / "bad.csv").write_text("timestamp,value\n1,1.0\n2,lots\n")
    assert main(["ingest", "metrics", "--source", f"file://{tmp_path / 'bad.csv'}", "--step", "1s", "--out", str(tmp_path / "n")]) == 2
    assert "bad.csv:3: field 'value' is not a number: 'lots'" in capsys.readouterr().err


def test_cli_ingest_logs_with_a_named_format_and_no_window(home, tmp_path, capsys):
    from nightshift.cli import main

    (tmp_path / "odd.log").write_text("1\t2025-09-10 12:30:05 INFO ok\n")  # one cell "1": rca-like and anomaly-like
    assert main(["ingest", "logs", "--source", f"file://{tmp_path / 'odd.log'}", "--format", "anomaly-tsv",
                 "--out", str(tmp_path / "s"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rows"] == 1 and out["window"]["start"] == "2025-09-10T12:30:05Z"


def test_label_spellings_and_epoch_unit_come_from_settings(home, tmp_path, monkeypatch, capsys):
    from nightshift.cli import main
    from pipelines.config import load_settings

    monkeypatch.setenv("NIGHTSHIFT_INPUTS_ANOMALY_TRUE", "alert,KERNDTLB")
    monkeypatch.setenv("NIGHTSHIFT_INPUTS_ANOMALY_FALSE", "-,ok")
    monkeypatch.setenv("NIGHTSHIFT_INPUTS_EPOCH_UNIT", "ms")  # milliseconds since 1970 that look like seconds by magnitude
    (tmp_path / "bgl.ndjson").write_text("".join(json.dumps({"@timestamp": 86_400_000 + i, "message": f"line {i}", "labels": {"anomaly": a}}) + "\n"
                                                 for i, a in enumerate(["-", "KERNDTLB", "ok", "Alert"])))
    snap = ingest_logs(f"file://{tmp_path / 'bgl.ndjson'}", None, None, tmp_path / "snap", load_settings())
    assert [(r["timestamp"].isoformat(), r["anomaly"]) for r in rows(snap)] == [
        ("1970-01-02T00:00:00+00:00", False), ("1970-01-02T00:00:00.001000+00:00", True),
        ("1970-01-02T00:00:00.002000+00:00", False), ("1970-01-02T00:00:00.003000+00:00", True)]
    monkeypatch.setenv("NIGHTSHIFT_INPUTS_FORMAT", "xml")
    assert main(["ingest", "logs", "--source", f"file://{tmp_path / 'bgl.ndjson'}", "--out", str(tmp_path / "s2")]) == 2
    assert "setting inputs.format: 'xml' is not one of auto, ndjson, parquet, csv, tsv, anomaly-tsv, rca-tsv" in capsys.readouterr().err
