"""The promotion gate's rules on metrics alone: margin, guards and their tolerances, validation and drift verdicts; and
the automatic rollback of a decayed champion, on a local registry with the evaluation stood in for.
(The gate against a real `mlflow server`: tests/integration/test_promotion.py; three nights ending in a rollback:
tests/integration/test_auto_rollback.py.)"""

from __future__ import annotations

import pytest


def test_gate_rules():
    from pipelines.config import ConfigError, PromotionSettings
    from pipelines.registry.gate import decide
    from pipelines.tasks.spec import TaskSpec

    def never(*args):
        raise AssertionError("the rules read metrics only")

    spec = TaskSpec("classifier", "logs", train=never, evaluate=never, primary="f1", guards=("recall",))
    cfg = PromotionSettings(margin=0.01, guard_tolerance=0.05)
    champion = {"f1": 0.70, "recall": 0.80}
    calm = {"status": "none", "label_shift": False}

    def verdict(challenger, validation="passed", drift=calm, spec=spec, cfg=cfg, champion=champion):
        return decide(spec, challenger, champion, validation, drift, cfg)

    assert verdict({"f1": 0.75, "recall": 0.80})[0]
    ok, reasons = verdict({"f1": 0.705, "recall": 0.80})
    assert not ok and "does not beat" in reasons[0]  # better, but not by the margin
    ok, reasons = verdict({"f1": 0.80, "recall": 0.70})
    assert not ok and any("guard recall regressed" in r for r in reasons)
    assert verdict({"f1": 0.80, "recall": 0.76})[0]  # within the guard tolerance
    assert not verdict({"f1": 0.80, "recall": 0.80}, validation="failed")[0]
    assert verdict({"f1": 0.80, "recall": 0.80}, validation="not_run")[0]
    assert not verdict({"f1": 0.80, "recall": 0.80}, validation="not_run", cfg=PromotionSettings(margin=0.01, allow_not_run=False))[0]
    ok, reasons = verdict({"f1": 0.80, "recall": 0.80}, drift={"status": "severe", "label_shift": True})
    assert not ok and any("labelling fault" in r for r in reasons)
    assert verdict({"f1": 0.80, "recall": 0.80}, drift={"status": "severe", "label_shift": False})[0]  # the world moved: retraining helps
    assert not verdict({"f1": float("nan"), "recall": 0.80})[0]

    errors = TaskSpec("forecaster", "metrics", train=never, evaluate=never, primary="mae", guards=("smape",),
                      lower_is_better=frozenset({"mae", "smape"}))
    assert verdict({"mae": 0.20, "smape": 10.0}, spec=errors, champion={"mae": 0.25, "smape": 10.02})[0]
    assert not verdict({"mae": 0.30, "smape": 10.0}, spec=errors, champion={"mae": 0.25, "smape": 10.0})[0]
    # sMAPE is in percent: its own tolerance (promotion.guard_tolerances), not the shared 0.05
    percent = PromotionSettings(margin=0.01, guard_tolerance=0.05, guard_tolerances="smape=2.0")
    ok, reasons = verdict({"mae": 0.20, "smape": 11.5}, spec=errors, champion={"mae": 0.25, "smape": 10.0}, cfg=percent)
    assert ok and "within tolerance 2.0" in reasons[1]
    assert not verdict({"mae": 0.20, "smape": 12.5}, spec=errors, champion={"mae": 0.25, "smape": 10.0}, cfg=percent)[0]
    with pytest.raises(ConfigError, match="promotion.guard_tolerances: cannot read 'smape'"):
        verdict({"mae": 0.20, "smape": 11.5}, spec=errors, champion={"mae": 0.25, "smape": 10.0},
                cfg=PromotionSettings(guard_tolerances="smape"))


# ---- automatic rollback of a decayed champion ------------------------------------------------------------------------
# On a local SQLite registry with versions that carry no model: the evaluation on the holdout is stood in for
# (`holdout_metrics`), the rest (tags, lock, compare-and-set, pages, decay records) is the real thing. One store for
# the module (creating one takes seconds), one registered model per test, judged as log-anomaly is.

SPEC = "log-anomaly"


def test_previous_may_come_back_unless_it_failed_its_gate_was_rolled_back_by_hand_or_recently_for_decay():
    from datetime import datetime, timedelta, timezone

    from pipelines.config import PromotionSettings
    from pipelines.registry.gate import rollback_refusal

    cfg, now = PromotionSettings(rollback_quiet_days=7.0), datetime(2026, 11, 22, 3, tzinfo=timezone.utc)

    def ago(days: float) -> str:
        return (now - timedelta(days=days)).isoformat().replace("+00:00", "Z")

    assert rollback_refusal("1", {"promotion.decision": "promoted"}, cfg, now) is None
    assert "did not pass its own gate" in rollback_refusal("1", {"promotion.decision": "rejected"}, cfg, now)
    assert "did not pass its own gate" in rollback_refusal("1", {}, cfg, now)
    by_hand = {"promotion.decision": "rolled_back", "rollback.at": ago(30), "rollback.by": "sre", "rollback.reason": "alert storm"}
    assert "only a person brings it back" in rollback_refusal("1", by_hand, cfg, now)
    recent = {"promotion.decision": "rolled_back", "rollback.at": ago(2), "rollback.trigger": "decay"}
    assert "rollback_quiet_days (7)" in rollback_refusal("1", recent, cfg, now)
    assert rollback_refusal("1", {**recent, "rollback.at": ago(8)}, cfg, now) is None  # it passed its gate once
    assert rollback_refusal("1", recent, PromotionSettings(rollback_quiet_days=1.0), now) is None


