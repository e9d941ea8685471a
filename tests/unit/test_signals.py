"""The night's platform signals read from a local registry (`pipelines.signals.model_signals`), and a night whose
Pushgateway does not answer: its summary says so and is written all the same. (Pushed to a real Pushgateway:
tests/integration/test_pushgateway.py and tests/integration/test_auto_rollback.py.)"""

from __future__ import annotations

NAME = "log-anomaly"


def test_signals_read_the_champion_its_decayed_nights_since_it_became_champion_and_tonights_gate(settings):
    from datetime import datetime, timezone

    import mlflow

    from pipelines.registry.store import use_store
    from pipelines.signals import decayed_nights, model_signals

    client = use_store(settings)
    client.create_registered_model(NAME, tags={"rollback.count": "2"})
    with mlflow.start_run() as run:
        pass
    run_id = run.info.run_id
    client.create_model_version(NAME, "s3://nightshift-test/v1", run_id=run_id,
                                tags={"promotion.decision": "promoted", "promotion.at": "2026-11-10T00:00:00Z", "decay.status": "decayed"})
    client.set_registered_model_alias(NAME, "champion", "1")
    ms = 1_000

    def judged(day: int, decayed: int, at_s: float) -> None:
        client.log_metric(run_id, "decayed", decayed, timestamp=int(at_s * ms), step=20261100 + day)

    promoted_at = datetime(2026, 11, 10, tzinfo=timezone.utc).timestamp()
    judged(8, 1, promoted_at - 86400)  # before it became champion: not counted
    judged(11, 0, promoted_at + 1 * 86400)
    judged(12, 1, promoted_at + 2 * 86400)
    judged(13, 1, promoted_at + 3 * 86400)
    judged(13, 1, promoted_at + 3 * 86400 + 60)  # the same window judged again counts once
    client.log_metric(run_id, "fresh_f1", 0.62, timestamp=int((promoted_at + 3 * 86400) * ms), step=20261113)
    assert decayed_nights(client, NAME, "1") == 2
    judged(14, 1, promoted_at + 4 * 86400)
    assert decayed_nights(client, NAME, "1") == 3
    client.set_model_version_tag(NAME, "1", "rollback.restored_at", "2026-11-14T12:00:00Z")  # champion again since then
    assert decayed_nights(client, NAME, "1") == 0

    outcome = {"decision": "rejected", "promotion": {"drift": {"status": "warn", "scores": {"message_template": 0.12}},
                                                      "rollback": {"status": "refused", "reason": "no previous"}}}
    signals = model_signals(client, NAME, outcome)
    assert signals == {"champion": "1", "fresh_metric": ("f1", 0.62), "decayed": 1, "decayed_nights": 0,
                       "drift_scores": {"message_template": 0.12}, "drift_severity": 1, "decision": "rejected",
                       "rolled_back": 0, "rollbacks": 2}
    skipped = model_signals(client, "failure-rca", {"decision": "skipped", "reason": "not trained"})  # no model registered yet
    assert skipped["champion"] is None and skipped["decision"] == "skipped" and skipped["drift_severity"] is None


def test_a_pushgateway_that_does_not_answer_is_said_in_the_summary(settings, monkeypatch):
    import json

    from pipelines.config import load_settings
    from pipelines.flow import describe, plan_night, write_summary
    from tests.support.prom_servers import free_port

    monkeypatch.setenv("NIGHTSHIFT_PROMETHEUS_PUSHGATEWAY", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("NIGHTSHIFT_PROMETHEUS_TIMEOUT", "2")
    settings = load_settings()
    plan = plan_night(settings, "2026-11-22").to_dict()
    summary = write_summary(plan, {NAME: None}, None, None, [], settings)
    assert "did not take the nightshift signals" in summary["signals"]["error"]
    assert json.loads(settings.storage_root.joinpath("runs", "2026-11-22", "summary.json").read_text())["signals"] == summary["signals"]
    assert "  signals not pushed: Pushgateway at http://127.0.0.1:" in describe(summary)
