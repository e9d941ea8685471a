"""The Great Expectations gate: a catalogue of bad snapshots, each failing with the right expectation
named; the demo snapshots passing; the report and Data Docs written beside the snapshot; the merge of
batch-wise results; the CLI; and training picking the verdict up."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pytest

from pipelines.data.snapshots import LOG_SCHEMA, load_snapshot, write_snapshot
from pipelines.data.validation import FAILED, PASSED, WARN, report_dir, validate_snapshot
from pipelines.sources.prometheus import METRIC_SCHEMA  # the metric-snapshot contract: timestamp (UTC), series, labels, value

START = datetime(2026, 11, 16, tzinfo=timezone.utc)
END = datetime(2026, 11, 21, tzinfo=timezone.utc)


def failed_checks(report: dict) -> set[str]:
    return {f["check"] for f in report["failed"]}


def failure(report: dict, check: str) -> dict:
    return next(f for f in report["failed"] if f["check"] == check)


# ------------------------------------------------------------------------------------------ logs


@pytest.fixture
def log_rows(train_snapshot) -> list[dict]:
    """The good training snapshot's rows, as dicts to spoil."""
    frame = train_snapshot.read()
    rows = frame.to_dict("records")
    for row in rows:
        row["timestamp"] = row["timestamp"].to_pydatetime()
        row["root_cause"] = list(row["root_cause"])
        row["anomaly"] = bool(row["anomaly"])
        for key in ("service", "level", "host", "job_id"):
            row[key] = row[key] if isinstance(row[key], str) else None  # pandas reads a missing string as NaN
    return rows


def write_logs(path: Path, rows: list[dict], schema: pa.Schema = LOG_SCHEMA):
    return write_snapshot(path, rows, dataset="logs", source="file://catalogue.ndjson", query=None, start=START, end=END, schema=schema)


def test_good_demo_snapshots_pass_and_reports_land_beside_the_snapshot(settings, corpus, train_snapshot, tmp_path):
    from pipelines.data.ingest import ingest_logs

    fresh = ingest_logs(f"file://{corpus}", END, END + timedelta(days=1), tmp_path / "snap-fresh", settings, dataset="logs-fresh")
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in train_snapshot.path.iterdir() if p.is_file()}
    for snap in (train_snapshot, fresh):
        report = validate_snapshot(snap.path, None, settings)  # the suite follows the dataset: logs
        assert report["suite"] == "logs"
        assert report["status"] == PASSED, report["message"]
        assert report["rows"] == snap.manifest["row_count"]
        assert report["statistics"]["evaluated"] >= 15 and report["statistics"]["unsuccessful"] == 0
    out = report_dir(train_snapshot)  # beside the snapshot, never inside it
    assert out == train_snapshot.path.parent / f"{train_snapshot.path.name}.validation" and not (train_snapshot.path / "validation").exists()
    saved = json.loads((out / "result.json").read_text())
    assert saved["content_hash"] == train_snapshot.content_hash and saved["status"] == PASSED
    assert (out / "data_docs" / "index.html").is_file()
    page = re.sub(r"\s+", " ", re.sub(r"<script.*?</script>|<[^>]+>", " ", (out / saved["data_docs_page"]).read_text(), flags=re.S))
    assert "Expectation Suite: logs" in page and "Status: Succeeded" in page and f"Evaluated Expectations {saved['statistics']['evaluated']}" in page
    # The snapshot itself is untouched: same files, same bytes, same hash.
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in train_snapshot.path.iterdir() if p.is_file()}
    assert after == before
    assert load_snapshot(train_snapshot.path).content_hash == train_snapshot.content_hash
    assert not [p for p in train_snapshot.path.iterdir() if p.name.startswith(".")]