def test_beats_on_primary_names_both_sides_and_needs_the_margin():
    from pipelines.registry.gate import beats_on_primary
    from pipelines.tasks import task

    spec = task(SPEC)
    ok, why = beats_on_primary(spec, {"f1": 0.90}, {"f1": 0.70}, 0.005, who="v1", whom="champion v2")
    assert ok and why == "f1 0.9000 vs champion v2 0.7000: beats it by the margin 0.005 (+0.2000)"
    assert not beats_on_primary(spec, {"f1": 0.703}, {"f1": 0.70}, 0.005)[0]
    assert not beats_on_primary(spec, {"f1": float("nan")}, {"f1": 0.70}, 0.005)[0]


@pytest.fixture(scope="module")
def local_registry(tmp_path_factory) -> str:
    """A migrated SQLite store, shared by the module's tests; its tracking URI."""
    import dataclasses

    from pipelines.config import Settings
    from pipelines.registry.store import use_store

    home = tmp_path_factory.mktemp("registry")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        use_store(dataclasses.replace(Settings(), home=home))
    return f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"


@pytest.fixture
def decayed(settings, local_registry, request, tmp_path, monkeypatch):
    """A model with v1 (the previous champion, promoted) and v2 (the champion, promoted over v1), their validation
    scores on their runs; a fresh holdout on which v2 scores 0.60 (decayed from 0.95) and v1 `scores["1"]`."""
    import json
    from types import SimpleNamespace

    import mlflow

    import pipelines.registry.gate as gate
    from pipelines.data.snapshots import load_snapshot
    from pipelines.registry.gate import champion_decay
    from pipelines.registry.store import ModelRef, use_store
    from pipelines.tasks import task

    monkeypatch.setenv("MLFLOW_TRACKING_URI", local_registry)
    client = use_store(settings)
    name = f"{SPEC}-{request.node.name.removeprefix('test_')[:60]}"
    client.create_registered_model(name)
    for version, best in (("1", 0.90), ("2", 0.95)):
        with mlflow.start_run() as run:
            mlflow.log_metric("best_f1", best)
        mv = client.create_model_version(name, f"s3://nightshift-test/v{version}", run_id=run.info.run_id,
                                         tags={"promotion.decision": "promoted", "promotion.at": "2026-11-01T00:00:00Z"})
        assert str(mv.version) == version
    client.set_model_version_tag(name, "2", "promotion.replaced", "1")
    client.set_registered_model_alias(name, "previous", "1")
    client.set_registered_model_alias(name, "champion", "2")
    holdout = tmp_path / "logs-fresh" / "2026-11-21"
    holdout.mkdir(parents=True)
    (holdout / "manifest.json").write_text(json.dumps({"window": {"start": "2026-11-20T00:00:00Z", "end": "2026-11-21T00:00:00Z"},
                                                       "content_hash": "sha256:" + "0" * 64}))
    scores = {"2": {"f1": 0.60, "recall": 0.9}, "1": {"f1": 0.85, "recall": 0.9}}
    evaluated = []

    def holdout_metrics(model_ref, path, settings):  # stands in for loading the version and scoring the holdout
        evaluated.append(model_ref)
        return scores[model_ref.split("/")[1]]

    monkeypatch.setattr(gate, "holdout_metrics", holdout_metrics)
    spec = task(SPEC)
    champion = ModelRef(name, "2")
    decay = champion_decay(client, champion, scores["2"], spec, settings.promotion)
    assert decay["status"] == "decayed"

    def run(settings=settings):
        return gate.roll_back_decayed(client, spec, champion, scores["2"], decay, load_snapshot(holdout), settings, "nightshift")

    def aliases() -> dict[str, str | None]:
        from pipelines.registry.store import alias_version

        return {a: alias_version(client, name, a) for a in ("champion", "previous")}

    return SimpleNamespace(client=client, name=name, scores=scores, run=run, evaluated=evaluated, settings=settings, aliases=aliases)


