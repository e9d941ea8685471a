"""Nightly retrain: snapshot yesterday's logs, validate them, train and register a candidate, score the fresh window.
A second, independent branch snapshots the metric history, validates it, trains and gates the forecaster,
and pushes the champion's forecasts to the Pushgateway.

Only the task graph lives here; every task calls a function of `pipelines.flow`, imported inside
the task so that this file parses without torch, transformers or mlflow.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Asset, dag, get_current_context, task

LOG_SNAPSHOTS = Asset("nightshift://snapshots/logs")
LOG_ANOMALY_MODEL = Asset("mlflow://models/log-anomaly")
FAILURE_RCA_MODEL = Asset("mlflow://models/failure-rca")
SCORED_LOGS = Asset("nightshift://scored/logs")
METRIC_SNAPSHOTS = Asset("nightshift://snapshots/metrics")
METRIC_FORECAST_MODEL = Asset("mlflow://models/metric-forecast")


def _settings():
    from pipelines.config import load_settings

    return load_settings()


@dag(
    dag_id="nightly_retrain",
    schedule="0 2 * * *",
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=5), "retry_exponential_backoff": True},
    params={"source": None, "base_model": None},
    tags=["nightshift"],
)
def nightly_retrain():
    @task
    def plan() -> dict:
        from pipelines.flow import plan_night

        ctx = get_current_context()
        return plan_night(_settings(), ctx["logical_date"], ctx["params"].get("source"), ctx["params"].get("base_model"))

    @task(outlets=[LOG_SNAPSHOTS])
    def ingest_training_window(night: dict) -> str:
        from pipelines.flow import ingest_window

        return ingest_window(night, "train", _settings())

    @task(outlets=[LOG_SNAPSHOTS])
    def ingest_fresh_window(night: dict) -> str:
        from pipelines.flow import ingest_window

        return ingest_window(night, "fresh", _settings())

    @task(retries=0)
    def validate(night: dict, snapshot: str, suite: str) -> dict:
        """The Great Expectations gate between ingest and train; one `.override(task_id=...)` per suite."""
        from pipelines.flow import validate_window

        return validate_window(night, snapshot, suite, _settings())

    @task(retries=0, execution_timeout=timedelta(hours=3))
    def train(model: str, night: dict, snapshot: str, validation: dict) -> dict:
        """One model's candidate; one `.override(task_id=..., outlets=...)` per model. Skipped (the other
        branches go on) when its snapshot failed validation or holds nothing that model learns from."""
        from airflow.sdk.exceptions import AirflowSkipException

        from pipelines.flow import stop_if_invalid, train_candidate

        if reason := stop_if_invalid(validation, model, _settings()):
            raise AirflowSkipException(reason)
        if (outcome := train_candidate(night, model, snapshot, _settings())) is None:
            raise AirflowSkipException(f"nothing in the training window that {model} learns from (e.g. no failed job with root causes)")
        return outcome

    @task(outlets=[METRIC_SNAPSHOTS])
    def ingest_metric_window(night: dict) -> str:
        from pipelines.flow import ingest_metric_window

        return ingest_metric_window(night, "train", _settings())

    @task
    def ingest_metric_holdout(night: dict) -> str:
        from pipelines.flow import ingest_metric_window

        return ingest_metric_window(night, "fresh", _settings())

    @task(retries=0)
    def promote_candidate(model: str, candidate: dict, holdout: str) -> dict:
        """Drift checks and the promotion gate on the fresh holdout; one `.override(task_id=...)` per model."""
        from pipelines.flow import gate_candidate

        return gate_candidate(model, candidate, holdout, _settings())

    @task(outlets=[SCORED_LOGS], trigger_rule="none_failed")  # runs with the champion when training was skipped
    def score_fresh_window(night: dict, fresh_snapshot: str, candidate: dict, root_causes: dict | None = None) -> dict:
        from pipelines.flow import score_fresh

        return score_fresh(night, _settings())

    @task(trigger_rule="none_failed")  # with the champion the gate leaves, as scoring does
    def publish_forecasts(night: dict, forecaster: dict | None) -> dict:
        from pipelines.flow import publish_forecasts

        return publish_forecasts(night, _settings())

    @task(trigger_rule="none_failed")
    def summarise(night: dict, candidate: dict, scoring: dict, forecaster: dict | None = None, root_causes: dict | None = None,
                  forecasts: dict | None = None) -> dict:
        from pipelines.flow import write_summary

        return write_summary(night, {"log-anomaly": candidate, "failure-rca": root_causes, "metric-forecast": forecaster}, scoring, forecasts)

    night = plan()
    training = ingest_training_window(night)
    fresh = ingest_fresh_window(night)
    validation = validate.override(task_id="validate_training_window")(night, training, "logs")
    candidate = train.override(task_id="train_log_anomaly", outlets=[LOG_ANOMALY_MODEL])("log-anomaly", night, training, validation)
    candidate = promote_candidate.override(task_id="promote_log_anomaly")("log-anomaly", candidate, fresh)  # scoring follows the gate
    root_causes = train.override(task_id="train_failure_rca", outlets=[FAILURE_RCA_MODEL], execution_timeout=timedelta(hours=1))(
        "failure-rca", night, training, validation)  # same snapshot: failed jobs grouped by job id
    root_causes = promote_candidate.override(task_id="promote_failure_rca")("failure-rca", root_causes, fresh)
    scoring = score_fresh_window(night, fresh, candidate, root_causes)  # two models, one read of the fresh window
    metrics = ingest_metric_window(night)
    forecaster = train.override(task_id="train_metric_forecast", outlets=[METRIC_FORECAST_MODEL], execution_timeout=timedelta(hours=1))(
        "metric-forecast", night, metrics, validate.override(task_id="validate_metric_window")(night, metrics, "metrics"))
    forecaster = promote_candidate.override(task_id="promote_metric_forecast")("metric-forecast", forecaster, ingest_metric_holdout(night))
    summarise(night, candidate, scoring, forecaster, root_causes, publish_forecasts(night, forecaster))


nightly_retrain()