def test_wrong_types_fail_the_schema_and_stop_there(settings, log_rows, tmp_path):
    schema = pa.schema([pa.field("timestamp", pa.string()) if f.name == "timestamp" else
                        pa.field("anomaly", pa.string()) if f.name == "anomaly" else f for f in LOG_SCHEMA])
    rows = [{**r, "timestamp": r["timestamp"].isoformat(), "anomaly": "yes" if r["anomaly"] else "no"} for r in log_rows]
    report = validate_snapshot(write_logs(tmp_path / "types", rows, schema).path, "logs", settings)
    assert report["status"] == FAILED
    assert failed_checks(report) == {"schema.timestamp", "schema.anomaly"}
    assert failure(report, "schema.timestamp")["examples"] == ["timestamp is string"]
    assert failure(report, "schema.anomaly")["rows"] == len(rows)
    assert any("schema" in s["reason"] for s in report["not_evaluated"])


def test_missing_column_names_it(settings, log_rows, tmp_path):
    schema = pa.schema([f for f in LOG_SCHEMA if f.name != "message"])
    report = validate_snapshot(write_logs(tmp_path / "nomsg", [{k: v for k, v in r.items() if k != "message"} for r in log_rows], schema).path,
                               "logs", settings)
    assert failed_checks(report) == {"schema.columns"}
    assert failure(report, "schema.columns")["examples"] == ["missing column message"]


def test_empty_text_fails_the_text_checks(settings, log_rows, tmp_path):
    for row in log_rows[5:25]:
        row["message"] = ""
    for row in log_rows[30:33]:
        row["message"] = "   "
    report = validate_snapshot(write_logs(tmp_path / "empty", log_rows).path, "logs", settings)
    assert failed_checks(report) == {"message.not_blank", "message.length"}
    blank = failure(report, "message.not_blank")
    assert blank["rows"] == 23 and blank["of"] == len(log_rows)
    assert blank["expectation"] == "expect_column_values_to_match_regex" and blank["column"] == "message"
    assert {e["message"] for e in blank["examples"]} <= {"", "   "} and all("timestamp" in e for e in blank["examples"])
    assert failure(report, "message.length")["rows"] == 20


def test_unknown_labels_fail_the_label_space(settings, log_rows, tmp_path):
    spoiled = [r for r in log_rows if r["root_cause"]][:4]
    for row in spoiled:
        row["root_cause"] = row["root_cause"] + ["Cosmic_Rays"]
    report = validate_snapshot(write_logs(tmp_path / "labels", log_rows).path, "logs", settings)
    assert failed_checks(report) == {"root_cause.in_label_space"}
    f = failure(report, "root_cause.in_label_space")
    assert f["rows"] == 4 and {e["root_cause"] for e in f["examples"]} == {"Cosmic_Rays"}


def test_all_normal_window_fails_the_anomaly_ratio_and_class_size(settings, log_rows, tmp_path):
    rows = [{**r, "anomaly": False, "root_cause": []} for r in log_rows]
    report = validate_snapshot(write_logs(tmp_path / "normal", rows).path, "logs", settings)
    assert failed_checks(report) == {"anomaly.ratio", "class.min_rows"}
    assert failure(report, "class.min_rows")["examples"] == ["anomalous: rows 0"]
    assert failure(report, "anomaly.ratio")["examples"] == [f"0 anomalous of {len(rows)} labelled rows (ratio 0.0000)"]


