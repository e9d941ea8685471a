"""The promotion gate, drift reports, rollback and compare-and-set against a real `mlflow server`
(SQLite backend) started here on a free loopback port.

The versions are trained once per module on the small demo corpus with the tiny BERT; the cases
differ in their data, so the outcomes are decided by it: v1 learns from one day, v2 from four
(and so catches more of the holdout's incidents), v3 from the same four days with 30% of the
labels flipped, v4 from those days after a switch to JSON-envelope logging. The holdout is the
fresh day after the training windows, which none of them trained on.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.support.drift_cases import flip_labels, json_envelope
from tests.support.mlflow_server import mlflow_server as start_mlflow_server

ROOT = Path(__file__).resolve().parents[2]
NAME = "log-anomaly"


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` on SQLite with proxied artifacts, on 127.0.0.1; stopped after the module."""
    with start_mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as url:
        yield url


@pytest.fixture(scope="module")
def registry(mlflow_server, corpus, tiny_bert, tmp_path_factory):
    """The server-backed store with v1 (one day), v2 (four days), v3 (flipped labels), v4 (format change)."""
    from nightshift.cli import parse_time
    from pipelines.config import load_settings
    from pipelines.data.ingest import ingest_logs
    from pipelines.registry.store import use_store
    from pipelines.tasks.log_anomaly import train_log_anomaly

    tmp = tmp_path_factory.mktemp("promotion")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        mp.delenv("NIGHTSHIFT_CONFIG", raising=False)
        for key, value in {"NIGHTSHIFT_HOME": str(tmp / "home"), "MLFLOW_TRACKING_URI": mlflow_server, "NIGHTSHIFT_USER": "test-sre",
                           "NIGHTSHIFT_TRAIN_EPOCHS": "3", "NIGHTSHIFT_TRAIN_LEARNING_RATE": "0.003",
                           "NIGHTSHIFT_TRAIN_BATCH_SIZE": "32", "NIGHTSHIFT_DRIFT_EMBEDDING_SAMPLE": "120",
                           # validation by time only: holding whole templates back too starves v1's one day of
                           # training, and these tests need the four-day v2 to be the better model
                           "NIGHTSHIFT_CANDIDATES_TEMPLATE_HOLDOUT": "0"}.items():
            mp.setenv(key, value)
        settings = load_settings()
        root = settings.snapshot_root

        def snap(start, end, dataset="logs"):
            return ingest_logs(f"file://{corpus}", parse_time(start), parse_time(end), root / dataset / f"{start}_{end}", settings, dataset=dataset)

        one_day, four_days = snap("2026-11-16", "2026-11-17"), snap("2026-11-16", "2026-11-20")
        holdout = snap("2026-11-20", "2026-11-21", "logs-fresh")
        flipped = flip_labels(four_days, root / "logs" / "flipped")
        envelope = json_envelope(four_days, root / "logs" / "envelope")
        versions = [train_log_anomaly(s.path, settings, str(tiny_bert)).version for s in (one_day, four_days, flipped)]
        quick = dataclasses.replace(settings, train=dataclasses.replace(settings.train, epochs=1))  # only its data matters
        versions.append(train_log_anomaly(envelope.path, quick, str(tiny_bert)).version)
        assert versions == ["1", "2", "3", "4"]
        yield SimpleNamespace(settings=settings, client=use_store(settings), holdout=holdout, four_days=four_days, url=mlflow_server)


def reset(client, champion: str, challenger: str, previous: str | None = None) -> None:
    """Put the aliases in a known state and forget earlier rollbacks."""
    client.set_registered_model_alias(NAME, "champion", champion)
    client.set_registered_model_alias(NAME, "challenger", challenger)
    if previous:
        client.set_registered_model_alias(NAME, "previous", previous)
    else:
        try:
            client.delete_registered_model_alias(NAME, "previous")
        except Exception:
            pass
    for mv in client.search_model_versions(f"name='{NAME}'"):
        for key in [k for k in mv.tags if k.startswith("rollback.")]:
            client.delete_model_version_tag(NAME, mv.version, key)


def aliases(client) -> dict[str, str | None]:
    from pipelines.registry.store import alias_version

    return {a: alias_version(client, NAME, a) for a in ("champion", "previous", "challenger")}


