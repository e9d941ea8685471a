"""The demo flow against a real Elasticsearch node (security on, basic auth): index the demo corpus, ingest
through `nightshift ingest logs --source http://…/logs-*`, train the tiny BERT, score back into the indices with
`nightshift score logs`; a second run writes nothing, a killed run resumes losing nothing and scoring nothing twice,
and a promotion re-scores."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import datetime, timezone

import pytest

from tests.support.es_cluster import Cluster
from tests.support.es_proxy import FaultProxy

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def day_docs(cluster, day: str) -> dict:
    return {k: d for k, d in cluster.docs("logs-*").items() if d["@timestamp"].startswith(day)}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus, tiny_bert, es_node):
    """A real node holding the demo corpus as daily indices, and log-anomaly v1 trained on a snapshot pulled from it."""
    from nightshift.cli import main

    root = tmp_path_factory.mktemp("es-flow")
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {"NIGHTSHIFT_HOME": str(root / "home"), "NIGHTSHIFT_TRAIN_EPOCHS": "2", "NIGHTSHIFT_TRAIN_BATCH_SIZE": "32",
                            "NIGHTSHIFT_TRAIN_LEARNING_RATE": "0.001", "NIGHTSHIFT_LOG_FORMAT": "console"}.items():
            mp.setenv(name, value)
        mp.setenv("MLFLOW_TRACKING_URI", "unset")  # set, then deleted: undone after the module even if mlflow sets it meanwhile
        mp.delenv("MLFLOW_TRACKING_URI")
        mp.delenv("NIGHTSHIFT_CONFIG", raising=False)
        user, password = es_node.credential
        mp.setenv("NIGHTSHIFT_ELASTICSEARCH_USERNAME", user)
        mp.setenv("NIGHTSHIFT_ELASTICSEARCH_PASSWORD", password)
        mp.chdir(root)
        cluster = Cluster.on(es_node)
        cluster.load(json.loads(line) for line in corpus.read_text().splitlines())
        snapshot = root / "snap-train"
        assert main(["ingest", "logs", "--source", f"{cluster.url}/{cluster.name('logs-*')}", "--start", "2026-11-18", "--end", "2026-11-20",
                     "--out", str(snapshot)]) == 0
        assert main(["train", "log-anomaly", "--snapshot", str(snapshot), "--base-model", str(tiny_bert)]) == 0
        yield cluster, root / "home"
        cluster.close()


def score(cluster, day: str, *extra: str, url: str | None = None) -> dict:
    import contextlib
    import io

    from nightshift.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["score", "logs", "--source", f"{url or cluster.url}/{cluster.name('logs-*')}", "--start", day, "--end", next_day(day), "--json", *extra])
    assert code == 0
    return json.loads(out.getvalue())


def next_day(day: str) -> str:
    d = datetime.fromisoformat(day).replace(tzinfo=timezone.utc)
    return datetime.fromtimestamp(d.timestamp() + 86400, tz=timezone.utc).date().isoformat()


def test_demo_flow_scores_back_into_the_index_and_a_second_run_writes_nothing(trained):
    cluster, _ = trained
    day = "2026-11-21"
    before = cluster.docs("logs-*")
    first = score(cluster, day)
    expected = len(day_docs(cluster, day))
    assert first["model"] == "log-anomaly" and first["version"] == "1"
    assert first["read"] == first["scored"] == first["written"] == expected > 0 and first["failed"] == 0
    after = cluster.docs("logs-*")
    for key, doc in after.items():
        if doc["@timestamp"].startswith(day):
            ml = doc["ml"]
            assert 0.0 <= ml["anomaly"]["score"] <= 1.0 and isinstance(ml["anomaly"]["is_anomaly"], bool)
            assert ml["model"] == {"name": "log-anomaly", "version": "1", "family": "bert-cls", "runtime": first["runtime"]}
            assert {k: v for k, v in doc.items() if k != "ml"} == before[key]  # only ml.* was written
        else:
            assert doc == before[key]  # outside the window: untouched

    second = score(cluster, day)
    assert (second["read"], second["scored"], second["written"]) == (0, 0, 0)
    assert second["skipped_reasons"] == {"already scored by log-anomaly v1": expected}


def test_killed_scoring_run_resumes_losing_nothing_and_scoring_nothing_twice(trained):
    """The scoring process is SIGKILLed as its third bulk is answered (the proxy in front of the node sees it)."""
    cluster, home = trained
    day = "2026-11-19"
    expected = set(day_docs(cluster, day))
    proxy = FaultProxy(cluster.url).start()
    env = {**os.environ, "NIGHTSHIFT_HOME": str(home), "NIGHTSHIFT_ELASTICSEARCH_BULK_MAX_BYTES": "6000",
           "NIGHTSHIFT_SCORE_SORT_WINDOW": "64", "PYTHONPATH": PROJECT_ROOT}
    source = f"{proxy.url}/{cluster.name('logs-*')}"
    proc = subprocess.Popen([sys.executable, "-m", "nightshift.cli", "score", "logs", "--source", source,
                             "--start", day, "--end", next_day(day)], env=env, cwd=PROJECT_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proxy.faults.on_bulk = lambda n: os.kill(proc.pid, signal.SIGKILL) if n == 3 else None
    try:
        assert proc.wait(timeout=240) == -signal.SIGKILL
    finally:
        proxy.faults.on_bulk = None
        if proc.poll() is None:
            proc.kill()
    written_before = {k for k, d in day_docs(cluster, day).items() if "ml" in d}
    assert 0 < len(written_before) < len(expected)  # three bulks landed (the third unacknowledged), then the kill
    checkpoint = json.loads(next((home / "checkpoints").glob("score-*.json")).read_text())
    assert checkpoint["written"] < len(written_before)  # the third bulk was applied but never acknowledged

    try:
        resumed = score(cluster, day, url=proxy.url)  # the checkpoint is keyed by the source URI
    finally:
        proxy.close()
    assert resumed["resumed_from"] == checkpoint["watermark"]
    assert resumed["written"] == len(expected) - len(written_before) and resumed["failed"] == 0
    assert resumed["skipped_reasons"] == {"already scored by log-anomaly v1": len(written_before)}
    counts = cluster.update_counts()
    assert {k for k in counts if k in expected} == expected  # nothing lost
    assert all(counts[k] == 1 for k in expected)  # nothing written twice
    assert not list((home / "checkpoints").glob("score-*.json"))


def test_a_promotion_rescores_the_window(trained):
    from mlflow import MlflowClient

    from pipelines.config import load_settings
    from pipelines.registry.store import use_store

    cluster, _ = trained
    day = "2026-11-20"
    expected = len(day_docs(cluster, day))
    assert score(cluster, day)["written"] == expected
    client: MlflowClient = use_store(load_settings())
    v1 = client.get_model_version("log-anomaly", "1")
    v2 = client.create_model_version("log-anomaly", v1.source, run_id=v1.run_id)
    client.set_registered_model_alias("log-anomaly", "champion", v2.version)
    promoted = score(cluster, day)
    assert (promoted["version"], promoted["written"], promoted["skipped"]) == (str(v2.version), expected, 0)
    assert all(d["ml"]["model"]["version"] == str(v2.version) for d in day_docs(cluster, day).values())
    assert score(cluster, day)["written"] == 0