def test_a_decayed_champion_that_previous_beats_is_rolled_back(decayed):
    out = decayed.run()
    client = decayed.client
    assert out["status"] == "rolled_back" and (out["from"], out["to"]) == ("2", "1"), out
    assert "champion v2 decayed" in out["reason"] and "f1 0.8500 vs champion v2 0.6000: beats it" in out["reason"]
    assert decayed.evaluated == [f"{decayed.name}/1"]  # previous, on the same holdout, with the gate's evaluation
    assert decayed.aliases() == {"champion": "1", "previous": None}  # v1 replaced no one: the chain ends
    rolled, restored = client.get_model_version(decayed.name, "2"), client.get_model_version(decayed.name, "1")
    assert rolled.tags["promotion.decision"] == "rolled_back" and rolled.tags["rollback.trigger"] == "decay"
    assert rolled.tags["rollback.to"] == "1" and rolled.tags["rollback.by"] == "nightshift" and "decayed" in rolled.tags["rollback.reason"]
    assert restored.tags["rollback.restored_from"] == "2" and restored.tags["promotion.decision"] == "promoted"
    assert client.get_registered_model(decayed.name).tags["rollback.count"] == "1"
    assert rolled.description.startswith("### Rolled back: v2 no longer serves; the champion is v1 again")
    assert "| metric | v2 (this version) | v1 (restored) |" in rolled.description
    assert restored.description.startswith("### Restored: v1 is the champion again, replacing v2")
    assert "| **f1** (primary) | **0.8500** | 0.6000 |" in restored.description
    # the restored version is judged as the new champion: 0.85 against its own 0.90 is no decay
    assert restored.tags["decay.status"] == "ok" and [m.value for m in client.get_metric_history(restored.run_id, "decayed")] == [0.0]


def test_no_rollback_to_a_previous_that_failed_its_own_gate(decayed):
    decayed.client.set_model_version_tag(decayed.name, "1", "promotion.decision", "rejected")
    out = decayed.run()
    assert out["status"] == "refused" and "v1 did not pass its own gate" in out["reason"]
    assert decayed.evaluated == [] and decayed.aliases() == {"champion": "2", "previous": "1"}


def test_no_rollback_to_a_version_rolled_back_from_for_decay_within_the_quiet_window(decayed):
    from pipelines.registry.gate import _now

    client = decayed.client
    for key, value in {"rollback.at": _now(), "rollback.trigger": "decay", "promotion.decision": "rolled_back"}.items():
        client.set_model_version_tag(decayed.name, "1", key, value)
    out = decayed.run()
    assert out["status"] == "refused" and "promotion.rollback_quiet_days (7)" in out["reason"]
    assert decayed.aliases() == {"champion": "2", "previous": "1"}


def test_no_rollback_when_auto_rollback_is_off_or_previous_is_not_better(decayed):
    import dataclasses

    off = dataclasses.replace(decayed.settings, promotion=dataclasses.replace(decayed.settings.promotion, auto_rollback=False))
    out = decayed.run(off)
    assert out["status"] == "off" and "promotion.auto_rollback is off" in out["reason"] and decayed.evaluated == []
    decayed.scores["1"] = {"f1": 0.603}  # better, but not by the margin
    out = decayed.run()
    assert out["status"] == "refused" and "does not beat it by the margin" in out["reason"] and out["previous_metrics"] == {"f1": 0.603}
    assert decayed.aliases() == {"champion": "2", "previous": "1"}


def test_a_manual_promote_while_previous_is_judged_wins_and_the_rollback_stands_down(decayed, monkeypatch):
    """The champion moves (a `nightshift promote` of v3) after the gate read the aliases: the rollback's
    compare-and-set sees it and moves nothing."""
    import pipelines.registry.gate as gate
    from pipelines.registry.aliases import compare_and_set_champion

    client = decayed.client
    client.create_model_version(decayed.name, "s3://nightshift-test/v3")
    judged = gate.holdout_metrics

    def judged_while_promoted(model_ref, path, settings):
        assert compare_and_set_champion(client, decayed.name, "2", "3") == (True, "3")
        return judged(model_ref, path, settings)

    monkeypatch.setattr(gate, "holdout_metrics", judged_while_promoted)
    out = decayed.run()
    assert out["status"] == "lost" and "champion v3, previous v2" in out["reason"]
    assert decayed.aliases() == {"champion": "3", "previous": "2"}
    assert "rollback.at" not in client.get_model_version(decayed.name, "2").tags


def test_a_rollback_racing_a_manual_promote_leaves_one_consistent_champion(decayed, monkeypatch):
    """Both reach the promotion lock at the same moment: whichever takes it first moves the champion, the other's
    compare-and-set finds it moved; the aliases and tags tell one story."""
    from pipelines.registry.aliases import compare_and_set_champion
    from tests.support.races import race_rollback_against_promote

    client = decayed.client
    client.create_model_version(decayed.name, "s3://nightshift-test/v3")
    results = dict(zip(("rollback", "promote"), race_rollback_against_promote(
        monkeypatch, decayed.run, lambda: compare_and_set_champion(client, decayed.name, "2", "3"))))
    rolled_back, promoted = results["rollback"]["status"] == "rolled_back", results["promote"][0]
    assert rolled_back != promoted, results  # exactly one moved the champion
    tags = client.get_model_version(decayed.name, "2").tags
    if rolled_back:
        assert decayed.aliases() == {"champion": "1", "previous": None} and results["promote"] == (False, "1")
        assert tags["promotion.decision"] == "rolled_back"
    else:
        assert decayed.aliases() == {"champion": "3", "previous": "2"} and results["rollback"]["status"] == "lost"
        assert "rollback.at" not in tags and tags["promotion.decision"] == "promoted"