def run_artifact(client, version: str, path: str, tmp_path: Path) -> str:
    import mlflow.artifacts

    run_id = client.get_model_version(NAME, version).run_id
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=str(tmp_path))).read_text()


def test_better_challenger_is_promoted(registry, capsys, tmp_path):
    from nightshift.cli import main

    client = registry.client
    reset(client, champion="1", challenger="2")
    assert main(["promote", NAME, "--json"]) == 0  # the holdout is found: the fresh day after both windows
    out = json.loads(capsys.readouterr().out)
    assert out["decision"] == "promoted" and out["holdout"]["snapshot"] == str(registry.holdout.path), out.get("reasons")
    assert out["challenger_metrics"]["f1"] > out["champion_metrics"]["f1"]
    assert aliases(client) == {"champion": "2", "previous": "1", "challenger": None}  # decided: no longer waiting

    tags = client.get_model_version(NAME, "2").tags
    assert tags["promotion.decision"] == "promoted" and "beats it" in tags["promotion.reason"]
    assert tags["promotion.against"] == "1" and tags["promotion.by"] == "test-sre"
    assert tags["drift.status"] in ("none", "warn", "severe") and tags["drift.reference_version"] == "1"
    run = client.get_run(client.get_model_version(NAME, "2").run_id)
    assert run.data.tags["promotion.decision"] == "promoted" and "holdout_f1" in run.data.metrics
    assert {"holdout_champion_f1", "holdout_baseline_tfidf_f1"} <= set(run.data.metrics)
    assert any(i.dataset.name == "logs-fresh/2026-11-20_2026-11-21" for i in run.inputs.dataset_inputs)  # the holdout, as a dataset
    # the version page: the decision, one reason per line, the holdout table, links to the run's reports
    page = client.get_model_version(NAME, "2").description
    assert page.startswith("### Promoted: v2 is the champion, replacing v1")
    assert all(f"- {reason}" in page for reason in out["reasons"])
    assert "| metric | v2 (this version) | v1 (champion) | reference (baseline) | tfidf (baseline) |" in page and "| **f1** (primary) |" in page
    assert "[drift report](#/experiments/" in page and "/artifactPath/promotion/decision.json)" in page
    assert main(["promote", NAME]) == 2  # nothing waits for the gate any more
    assert "no version waits for the gate" in capsys.readouterr().err
    decision = json.loads(run_artifact(client, "2", "promotion/decision.json", tmp_path))
    assert decision["decision"] == "promoted" and decision["champion_metrics"] == out["champion_metrics"]
    assert json.loads(run_artifact(client, "2", "drift/report.json", tmp_path))["reference_version"] == "1"

    # champion decay: v1 measured on the new window against its own validation score
    assert client.get_model_version(NAME, "1").tags["decay.status"] in ("ok", "decayed")
    assert client.get_metric_history(client.get_model_version(NAME, "1").run_id, "fresh_f1")[-1].step == 20261120


