"""The promotion gate's rules on metrics alone: margin, guards and their tolerances, validation and drift verdicts.
(The gate against a real `mlflow server`: tests/integration/test_promotion.py.)"""

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
