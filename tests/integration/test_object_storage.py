"""The storage root on a real object store (SeaweedFS's S3 gateway on loopback, `object_store` fixture): snapshots
commit by their manifest, an interrupted write stays invisible, validation lands beside the snapshot, and drift
refuses to go unchecked when a training snapshot cannot be read."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from nightshift.cli import parse_time
from pipelines import storage
from pipelines.data.ingest import ingest_logs
from pipelines.data.snapshots import DATA_FILE, MANIFEST, SnapshotError, load_snapshot, write_snapshot
from pipelines.data.validation import PASSED, read_report, report_dir, validate_snapshot

pytestmark = pytest.mark.slow


@pytest.fixture
def on_store(object_store, monkeypatch):
    """The object store's AWS_* variables set, as a worker's environment would carry them."""
    for key, value in object_store.env().items():
        monkeypatch.setenv(key, value)
    return object_store


def rows(n: int, message: str = "disk ok"):
    t0 = datetime(2026, 11, 20, tzinfo=timezone.utc)
    for i in range(n):
        yield {"timestamp": t0 + timedelta(seconds=i), "message": f"{message} {i}", "service": "api", "level": "INFO", "host": "h1",
               "anomaly": i % 10 == 0, "root_cause": [], "job_id": None}


def test_a_snapshot_written_to_s3_reads_back_and_stays_immutable(on_store, settings, corpus):
    uri = on_store.uri() + "/snapshots/logs/2026-11-21"
    start, end = parse_time("2026-11-16"), parse_time("2026-11-21")
    snap = ingest_logs(f"file://{corpus}", start, end, storage.path(uri), settings)
    assert storage.uri(snap.path) == uri and storage.is_remote(snap.path)
    again = load_snapshot(uri)
    frame = again.read()
    assert len(frame) == again.manifest["row_count"] == snap.manifest["row_count"] > 0
    assert sum(b.num_rows for b in again.batches(batch_size=100)) == len(frame)
    fs = on_store.filesystem()
    assert sorted(p.rsplit("/", 1)[1] for p in fs.ls(uri.removeprefix("s3://"), refresh=True)) == [DATA_FILE, MANIFEST]
    # the same data again: a no-op; other data for the same snapshot: refused
    assert ingest_logs(f"file://{corpus}", start, end, storage.path(uri), settings).content_hash == snap.content_hash
    with pytest.raises(SnapshotError, match="already exists with different data"):
        write_snapshot(uri, rows(5), dataset="logs", source="other", query=None, start=start, end=end)
    assert not (settings.home / "snapshots").exists()
    # no temporary prefix is left beside it
    assert [p.rsplit("/", 1)[1] for p in fs.ls(uri.removeprefix("s3://").rsplit("/", 1)[0], refresh=True)] == ["2026-11-21"]


def test_an_interrupted_write_is_invisible_and_a_retry_commits(on_store):
    uri = on_store.uri() + "/logs/2026-11-21"

    def dying():
        yield from rows(30_000)
        raise ConnectionError("source dropped mid-window")

    with pytest.raises(ConnectionError):
        write_snapshot(uri, dying(), dataset="logs", source="s", query=None, start=None, end=None, chunk_rows=10_000)
    with pytest.raises(SnapshotError, match="no manifest.json"):
        load_snapshot(uri)
    # a worker killed between copying its data and writing the manifest leaves data without a commit marker
    fs = on_store.filesystem()
    fs.pipe(f"{uri.removeprefix('s3://')}/{DATA_FILE}", b"half a parquet file")
    with pytest.raises(SnapshotError, match=f"{uri} is not a snapshot"):
        load_snapshot(uri)
    snap = write_snapshot(uri, rows(300), dataset="logs", source="s", query=None, start=None, end=None)
    assert load_snapshot(uri).content_hash == snap.content_hash and len(load_snapshot(uri).read()) == 300
    parent = uri.removeprefix("s3://").rsplit("/", 1)[0]
    assert [p.rsplit("/", 1)[1] for p in fs.ls(parent, refresh=True)] == ["2026-11-21"]


def test_validation_is_written_beside_the_snapshot_not_inside_it(on_store, settings, corpus):
    uri = on_store.uri() + "/snapshots/logs/2026-11-21"
    snap = ingest_logs(f"file://{corpus}", parse_time("2026-11-16"), parse_time("2026-11-21"), uri, settings)
    report = validate_snapshot(uri, "logs", settings)
    assert report["status"] == PASSED, report["message"]
    fs = on_store.filesystem()
    key = uri.removeprefix("s3://")
    assert sorted(p.rsplit("/", 1)[1] for p in fs.ls(key, refresh=True)) == [DATA_FILE, MANIFEST]  # the snapshot is untouched
    beside = report_dir(snap)
    assert storage.uri(beside) == uri + ".validation"
    saved = json.loads(fs.cat(f"{key}.validation/result.json"))
    assert saved["content_hash"] == snap.content_hash and saved["snapshot"] == uri
    assert fs.exists(f"{key}.validation/report.html") and fs.exists(f"{key}.validation/data_docs/index.html")
    assert read_report(uri)["status"] == PASSED


def test_drift_fails_loudly_when_the_champion_snapshot_cannot_be_read(on_store, settings):
    """A reference the gate cannot read is an error naming it, never a silent `not_run` that promotes unchecked."""
    import mlflow

    from pipelines.data.drift import DriftNotChecked, check_drift
    from pipelines.registry.store import ModelRef, use_store

    current = write_snapshot(on_store.uri() + "/logs/2026-11-21", rows(200), dataset="logs", source="s", query=None, start=None, end=None)
    gone = on_store.uri() + "/logs/2026-11-14"  # never committed: no manifest
    client = use_store(settings)
    client.create_registered_model("log-anomaly")
    for snapshot in (gone, storage.uri(current.path)):
        with mlflow.start_run() as run:
            mlflow.set_tag("data.snapshot", snapshot)
        client.create_model_version("log-anomaly", f"{run.info.artifact_uri}/model", run.info.run_id)
    client.set_registered_model_alias("log-anomaly", "champion", "1")
    with pytest.raises(DriftNotChecked, match=f"log-anomaly v1: its training snapshot {gone} .*cannot be read"):
        check_drift(client, ModelRef("log-anomaly", "2"), settings)
    assert "drift.status" not in client.get_model_version("log-anomaly", "2").tags
