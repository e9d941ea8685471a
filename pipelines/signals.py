"""The platform's own signals in Prometheus: after the gates, each night pushes what it learnt about every model to the
Pushgateway, so that the alert rules in infra/prometheus/rules/platform_alerts.yml can watch the platform itself.

Per model, one group (grouping key: `model` and `nightshift_deployment`, job `SIGNALS_JOB`), pushed with PUT so
that last night's decision never lingers beside tonight's:

    nightshift_champion_version                   the champion's version number (from the registry, after the gates)
    nightshift_champion_fresh_metric{metric}      its primary metric on the latest fresh window it was judged on
    nightshift_champion_decayed                   1 when that judgement found it decayed, 0 when not (absent: unknown)
    nightshift_champion_decayed_nights            how many judgements in a row, since it became champion, found it decayed
    nightshift_drift_score{check}                 tonight's drift statistics of the candidate against the champion
    nightshift_drift_severity                     0 none, 1 warn, 2 severe (absent: drift not checked)
    nightshift_gate_decision{decision}            1 for tonight's decision (promoted, rejected, ..., skipped, failed), 0 for the others
    nightshift_champion_rolled_back               1 when tonight's gate rolled the decayed champion back, else 0
    nightshift_rollbacks_total                    rollbacks of the model so far, by hand or on decay (a counter)

Per deployment, one group (grouping key: `nightshift_deployment`), pushed with POST so that a failed night leaves the
last success in place:

    nightshift_night_last_run_timestamp_seconds   when the night's summary was written
    nightshift_night_failed_tasks                 how many of its tasks failed
    nightshift_night_success_timestamp_seconds    when the last night without a failed task finished

The forecasts (`pipelines.scoring.forecasts`) go to their own job, `prometheus.forecast_job`: neither push touches the other's
groups. Labels follow the forecasts': `nightshift_deployment` is `Settings.deployment_id`.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

from pipelines.config import Settings
from pipelines.registry.gate import DECAYED_METRIC
from pipelines.registry.store import CHAMPION, alias_version, use_store
from pipelines.scoring.forecasts import DEPLOYMENT_LABEL
from pipelines.sources.prometheus import PrometheusError
from pipelines.tasks import task
from pipelines.telemetry import get_logger

log = get_logger("signals")

SIGNALS_JOB = "nightshift_platform"  # Pushgateway job of these signals; the forecasts have their own
DECISIONS = ("promoted", "rejected", "stale", "kept", "skipped", "failed")  # every night pushes each, 1 for tonight's
DRIFT_SEVERITY = {"none": 0, "warn": 1, "severe": 2}
# Every metric name pushed, for the alert rules' tests to check against.
MODEL_METRICS = ("nightshift_champion_version", "nightshift_champion_fresh_metric", "nightshift_champion_decayed",
                 "nightshift_champion_decayed_nights", "nightshift_drift_score", "nightshift_drift_severity",
                 "nightshift_gate_decision", "nightshift_champion_rolled_back", "nightshift_rollbacks_total")
NIGHT_METRICS = ("nightshift_night_last_run_timestamp_seconds", "nightshift_night_failed_tasks",
                 "nightshift_night_success_timestamp_seconds")


def _iso_ms(value: str | None) -> int:
    """An ISO-8601 tag value as epoch milliseconds; 0 when absent or unreadable."""
    try:
        at = datetime.fromisoformat(value) if value else None
    except ValueError:
        return 0
    if at is None:
        return 0
    return int((at if at.tzinfo else at.replace(tzinfo=timezone.utc)).timestamp() * 1000)


def decayed_nights(client, name: str, version: str) -> int:
    """How many of the latest fresh windows in a row `name` v`version` was judged decayed on, counting only the
    judgements since it last became champion (its `promotion.at` or `rollback.restored_at`): the run metric
    `decayed`, one value per judged window (its step). 0 without a run or a judgement."""
    mv = client.get_model_version(name, version)
    if not mv.run_id:
        return 0
    since = max(_iso_ms(mv.tags.get("promotion.at")), _iso_ms(mv.tags.get("rollback.restored_at")))
    by_window: dict[int, float] = {}  # a window judged twice (a gate run again) counts once, with its latest verdict
    for m in sorted(client.get_metric_history(mv.run_id, DECAYED_METRIC), key=lambda m: m.timestamp):
        if m.timestamp >= since:
            by_window[m.step] = m.value
    count = 0
    for step in sorted(by_window, reverse=True):
        if by_window[step] < 1:
            break
        count += 1
    return count


def model_signals(client, name: str, outcome: dict | None) -> dict[str, Any]:
    """What the night says about model `name`: its champion now (from the registry, so a rollback or another gate is
    seen) and tonight's `outcome` (the night summary's entry: `decision`, and the gate's `promotion` record).

    Returns {"champion": version or None, "fresh_metric": (metric, value) or None, "decayed": 0/1 or None,
    "decayed_nights", "drift_scores": {check: value}, "drift_severity": int or None, "decision", "rolled_back": 0/1,
    "rollbacks": int}.
    """
    outcome = outcome or {}
    promotion = outcome.get("promotion") or {}
    drift = promotion.get("drift") or {}
    rollback = promotion.get("rollback") or {}
    out: dict[str, Any] = {"champion": None, "fresh_metric": None, "decayed": None, "decayed_nights": 0,
                           "drift_scores": dict(drift.get("scores") or {}), "drift_severity": DRIFT_SEVERITY.get(drift.get("status", "")),
                           "decision": str(outcome.get("decision") or "skipped"),
                           "rolled_back": int(rollback.get("status") == "rolled_back"), "rollbacks": 0}
    model = client.search_registered_models(f"name='{name}'")
    if model:
        count = model[0].tags.get("rollback.count", "")
        out["rollbacks"] = int(count) if count.isdigit() else 0
    version = alias_version(client, name, CHAMPION)
    if version is None:
        return out
    out["champion"] = version
    mv = client.get_model_version(name, version)
    status = mv.tags.get("decay.status")
    out["decayed"] = {"decayed": 1, "ok": 0}.get(status or "")
    if mv.run_id:
        primary = task(name).primary
        value = client.get_run(mv.run_id).data.metrics.get(f"fresh_{primary}")
        if value is not None:
            out["fresh_metric"] = (primary, float(value))
    out["decayed_nights"] = decayed_nights(client, name, version)
    return out


def push_model_signals(pushgateway: str, name: str, signals: dict[str, Any], deployment: str, timeout: float) -> None:
    """PUT model `name`'s group (grouping key: `model`, `nightshift_deployment`) holding `signals` (`model_signals`).

    Raises:
        PrometheusError: the Pushgateway refused or did not answer.
    """
    from prometheus_client import CollectorRegistry, Counter, Gauge

    registry = CollectorRegistry()

    def gauge(metric: str, text: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(metric, text, labels, registry=registry)

    if signals["champion"] is not None and signals["champion"].isdigit():
        gauge("nightshift_champion_version", "version number of the model's champion").set(int(signals["champion"]))
    if signals["fresh_metric"] is not None:
        metric, value = signals["fresh_metric"]
        gauge("nightshift_champion_fresh_metric", "the champion's primary metric on the latest fresh window it was judged on",
              ("metric",)).labels(metric=metric).set(value)
    if signals["decayed"] is not None:
        gauge("nightshift_champion_decayed", "1 when the champion's latest judgement found it decayed").set(signals["decayed"])
    gauge("nightshift_champion_decayed_nights", "judgements in a row, since it became champion, that found the champion decayed"
          ).set(signals["decayed_nights"])
    if signals["drift_scores"]:
        scores = gauge("nightshift_drift_score", "tonight's drift statistic of the candidate against the champion, per check", ("check",))
        for check, value in sorted(signals["drift_scores"].items()):
            scores.labels(check=check).set(value)
    if signals["drift_severity"] is not None:
        gauge("nightshift_drift_severity", "tonight's drift verdict: 0 none, 1 warn, 2 severe").set(signals["drift_severity"])
    decisions = gauge("nightshift_gate_decision", "1 for tonight's gate decision, 0 for the others", ("decision",))
    for decision in dict.fromkeys((*DECISIONS, signals["decision"])):
        decisions.labels(decision=decision).set(int(decision == signals["decision"]))
    gauge("nightshift_champion_rolled_back", "1 when tonight's gate rolled the decayed champion back").set(signals["rolled_back"])
    Counter("nightshift_rollbacks", "rollbacks of the model's champion, by hand or on decay", registry=registry).inc(signals["rollbacks"])
    _push(pushgateway, {"model": name, DEPLOYMENT_LABEL: deployment}, registry, timeout, replace=True)


def push_night_signals(pushgateway: str, failed_tasks: list[str], deployment: str, timeout: float, at: float | None = None) -> None:
    """POST the deployment's night group (grouping key: `nightshift_deployment`): when the night ran and how many
    tasks failed, and, without a failed task, the success time; a failed night leaves the last success in place.

    Raises:
        PrometheusError: the Pushgateway refused or did not answer.
    """
    from prometheus_client import CollectorRegistry, Gauge

    at = time.time() if at is None else at
    registry = CollectorRegistry()
    Gauge("nightshift_night_last_run_timestamp_seconds", "when the last night's summary was written", registry=registry).set(at)
    Gauge("nightshift_night_failed_tasks", "tasks of the last night that failed", registry=registry).set(len(failed_tasks))
    if not failed_tasks:
        Gauge("nightshift_night_success_timestamp_seconds", "when the last night without a failed task finished", registry=registry).set(at)
    _push(pushgateway, {DEPLOYMENT_LABEL: deployment}, registry, timeout, replace=False)


def _push(pushgateway: str, grouping_key: dict[str, str], registry, timeout: float, replace: bool) -> None:
    """PUT (`replace`: the group holds exactly these metrics) or POST (only these metrics of the group are replaced).

    Raises:
        PrometheusError: the Pushgateway refused or did not answer.
    """
    from prometheus_client import push_to_gateway, pushadd_to_gateway

    push = push_to_gateway if replace else pushadd_to_gateway
    try:
        push(pushgateway, job=SIGNALS_JOB, grouping_key=grouping_key, registry=registry, timeout=timeout)
    except OSError as exc:
        raise PrometheusError(f"Pushgateway at {pushgateway} did not take the nightshift signals {grouping_key}: {exc}") from None


def publish_signals(summary: dict, settings: Settings) -> dict:
    """Push the night's signals (`summary`: the night summary, with `models` and `failed_tasks`) to the Pushgateway of
    setting `prometheus.pushgateway`: one group per model (`push_model_signals`), then the night's
    (`push_night_signals`). Returns {"pushgateway", "job", "deployment", "models": {name: signals}}, or {"skipped":
    why} without a Pushgateway.

    Raises:
        PrometheusError: the Pushgateway refused or did not answer.
        StoreUnreachable: the registry did not answer.
    """
    url = settings.prometheus.pushgateway
    if not url:
        return {"skipped": "no Pushgateway configured (setting prometheus.pushgateway)"}
    client = use_store(settings)
    deployment, timeout = settings.deployment_id, settings.prometheus.timeout
    pushed = {}
    for name, outcome in summary["models"].items():
        pushed[name] = model_signals(client, name, outcome)
        push_model_signals(url, name, pushed[name], deployment, timeout)
    push_night_signals(url, list(summary.get("failed_tasks") or []), deployment, timeout)
    log.info("signals pushed", extra={"pushgateway": url, "models": sorted(pushed), "failed_tasks": len(summary.get("failed_tasks") or [])})
    return {"pushgateway": url, "job": SIGNALS_JOB, "deployment": deployment, "models": pushed}