def test_forty_percent_duplicates_fail_the_duplicate_ratio_even_across_batches(settings, log_rows, tmp_path):
    import dataclasses

    copies = [dict(r) for r in log_rows[: len(log_rows) * 2 // 3]]  # 2/3 extra rows: 40% of the result repeat a row
    snap = write_logs(tmp_path / "dups", log_rows + copies)
    report = validate_snapshot(snap.path, "logs", settings)
    assert failed_checks(report) == {"duplicates.ratio"}
    f = failure(report, "duplicates.ratio")
    assert f["rows"] == len(copies) and abs(len(copies) / (len(log_rows) + len(copies)) - 0.4) < 0.01
    assert f["examples"] and f["examples"][0]["message"] == copies[0]["message"]
    # Streamed in small batches (each copy far from its original), the counts are the same.
    small = dataclasses.replace(settings, validation=dataclasses.replace(settings.validation, batch_rows=97))
    again = validate_snapshot(snap.path, "logs", small)
    assert failed_checks(again) == {"duplicates.ratio"} and failure(again, "duplicates.ratio")["rows"] == len(copies)


def test_timestamps_outside_the_window_fail(settings, log_rows, tmp_path):
    log_rows[0]["timestamp"] = START - timedelta(hours=3)
    log_rows[-1]["timestamp"] = END  # the end is exclusive
    report = validate_snapshot(write_logs(tmp_path / "window", log_rows).path, "logs", settings)
    assert failed_checks(report) == {"timestamp.in_window"}
    f = failure(report, "timestamp.in_window")
    assert f["rows"] == 2 and f["expectation"] == "expect_column_values_to_be_between"


def test_batch_results_merge_to_the_whole_snapshot_counts(settings, log_rows, tmp_path):
    import dataclasses

    for i in range(0, len(log_rows), 50):  # spoil rows spread over many batches
        log_rows[i]["message"] = ""
    snap = write_logs(tmp_path / "spread", log_rows)
    whole = validate_snapshot(snap.path, "logs", settings)
    small = dataclasses.replace(settings, validation=dataclasses.replace(settings.validation, batch_rows=64))
    batched = validate_snapshot(snap.path, "logs", small)
    expected = len(range(0, len(log_rows), 50))
    for report in (whole, batched):
        assert failed_checks(report) == {"message.not_blank", "message.length"}
        assert failure(report, "message.not_blank")["rows"] == expected
        assert failure(report, "message.not_blank")["of"] == len(log_rows)
    ge = {r["expectation_config"]["meta"]["check"]: r["result"] for r in batched["great_expectations"]["results"]}
    assert ge["message.not_blank"]["element_count"] == len(log_rows)
    assert ge["message.not_blank"]["unexpected_count"] == expected


def test_thresholds_are_settings_and_warn_only_lets_it_pass(settings, train_snapshot, monkeypatch):
    from pipelines.config import load_settings

    monkeypatch.setenv("NIGHTSHIFT_VALIDATION_MIN_ROWS_PER_CLASS", "100000")
    strict = load_settings()
    report = validate_snapshot(train_snapshot.path, "logs", strict)
    assert report["status"] == FAILED and failed_checks(report) == {"class.min_rows"}
    assert report["thresholds"]["min_rows_per_class"] == 100000
    warned = validate_snapshot(train_snapshot.path, "logs", strict, warn_only=True)
    assert warned["status"] == WARN and failed_checks(warned) == {"class.min_rows"}


# --------------------------------------------------------------------------------------- metrics


def write_metrics(path: Path, series: dict[str, list[float]], *, step: int = 900, start: datetime = START,
                  shuffle: str | None = None, skip: dict[str, set[int]] | None = None):
    """A metric snapshot: each series `name{k="v"}` sampled every `step` seconds from `start`."""
    rows = []
    for sid, values in series.items():
        name, body = sid.split("{", 1)
        labels = {"__name__": name, **dict(kv.split("=") for kv in body.rstrip("}").replace('"', "").split(",") if kv)}
        points = [{"timestamp": start + timedelta(seconds=i * step), "series": sid, "labels": labels, "value": v}
                  for i, v in enumerate(values) if i not in (skip or {}).get(sid, set())]
        if shuffle == sid:
            points[10], points[11] = points[11], points[10]
        rows += points
    return write_snapshot(path, rows, dataset="metrics", source="file://metrics.om", query={"queries": {}, "step": f"{step // 60}m"},
                          start=start, end=start + timedelta(seconds=step * max(len(v) for v in series.values())), schema=METRIC_SCHEMA)


def good_series(n: int = 200) -> dict[str, list[float]]:
    return {'quota_group_use_ratio{group="vision"}': [0.4 + 0.001 * i for i in range(n)],
            'request_latency_p99_seconds{service="search"}': [0.2 + 0.01 * (i % 7) for i in range(n)],
            'DCGM_FI_DEV_GPU_UTIL{gpu="0",Hostname="gpu-node-01"}': [float(i % 100) for i in range(n)]}


def test_good_metric_snapshot_passes(settings, tmp_path):
    report = validate_snapshot(write_metrics(tmp_path / "metrics", good_series()).path, None, settings)
    assert report["suite"] == "metrics" and report["status"] == PASSED, report["message"]
    checks = {e["check"] for e in report["expectations"]}
    assert {"timestamp.increasing", "series.nan_ratio", "series.gap_ratio", "series.history",
            "value.range[quota_group_use_ratio]", "value.range[DCGM_FI_DEV_GPU_UTIL]"} <= checks
    assert {s["series"]: s["points"] for s in report["aggregates"]["series"]} == {k: 200 for k in good_series()}


def test_demo_metric_snapshot_passes(settings, tmp_path):
    """The demo metric history, snapshotted by the Prometheus ingest itself (gaps: an exporter down 2h)."""
    import dataclasses

    from pipelines.data.demo_metrics import METRICS_END, write_demo_metrics
    from pipelines.sources.prometheus import ingest_metrics

    history = write_demo_metrics(tmp_path / "demo", days=8)
    snap = ingest_metrics(f"file://{history}", dataclasses.asdict(settings.prometheus.queries), METRICS_END - timedelta(days=7),
                          METRICS_END, "15m", tmp_path / "metric-snap", settings)
    report = validate_snapshot(snap.path, "metrics", settings)
    assert report["status"] == PASSED, report["message"]
    series = report["aggregates"]["series"]
    assert len(series) == snap.manifest["series_count"] and all(s["points"] >= 96 for s in series)
    assert any(0 < s["gap_ratio"] < 0.05 for s in series)  # the exporter outage is seen, and tolerated


def test_nan_heavy_series_fails_the_nan_ratio(settings, tmp_path):
    series = good_series()
    sid = 'request_latency_p99_seconds{service="search"}'
    series[sid] = [float("nan") if i % 2 else v for i, v in enumerate(series[sid])]
    report = validate_snapshot(write_metrics(tmp_path / "nan", series).path, "metrics", settings)
    assert failed_checks(report) == {"series.nan_ratio"}
    f = failure(report, "series.nan_ratio")
    assert f["rows"] == 200 and f["examples"] == [f"{sid}: nan_ratio 0.5"]


def test_too_short_history_fails(settings, tmp_path):
    report = validate_snapshot(write_metrics(tmp_path / "short", good_series(40)).path, "metrics", settings)
    assert failed_checks(report) == {"series.history"}
    f = failure(report, "series.history")
    assert f["rows"] == 120 and len(f["examples"]) == 3 and all(e.endswith("points 40") for e in f["examples"])


def test_the_history_a_series_needs_is_the_forecasters_lookback(settings, tmp_path):
    import dataclasses

    shorter = dataclasses.replace(settings, forecast=dataclasses.replace(settings.forecast, lookback=40))
    report = validate_snapshot(write_metrics(tmp_path / "short", good_series(40)).path, "metrics", shorter)
    assert report["status"] == PASSED, report["message"]
    assert report["thresholds"]["min_history_points"] == 40


def test_gaps_disorder_and_out_of_range_values_each_fail_their_check(settings, tmp_path):
    sid = 'quota_group_use_ratio{group="vision"}'
    gappy = validate_snapshot(write_metrics(tmp_path / "gaps", good_series(), skip={sid: set(range(50, 130))}).path, "metrics", settings)
    assert failed_checks(gappy) == {"series.gap_ratio"} and failure(gappy, "series.gap_ratio")["examples"] == [f"{sid}: gap_ratio 0.4"]

    disorder = validate_snapshot(write_metrics(tmp_path / "order", good_series(), shuffle=sid).path, "metrics", settings)
    assert failed_checks(disorder) == {"timestamp.increasing"} and failure(disorder, "timestamp.increasing")["rows"] == 1

    series = good_series()
    series[sid][7] = 42.0
    ranged = validate_snapshot(write_metrics(tmp_path / "range", series).path, "metrics", settings)
    assert failed_checks(ranged) == {"value.range[quota_group_use_ratio]"}
    f = failure(ranged, "value.range[quota_group_use_ratio]")
    assert f["rows"] == 1 and f["examples"][0]["value"] == 42.0 and f["examples"][0]["series"] == sid


def test_bad_value_ranges_setting_is_named(settings, tmp_path, monkeypatch):
    from pipelines.config import ConfigError, load_settings

    monkeypatch.setenv("NIGHTSHIFT_VALIDATION_VALUE_RANGES", "up=0:1,broken")
    with pytest.raises(ConfigError, match="validation.value_ranges.*'broken'"):
        validate_snapshot(write_metrics(tmp_path / "m", good_series()).path, "metrics", load_settings())


# ------------------------------------------------------------------------------------ the command


def test_validate_command_prints_the_verdict_and_exits_1_on_failure(home, log_rows, tmp_path, capsys):
    from nightshift.cli import main

    rows = [{**r, "anomaly": False, "root_cause": []} for r in log_rows]
    snap = write_logs(tmp_path / "cli", rows)
    code = main(["validate", str(snap.path), "--suite", "logs", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 1 and out["status"] == FAILED
    assert {f["check"] for f in out["failed"]} == {"anomaly.ratio", "class.min_rows"}
    assert Path(out["result"]).is_file() and Path(out["data_docs"]).is_file()
    assert "great_expectations" not in out

    assert main(["validate", str(snap.path), "--suite", "logs", "--warn-only"]) == 0
    text = capsys.readouterr().out
    assert "logs suite warn" in text and "FAILED class.min_rows" in text

    assert main(["validate", str(tmp_path / "nowhere"), "--suite", "logs"]) == 2
    assert "not a snapshot" in capsys.readouterr().err


def test_report_html_shows_each_measured_value_against_its_bound_and_cuts_long_examples(settings, log_rows, tmp_path):
    """The page a person reads offline: the anomaly ratio as a ratio against its bounds (not "0%
    unexpected"), row checks as counts against what is allowed, failed rows cut to a readable length."""
    import dataclasses
    import html

    from pipelines.data.validation import verdict

    settings = dataclasses.replace(settings, validation=dataclasses.replace(settings.validation, max_text_length=1000))
    rows = [{**r, "anomaly": False} for r in log_rows]
    rows[3]["message"] = "y" * 5000
    snap = write_logs(tmp_path / "long", rows)
    report = validate_snapshot(snap.path, "logs", settings)
    path = report_dir(snap) / "report.html"
    assert verdict(report)["report_html"] == str(path)
    page = path.read_text()
    text = html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", re.sub(r"<style.*?</style>", " ", page, flags=re.S))))
    n = f"{len(rows):,}"
    assert f"anomaly_ratio 0 (0 anomalous rows of {n} labelled rows)" in text and "anomaly_ratio [0.001, 0.5]" in text
    assert "unexpected" not in text
    assert f"1 of {n} rows break it" in text and "message length in [1, 1,000]; none allowed" in text
    assert "normal: " in text and "anomalous: 0" in text and "rows >= 10" in text
    assert "timestamp: timestamp[UTC]" in text  # the schema checks show the stored type
    cut = settings.inputs.show_chars
    assert "(5,000 chars)" in text and "y" * cut in page and "y" * (cut + 1) not in page  # the 5,000-character line, cut
    assert page.count("<svg") >= 2  # a gauge per whole-snapshot ratio
    # Offline: inline style, no scripts, nothing fetched from elsewhere.
    assert "<script" not in page and not re.search(r"(src|href)=['\"](https?:)?//", page)


def test_a_huge_failing_value_is_cut_wherever_a_person_reads_it(home, log_rows, tmp_path, capsys):
    """One 26,200-character message over `validation.max_text_length`: the CLI's summary prints it as one short line
    stating its full size, and report.html, result.json and GE's Data Docs hold it cut to `inputs.show_chars`."""
    from nightshift.cli import main
    from pipelines.config import load_settings
    from pipelines.data.validation import ValidationFailed, require_not_failed

    cut = load_settings().inputs.show_chars
    rows = list(log_rows)
    rows[3] = {**rows[3], "message": "y" * 26_200}
    snap = write_logs(tmp_path / "huge", rows)
    assert main(["validate", str(snap.path), "--suite", "logs"]) == 1
    out = capsys.readouterr().out
    (line,) = [line for line in out.splitlines() if "FAILED" in line]
    assert line.startswith("  FAILED message.length (expect_column_value_lengths_to_be_between on message): 1 of ")
    assert "y" * cut + "… (26,200 chars)" in line and len(line) < cut + 300
    assert len(out) < cut + 600

    folder = report_dir(snap)
    result = json.loads((folder / "result.json").read_text())
    (example,) = [f for f in result["failed"] if f["check"] == "message.length"][0]["examples"]
    assert example["message"] == "y" * cut + "… (26,200 chars)"
    pages = [folder / "report.html", *(folder / "data_docs").rglob("*.html")]
    assert len(pages) > 2 and all("y" * (cut + 1) not in p.read_text() for p in pages)
    assert "(26,200 chars)" in (folder / "report.html").read_text()
    with pytest.raises(ValidationFailed) as caught:
        require_not_failed(load_snapshot(snap.path))
    assert len(str(caught.value).splitlines()) == 1 and "y" * 20 not in str(caught.value)


# ---------------------------------------------------------------------------------- training


@pytest.mark.slow  # validates and trains twice: `make test-fast` leaves it out
def test_training_logs_the_report_and_tags_the_version(settings, train_snapshot, tiny_bert, log_rows, tmp_path):
    import dataclasses

    import mlflow

    from pipelines.data.validation import ValidationFailed
    from pipelines.registry.store import use_store
    from pipelines.tasks.log_anomaly import train_log_anomaly

    settings = dataclasses.replace(settings, train=dataclasses.replace(settings.train, epochs=1, max_train_examples=300))
    validate_snapshot(train_snapshot.path, "logs", settings)
    out = train_log_anomaly(train_snapshot.path, settings, str(tiny_bert)).to_dict()
    client = use_store(settings)
    version = client.get_model_version("log-anomaly", out["version"])
    assert version.tags["validation.status"] == PASSED
    run = client.get_run(out["run_id"])
    assert run.data.tags["validation.status"] == PASSED
    artifacts = {a.path for a in client.list_artifacts(out["run_id"], "validation")}
    assert {"validation/result.json", "validation/report.html", "validation/data_docs"} <= artifacts
    report = json.loads(Path(mlflow.artifacts.download_artifacts(run_id=out["run_id"], artifact_path="validation/result.json",
                                                                 dst_path=str(tmp_path / "dl"))).read_text())
    assert report["content_hash"] == train_snapshot.content_hash

    # A snapshot that failed validation trains nothing.
    bad = write_logs(tmp_path / "bad", [{**r, "message": ""} if i % 3 == 0 else r for i, r in enumerate(log_rows)])
    validate_snapshot(bad.path, "logs", settings)
    with pytest.raises(ValidationFailed, match="message.not_blank"):
        train_log_anomaly(bad.path, settings, str(tiny_bert))
    assert len(client.search_model_versions("name='log-anomaly'")) == 1