def test_poisoned_challenger_is_rejected(registry, capsys):
    from nightshift.cli import main

    client = registry.client
    reset(client, champion="2", challenger="3", previous="1")
    assert main(["promote", NAME, "--holdout", str(registry.holdout.path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["decision"] == "rejected"
    assert out["challenger_metrics"]["f1"] < out["champion_metrics"]["f1"]
    assert aliases(client) == {"champion": "2", "previous": "1", "challenger": None}  # decided: the tags say what happened

    tags = client.get_model_version(NAME, "3").tags
    assert tags["promotion.decision"] == "rejected" and "f1" in tags["promotion.reason"] and "does not beat" in tags["promotion.reason"]
    assert client.get_model_version(NAME, "3").description.startswith("### Rejected: v3 stays out; the champion is v2")
    assert tags["drift.label_shift"] == "true"  # 30% flipped labels move the anomaly rate
    assert client.get_run(client.get_model_version(NAME, "3").run_id).data.tags["promotion.decision"] == "rejected"


def test_holdout_that_a_version_trained_on_is_refused(registry, capsys):
    from nightshift.cli import main

    reset(registry.client, champion="1", challenger="2")
    assert main(["promote", NAME, "--holdout", str(registry.four_days.path)]) == 2
    assert "neither version trained on" in capsys.readouterr().err
    assert aliases(registry.client)["champion"] == "1"


def test_drifted_snapshot_gets_severe_status_and_report(registry, tmp_path):
    from pipelines.data.drift import check_drift
    from pipelines.registry.store import ModelRef

    client = registry.client
    reset(client, champion="2", challenger="4", previous="1")
    report = check_drift(client, ModelRef(NAME, "4"), registry.settings)
    assert report["status"] == "severe" and report["reference_version"] == "2"
    tags = client.get_model_version(NAME, "4").tags
    assert tags["drift.status"] == "severe" and tags["drift.label_shift"] == "false"
    logged = json.loads(run_artifact(client, "4", "drift/report.json", tmp_path))
    assert logged["status"] == "severe" and {c["name"]: c["status"] for c in logged["checks"]}["message.template"] == "severe"
    assert "severe" in run_artifact(client, "4", "drift/report.html", tmp_path)
    run = client.get_run(client.get_model_version(NAME, "4").run_id)
    assert run.data.tags["drift.status"] == "severe" and run.data.metrics["drift_message_template"] > 0.3


def test_nightly_gate_promotes_and_scoring_follows(registry, tmp_path):
    """The flow's gate task on a trained candidate, then the flow's scoring: it uses the new champion."""
    import dataclasses

    from pipelines.flow import gate_candidate, plan_night, score_fresh

    client = registry.client
    reset(client, champion="1", challenger="2")
    outcome = gate_candidate(NAME, {"model": NAME, "version": "2", "decision": "pending"}, str(registry.holdout.path), registry.settings)
    assert outcome["decision"] == "promoted" and outcome["promotion"]["champion_now"] == "2"
    assert aliases(client)["challenger"] is None
    assert gate_candidate(NAME, None, str(registry.holdout.path), registry.settings) is None  # training was skipped

    plan = plan_night(registry.settings, "2026-11-21", registry.holdout.manifest["source"])  # fresh window: 2026-11-20
    night = dataclasses.replace(plan, scored_sink=f"file://{tmp_path / 'scored.ndjson'}").to_dict()
    scoring = score_fresh(night, registry.settings)
    assert scoring["version"] == "2" and scoring["scored"] == registry.holdout.manifest["row_count"]


def test_rollback_restores_previous_champion_and_scoring_uses_it(registry, capsys, tmp_path):
    from nightshift.cli import main
    from pipelines.registry.gate import PromotionError, promote, rollback

    client = registry.client
    reset(client, champion="2", challenger="2", previous="1")
    client.set_model_version_tag(NAME, "2", "promotion.replaced", "1")
    assert main(["rollback", NAME, "--reason", "alert storm after release", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rolled_back"] == "2" and out["champion"] == "1" and out["by"] == "test-sre" and out["moved"] is True
    assert aliases(client)["champion"] == "1" and aliases(client)["previous"] is None

    tags = client.get_model_version(NAME, "2").tags
    assert tags["promotion.decision"] == "rolled_back" and tags["rollback.reason"] == "alert storm after release"
    assert tags["rollback.by"] == "test-sre" and tags["rollback.at"].startswith("20") and tags["rollback.to"] == "1"
    assert tags["rollback.trigger"] == "manual"  # an automatic rollback never brings it back
    assert client.get_model_version(NAME, "1").tags["rollback.restored_from"] == "2"
    assert "alert storm" in client.get_registered_model(NAME).tags["rollback.last"]
    assert client.get_registered_model(NAME).tags["rollback.count"].isdigit()
    # both pages open with the rollback, above what they said before
    rolled, restored = client.get_model_version(NAME, "2").description, client.get_model_version(NAME, "1").description
    assert rolled.startswith("### Rolled back: v2 no longer serves; the champion is v1 again") and "- alert storm after release" in rolled
    assert restored.startswith("### Restored: v1 is the champion again, replacing v2") and "Decided by test-sre" in restored

    sink = tmp_path / "scored.ndjson"
    fresh = registry.holdout.manifest["source"]
    assert main(["score", "logs", "--model", f"{NAME}@champion", "--source", fresh, "--sink", f"file://{sink}",
                 "--start", "2026-11-20", "--end", "2026-11-21", "--json"]) == 0
    capsys.readouterr()
    versions = {json.loads(line)["ml"]["model"]["version"] for line in sink.read_text().splitlines()}
    assert versions == {"1"}

    # the rolled-back version does not come back through the gate
    again = promote(NAME, registry.settings, version="2")
    assert again["decision"] == "rejected" and "rolled back" in again["reason"] and aliases(client)["champion"] == "1"
    assert client.get_model_version(NAME, "2").tags["promotion.decision"] == "rolled_back"
    with pytest.raises(PromotionError, match="no previous champion"):
        rollback(NAME, registry.settings, "again")


def test_two_concurrent_promotions_end_consistent(registry):
    """Two candidates that both beat champion v1 are gated at once; both finish their evaluation
    before either moves the alias, so both try the compare-and-set against v1. Exactly one wins."""
    from pipelines.registry.gate import promote

    client = registry.client
    reset(client, champion="1", challenger="2")
    v2 = client.get_model_version(NAME, "2")
    twin = client.create_model_version(NAME, f"models:/{NAME}/2", run_id=v2.run_id, tags=dict(v2.tags)).version  # registered twice
    both = threading.Barrier(2, timeout=300)
    results, errors = {}, []

    def gate(version):
        try:
            results[version] = promote(NAME, registry.settings, holdout=registry.holdout.path, version=version, before_commit=both.wait)
        except Exception as exc:  # surfaced below
            errors.append(exc)
            both.abort()

    threads = [threading.Thread(target=gate, args=(v,)) for v in ("2", str(twin))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(400)
    assert not errors, errors
    decisions = {v: r["decision"] for v, r in results.items()}
    assert sorted(decisions.values()) == ["promoted", "stale"], decisions
    winner = next(v for v, d in decisions.items() if d == "promoted")
    loser = next(v for v, d in decisions.items() if d == "stale")
    state = aliases(client)
    assert state["champion"] == winner and state["previous"] == "1"
    assert client.get_model_version(NAME, winner).tags["promotion.decision"] == "promoted"
    assert client.get_model_version(NAME, winner).tags["promotion.against"] == "1"
    loser_tags = client.get_model_version(NAME, loser).tags
    assert loser_tags["promotion.decision"] == "stale" and "compare-and-set lost" in loser_tags["promotion.reason"]
    assert f"to v{winner}" in loser_tags["promotion.reason"]
    assert not [m for m in client.search_registered_models() if m.name.endswith(".promotion-lock")]  # the mutex is released


def test_two_gates_of_the_same_challenger_at_once_keep_the_winners_record(registry, tmp_path):
    """Two `nightshift promote` of the same challenger at the same moment: one moves the alias, the
    other loses the compare-and-set against the version it judged, and must not write its `stale`
    over the record of the version the first one promoted."""
    from pipelines.registry.gate import promote

    client = registry.client
    reset(client, champion="1", challenger="2")
    both = threading.Barrier(2, timeout=300)
    results, errors = [], []

    def gate():
        try:
            results.append(promote(NAME, registry.settings, holdout=registry.holdout.path, before_commit=both.wait))
        except Exception as exc:  # surfaced below
            errors.append(exc)
            both.abort()

    threads = [threading.Thread(target=gate) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(400)
    assert not errors, errors
    assert sorted(r["decision"] for r in results) == ["kept", "promoted"], results
    winner = next(r for r in results if r["decision"] == "promoted")
    assert aliases(client)["champion"] == "2" and aliases(client)["previous"] == "1"
    tags = client.get_model_version(NAME, "2").tags
    assert tags["promotion.decision"] == "promoted" and tags["promotion.at"] == winner["at"]
    assert json.loads(run_artifact(client, "2", "promotion/decision.json", tmp_path))["decision"] == "promoted"
    assert client.get_run(client.get_model_version(NAME, "2").run_id).data.tags["promotion.decision"] == "promoted"


CAS_RACE = """
import sys, time
from pathlib import Path
from mlflow import MlflowClient
import pipelines.registry.gate as promotion
uri, name, version, barrier = sys.argv[1:]
client = MlflowClient(uri, registry_uri=uri)
read = promotion.alias_version
def slow_read(*args):  # widen the read-then-move window: without the lock both would see v1 and move
    seen = read(*args)
    time.sleep(1.0)
    return seen
promotion.alias_version = slow_read
Path(barrier, version).touch()
while len(list(Path(barrier).iterdir())) < 2:  # both processes start the compare-and-set together
    time.sleep(0.01)
print(promotion.compare_and_set_champion(client, name, "1", version)[0])
"""


@pytest.mark.parametrize("store", ["sqlite", "server"])
def test_compare_and_set_across_processes(store, mlflow_server, tmp_path):
    """Two processes racing to move `champion` from v1: one wins, the other sees it moved (file lock
    for a local SQLite store, the registry mutex for a server)."""
    from mlflow import MlflowClient

    from pipelines.registry.store import alias_version

    uri = mlflow_server if store == "server" else f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    name = f"cas-race-{store}"
    client.create_registered_model(name)
    for _ in range(3):
        client.create_model_version(name, "s3://nightshift-test/model")  # never loaded
    client.set_registered_model_alias(name, "champion", "1")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", CAS_RACE, uri, name, v, str(barrier)], env=env, stdout=subprocess.PIPE, text=True)
             for v in ("2", "3")]
    won = [p.communicate(timeout=300)[0].strip().splitlines()[-1] == "True" for p in procs]
    assert won.count(True) == 1
    assert alias_version(client, name, "champion") == ("2", "3")[won.index(True)]
    assert alias_version(client, name, "previous") == "1"


@pytest.mark.parametrize("store", ["sqlite", "server"])
def test_automatic_rollback_racing_a_manual_promote_leaves_one_champion(store, mlflow_server, tmp_path, monkeypatch):
    """The gate's rollback of a decayed v2 to v1 and a `nightshift promote` of v3 over v2 reach the promotion lock
    together (file lock for a local SQLite store, the registry mutex for a server): one moves the champion, the
    other's compare-and-set finds it moved, and the aliases and tags tell one story. The versions carry no model:
    the evaluation on the holdout is stood in for."""
    import dataclasses

    import pipelines.registry.gate as gate
    from pipelines.config import load_settings
    from pipelines.data.snapshots import load_snapshot
    from pipelines.registry.aliases import compare_and_set_champion
    from pipelines.registry.store import ModelRef, alias_version, use_store
    from pipelines.tasks import task
    from tests.support.races import race_rollback_against_promote

    uri = mlflow_server if store == "server" else f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("NIGHTSHIFT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    settings = load_settings()
    settings = dataclasses.replace(settings, promotion=dataclasses.replace(settings.promotion, lock_timeout=60.0, lock_lease=30.0))
    client = use_store(settings)
    name = f"rollback-race-{store}"
    client.create_registered_model(name)
    for version in ("1", "2", "3"):
        client.create_model_version(name, f"s3://nightshift-test/v{version}", tags={"promotion.decision": "promoted"})
    client.set_registered_model_alias(name, "previous", "1")
    client.set_registered_model_alias(name, "champion", "2")
    holdout = tmp_path / "logs-fresh" / "2026-11-21"
    holdout.mkdir(parents=True)
    (holdout / "manifest.json").write_text(json.dumps({"window": {"start": "2026-11-20T00:00:00Z", "end": "2026-11-21T00:00:00Z"},
                                                       "content_hash": "sha256:" + "1" * 64}))
    scores = {"1": {"f1": 0.9}, "2": {"f1": 0.6}}
    monkeypatch.setattr(gate, "holdout_metrics", lambda ref, path, settings: scores[ref.split("/")[1]])
    decay = {"status": "decayed", "reason": "f1 0.6000 on the fresh window vs 0.9500 at validation"}
    results = dict(zip(("rollback", "promote"), race_rollback_against_promote(
        monkeypatch,
        lambda: gate.roll_back_decayed(client, task(NAME), ModelRef(name, "2"), scores["2"], decay, load_snapshot(holdout), settings,
                                       "nightshift"),
        lambda: compare_and_set_champion(client, name, "2", "3", timeout=60.0, lease=30.0), timeout=120)))
    rolled_back, promoted = results["rollback"]["status"] == "rolled_back", results["promote"][0]
    assert rolled_back != promoted, results  # exactly one moved the champion
    state = {a: alias_version(client, name, a) for a in ("champion", "previous")}
    tags = client.get_model_version(name, "2").tags
    if rolled_back:
        assert state == {"champion": "1", "previous": None} and results["promote"] == (False, "1")
        assert tags["promotion.decision"] == "rolled_back" and tags["rollback.trigger"] == "decay"
    else:
        assert state == {"champion": "3", "previous": "2"} and results["rollback"]["status"] == "lost"
        assert "rollback.at" not in tags
    assert not [m for m in client.search_registered_models() if m.name.endswith(".promotion-lock")]  # the mutex is released
