"""The file sink: every document read is written, native times come back as ISO-8601 Z, a killed run resumes,
temp files do not outlive the next run."""

import fcntl
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.support.fakes import StandInClassifier
from tests.support.ndjson import hidden, read_ndjson, write_ndjson

ROOT = Path(__file__).resolve().parents[2]


def docs(n: int) -> list[dict]:
    return [{"@timestamp": f"2026-11-16T{i // 3600:02d}:{i // 60 % 60:02d}:{i % 60:02d}Z", "id": i,
             "message": "worker failed" if i % 7 == 0 else f"request {i} ok", "labels": {"anomaly": i % 7 == 0}} for i in range(n)]


def test_every_document_read_is_written_and_the_unscored_unchanged_and_counted(home, stand_in, tmp_path, capsys):
    from nightshift.cli import main

    items = docs(300)
    odd = [{"@timestamp": "2026-11-16T05:00:00Z", "id": "array", "message": ["Traceback", "MemoryError: failed"]},
           {"@timestamp": "2026-11-16T05:00:01Z", "id": "number", "message": 404},
           {"@timestamp": "2026-11-16T05:00:02Z", "id": "missing"},
           {"@timestamp": "2026-11-16T05:00:03Z", "id": "object", "message": {"text": "x"}}]
    src = write_ndjson(tmp_path / "logs.ndjson", items[:150] + odd + items[150:])
    sink = tmp_path / "out" / "scored.ndjson"
    assert main(["score", "logs", "--model", "log-anomaly/1", "--source", src, "--sink", f"file://{sink}", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["read"], out["scored"], out["written"], out["unscored"]) == (304, 301, 304, 3)
    assert out["unscored_reasons"] == {"field 'message' must be a string or an array of strings, got a number": 1,
                                       "field 'message' is missing": 1,
                                       "field 'message' must be a string or an array of strings, got an object": 1}
    written = read_ndjson(sink)
    assert [d["id"] for d in written] == [d["id"] for d in items[:150] + odd + items[150:]]  # all, in the order read
    by_id = {d["id"]: d for d in written}
    assert by_id["array"]["ml"]["anomaly"]["is_anomaly"] is True  # an array of strings is scored as its lines
    assert "Traceback\nMemoryError: failed" in stand_in["classifier"].texts
    for unscored in odd[1:]:
        assert by_id[unscored["id"]] == unscored  # written unchanged
    assert hidden(sink.parent) == []


def test_native_timestamps_are_written_back_as_iso_8601_z(home, stand_in, tmp_path):
    from pipelines.config import load_settings
    from pipelines.scoring.score_logs import score_logs

    pq.write_table(pa.table({"@timestamp": pa.array([1794787486357000000, 1794787487000000000], pa.timestamp("ns")),
                             "when": pa.array([1794787486357, 1794787487000], pa.timestamp("ms", tz="UTC")),
                             "message": ["ok", "failed"]}), tmp_path / "logs.parquet")
    out = score_logs("log-anomaly/1", f"file://{tmp_path / 'logs.parquet'}", None, load_settings())  # no window
    assert out["sink"].endswith("/logs.scored.ndjson") and out["written"] == 2
    written = read_ndjson(tmp_path / "logs.scored.ndjson")
    assert [(d["@timestamp"], d["when"]) for d in written] == [("2026-11-16T00:04:46.357Z", "2026-11-16T00:04:46.357Z"),
                                                                 ("2026-11-16T00:04:47Z", "2026-11-16T00:04:47Z")]
    assert written[0]["ml"]["scored_at"].endswith("Z")


def test_an_interrupted_run_resumes_and_writes_every_document_once(home, stand_in, tmp_path, monkeypatch):
    from pipelines.config import load_settings
    from pipelines.scoring.score_logs import score_logs

    monkeypatch.setenv("NIGHTSHIFT_SCORE_SORT_WINDOW", "20")  # windows and checkpoints of 20 documents
    monkeypatch.setenv("NIGHTSHIFT_SCORE_MAX_PENDING", "20")  # a model call per window
    items = docs(130)
    src = write_ndjson(tmp_path / "logs.ndjson", items)
    sink = tmp_path / "out" / "scored.ndjson"
    stand_in["classifier"] = StandInClassifier(crash_on_call=5)
    with pytest.raises(RuntimeError, match="killed mid-run"):
        score_logs("log-anomaly/1", src, f"file://{sink}", load_settings())
    assert not sink.exists()  # nothing half-written in place
    state = json.loads((sink.parent / ".scored.ndjson.partial.json").read_text())
    assert state["docs"] == 80 and len((sink.parent / ".scored.ndjson.partial").read_bytes().splitlines()) == 80

    stand_in["classifier"] = StandInClassifier()
    resumed = score_logs("log-anomaly/1", src, f"file://{sink}", load_settings())
    assert (resumed["resumed_docs"], resumed["read"], resumed["written"]) == (80, 50, 50)
    first_80 = {d["message"] for d in items[:80]} - {d["message"] for d in items[80:]}
    assert not first_80 & set(stand_in["classifier"].texts)  # the first 80 are not scored again
    written = read_ndjson(sink)
    assert [d["id"] for d in written] == [d["id"] for d in items]  # every document once, in order
    # the stand-in classifier names no family: a BERT's
    assert all(d["ml"]["model"] == {"name": "log-anomaly", "version": "1", "family": "bert"} for d in written)
    assert hidden(sink.parent) == []

    again = score_logs("log-anomaly/2", src, f"file://{sink}", load_settings())  # a finished pass is not resumed
    assert (again["resumed_docs"], again["written"]) == (0, 130)


def test_a_bad_sink_setting_fails_before_any_model_is_looked_up(home, monkeypatch):
    """Settings and URIs are checked first: the error names the setting, not the (unregistered) model."""
    from pipelines.config import ConfigError, load_settings
    from pipelines.scoring.score_logs import score_logs

    monkeypatch.setenv("NIGHTSHIFT_ELASTICSEARCH_BULK_MAX_DOCS", "0")
    with pytest.raises(ConfigError, match=r"setting elasticsearch.bulk_max_docs \(NIGHTSHIFT_ELASTICSEARCH_BULK_MAX_DOCS\)"):
        score_logs("log-anomaly@champion", "http://127.0.0.1:9/logs-*", None, load_settings())
    assert not (home / "mlflow").exists()  # no store was opened


def test_the_heap_loaded_before_a_pass_is_frozen_only_while_it_runs(home, stand_in, tmp_path):
    """While scoring runs, the objects alive once the models are loaded are left out of the garbage collector's
    passes (`gc.freeze`); when the pass ends, finished or failed, they are handed back, so nothing stays frozen. A
    heap the process had frozen itself stays frozen."""
    import gc

    from pipelines.config import load_settings
    from pipelines.scoring.score_logs import score_logs

    frozen: list[int] = []

    class Recording(StandInClassifier):
        def probabilities(self, messages, batch_size=64):
            frozen.append(gc.get_freeze_count())
            return super().probabilities(messages, batch_size)

    src = write_ndjson(tmp_path / "logs.ndjson", docs(30))
    assert gc.get_freeze_count() == 0
    stand_in["classifier"] = Recording()
    assert score_logs("log-anomaly/1", src, f"file://{tmp_path / 'a.ndjson'}", load_settings())["written"] == 30
    assert frozen and min(frozen) > 10_000  # the libraries and models loaded before the pass
    assert gc.get_freeze_count() == 0
    stand_in["classifier"] = StandInClassifier(crash_on_call=1)
    with pytest.raises(RuntimeError, match="killed mid-run"):
        score_logs("log-anomaly/1", src, f"file://{tmp_path / 'b.ndjson'}", load_settings())
    assert gc.get_freeze_count() == 0
    gc.freeze()
    try:
        stand_in["classifier"] = StandInClassifier()
        score_logs("log-anomaly/1", src, f"file://{tmp_path / 'c.ndjson'}", load_settings())
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


KILLED_RUN = textwrap.dedent('''
    import os, signal, sys
    import numpy as np
    import pipelines.registry.store as registry
    from pipelines.config import load_settings
    from pipelines.scoring.score_logs import score_logs

    class Killed:
        thresholds = np.array([0.5], dtype=np.float32)
        calls = 0
        def probabilities(self, messages, batch_size=64):
            Killed.calls += 1
            if Killed.calls == 4:
                os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no checkpoint on the way out
            return np.full((len(messages), 1), 0.1, dtype=np.float32)

    class Model:
        def unwrap_python_model(self):
            return Killed()

    import pipelines.scoring.root_causes as root_causes
    import pipelines.scoring.score_logs as scoring

    # the modules bind the registry's functions when imported: replace them where they are called
    scoring.use_store = lambda settings: None
    scoring.load_model = lambda client, ref: (registry.ModelRef("log-anomaly", "1"), Model())
    root_causes.alias_version = lambda client, name, alias: None
    score_logs("log-anomaly/1", sys.argv[1], sys.argv[2], load_settings())
''')


@pytest.mark.slow  # a scoring process of its own, killed: `make test-fast` leaves it out
def test_a_killed_run_leaves_a_checkpoint_that_the_next_run_resumes_from(home, stand_in, tmp_path, monkeypatch):
    from pipelines.config import load_settings
    from pipelines.scoring.score_logs import score_logs

    monkeypatch.setenv("NIGHTSHIFT_SCORE_SORT_WINDOW", "20")
    monkeypatch.setenv("NIGHTSHIFT_SCORE_MAX_PENDING", "20")  # a model call per window
    items = docs(100)
    src = write_ndjson(tmp_path / "logs.ndjson", items)
    sink = tmp_path / "out" / "scored.ndjson"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", KILLED_RUN, src, f"file://{sink}"], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == -9, done.stderr[-2000:]
    state = json.loads((sink.parent / ".scored.ndjson.partial.json").read_text())
    assert state["docs"] == 60  # three windows checkpointed before the kill in the fourth

    resumed = score_logs("log-anomaly/1", src, f"file://{sink}", load_settings())
    assert (resumed["resumed_docs"], resumed["written"]) == (60, 40)
    written = read_ndjson(sink)
    assert [d["id"] for d in written] == [d["id"] for d in items]
    assert hidden(sink.parent) == []


def test_leftovers_of_killed_runs_are_removed_when_the_next_run_starts(home, stand_in, tmp_path):
    from pipelines.config import load_settings
    from pipelines.scoring.score_logs import score_logs

    src = write_ndjson(tmp_path / "logs.ndjson", docs(10))
    out = tmp_path / "out"
    out.mkdir()
    (out / ".scored.ndjson.4194999.tmp").write_text("a killed run of an older version\n")  # no such pid (above pid_max)
    (out / ".scored.ndjson.partial.json.4194999.tmp").write_text("{")
    (out / ".scored.ndjson.partial").write_text('{"other": "run"}\n')
    (out / ".scored.ndjson.partial.json").write_text(json.dumps({"key": {"another": "run"}, "docs": 1, "bytes": 17}))
    (out / ".other.ndjson.4194999.tmp").write_text("another sink's file: left alone\n")
    result = score_logs("log-anomaly/1", src, f"file://{out / 'scored.ndjson'}", load_settings())
    assert (result["resumed_docs"], result["written"]) == (0, 10)
    assert [d["id"] for d in read_ndjson(out / "scored.ndjson")] == list(range(10))
    assert hidden(out) == [".other.ndjson.4194999.tmp"]


def test_a_changed_source_is_not_resumed(home, stand_in, tmp_path, monkeypatch):
    from pipelines.config import load_settings
    from pipelines.scoring.score_logs import score_logs

    monkeypatch.setenv("NIGHTSHIFT_SCORE_SORT_WINDOW", "20")
    monkeypatch.setenv("NIGHTSHIFT_SCORE_MAX_PENDING", "20")  # a model call per window
    src = write_ndjson(tmp_path / "logs.ndjson", docs(60))
    sink = tmp_path / "scored.ndjson"
    stand_in["classifier"] = StandInClassifier(crash_on_call=2)
    with pytest.raises(RuntimeError):
        score_logs("log-anomaly/1", src, f"file://{sink}", load_settings())
    write_ndjson(tmp_path / "logs.ndjson", docs(61))  # new data arrived: the 20 written are not these 20
    stand_in["classifier"] = StandInClassifier()
    result = score_logs("log-anomaly/1", src, f"file://{sink}", load_settings())
    assert (result["resumed_docs"], result["written"]) == (0, 61)


def test_two_runs_cannot_write_one_sink(home, stand_in, tmp_path):
    from pipelines.config import load_settings
    from pipelines.scoring.score_logs import score_logs

    src = write_ndjson(tmp_path / "logs.ndjson", docs(5))
    with open(tmp_path / ".scored.ndjson.partial", "a+b") as other:
        fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # another run holds the sink
        with pytest.raises(RuntimeError, match=r"sink file://.*scored\.ndjson: another run is writing it"):
            score_logs("log-anomaly/1", src, f"file://{tmp_path / 'scored.ndjson'}", load_settings())
    assert not (tmp_path / "scored.ndjson").exists()


def test_default_sink_names():
    from pipelines.scoring.score_logs import default_sink

    assert default_sink("file:///data/logs.ndjson.gz") == "file:///data/logs.scored.ndjson"
    assert default_sink("file:///data/logs-2026.11.16.ndjson") == "file:///data/logs-2026.11.16.scored.ndjson"
    assert default_sink("file:///data/*.ndjson") == "file:///data/scored.ndjson"
    assert default_sink("http://es:9200/logs-*") == "http://es:9200/logs-*"
