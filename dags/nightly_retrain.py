"""Nightly retrain: snapshot yesterday's logs, validate them, train and register a candidate, score the fresh window.
A second, independent branch snapshots the metric history, validates it, trains and gates the forecaster,
and pushes the champion's forecasts to the Pushgateway.

Only the task graph lives here; every task calls a function of `pipelines.flow`, imported inside
the task so that this file parses without torch, transformers or mlflow.

Failure handling: `plan` sets the MLflow store and experiment up once, before the fan-out. Tasks
retry (`airflow.retries`, backoff from `airflow.retry_delay`), except validation and ingests of data
that cannot be used (an empty window fails at once instead of retrying for a quarter of an hour).
A training retry starts clean (its killed try's run is marked KILLED, a version it left without a
decision is abandoned). Scoring, forecasts and the summary run whatever failed upstream
(`all_done`), with the champions in place; the summary names the failed tasks. The three trainings
share the pool `airflow.training_pool` (`airflow.training_pool_slots` slots, created by `make
airflow` / `pipelines.flow.ensure_pool`).
"""

from __future__ import annotations

from datetime import timedelta
from typing import cast

import pendulum
from airflow.sdk import Asset, dag, get_current_context, task

from pipelines.config import load_settings  # stdlib only: parsing stays light

LOG_SNAPSHOTS = Asset("nightshift://snapshots/logs")
LOG_ANOMALY_MODEL = Asset("mlflow://models/log-anomaly")
FAILURE_RCA_MODEL = Asset("mlflow://models/failure-rca")
SCORED_LOGS = Asset("nightshift://scored/logs")
METRIC_SNAPSHOTS = Asset("nightshift://snapshots/metrics")
METRIC_FORECAST_MODEL = Asset("mlflow://models/metric-forecast")


def _settings():
    return load_settings()


_AIRFLOW = load_settings().airflow
POOL = {"pool": _AIRFLOW.training_pool}


def _ingest(fn, *args):
    """Run an ingest; data that cannot be used fails the task at once (no retry storm on an empty window)."""
    from airflow.sdk.exceptions import AirflowFailException

    from pipelines.flow import permanent

    try:
        return fn(*args)
    except Exception as exc:
        if permanent(exc):
            raise AirflowFailException(f"{exc.__class__.__name__}: {exc}") from exc
        raise


@dag(
    dag_id="nightly_retrain",
    schedule="0 2 * * *",
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,  # unpausing runs the latest night only; older nights: `airflow backfill create`
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=12),
    default_args={"retries": _AIRFLOW.retries, "retry_delay": timedelta(seconds=_AIRFLOW.retry_delay),
                  "retry_exponential_backoff": 2.0, "max_retry_delay": timedelta(seconds=_AIRFLOW.max_retry_delay)},
    params={"source": None, "base_model": None},
    tags=["nightshift"],
)
def nightly_retrain():
    @task
    def plan() -> dict:
        """The night's windows and folders, after setting the MLflow store and experiment up once."""
        from pipelines.flow import setup_night

        ctx = get_current_context()
        return setup_night(_settings(), ctx["logical_date"], ctx["params"].get("source"), ctx["params"].get("base_model"))

    @task(outlets=[LOG_SNAPSHOTS])
    def ingest_training_window(night: dict) -> str:
        from pipelines.flow import ingest_window

        return _ingest(ingest_window, night, "train", _settings())

    @task(outlets=[LOG_SNAPSHOTS])
    def ingest_fresh_window(night: dict) -> str:
        from pipelines.flow import ingest_window

        return _ingest(ingest_window, night, "fresh", _settings())

    @task(retries=0)
    def validate(night: dict, snapshot: str, suite: str) -> dict:
        """The Great Expectations gate between ingest and train; one `.override(task_id=...)` per suite."""
        from pipelines.flow import validate_window

        return validate_window(night, snapshot, suite, _settings())

    @task(execution_timeout=timedelta(hours=3), **POOL)
    def train(model: str, night: dict, snapshot: str, validation: dict) -> dict:
        """One model's candidate; one `.override(task_id=..., outlets=...)` per model. Skipped (the other
        branches go on) when its snapshot failed validation or holds nothing that model learns from."""
        from airflow.sdk.exceptions import AirflowSkipException

        from pipelines.flow import stop_if_invalid, train_candidate, untrained_reason

        if reason := stop_if_invalid(validation, model, _settings()):
            raise AirflowSkipException(reason)
        if (outcome := train_candidate(night, model, snapshot, _settings())) is None:
            raise AirflowSkipException(untrained_reason(night, model) or f"nothing in the training window that {model} learns from")
        return outcome

    @task(outlets=[METRIC_SNAPSHOTS])
    def ingest_metric_window(night: dict) -> str:
        from pipelines.flow import ingest_metric_window

        return _ingest(ingest_metric_window, night, "train", _settings())

    @task
    def ingest_metric_holdout(night: dict) -> str:
        from pipelines.flow import ingest_metric_window

        return _ingest(ingest_metric_window, night, "fresh", _settings())

    @task
    def promote_candidate(model: str, candidate: dict, holdout: str) -> dict:
        """Drift checks and the promotion gate on the fresh holdout; one `.override(task_id=...)` per model."""
        from pipelines.flow import gate_candidate

        # A candidate in, an outcome out. Cast, not `-> dict | None`: a Mapping return annotation is what makes Airflow
        # push the outcome's keys as separate XComs (multiple_outputs).
        return cast(dict, gate_candidate(model, candidate, holdout, _settings()))

    @task(outlets=[SCORED_LOGS], trigger_rule="all_done")  # with the champion in place, whatever training did
    def score_fresh_window(night: dict) -> dict:
        """Scores the night's fresh window with the champions the two gates leave (`pipelines.flow.score_fresh`)."""
        from pipelines.flow import score_fresh

        return score_fresh(night, _settings())

    @task(trigger_rule="all_done")  # with the champion the gate leaves, as scoring does
    def publish_forecasts(night: dict) -> dict:
        """Pushes the forecaster champion's forecasts (`pipelines.flow.publish_forecasts`)."""
        from pipelines.flow import publish_forecasts

        return publish_forecasts(night, _settings())

    @task(trigger_rule="all_done")  # a failed model still gets its night summarised, naming the failed task
    def summarise(night: dict, candidate: dict | None, scoring: dict | None, forecaster: dict | None = None,
                  root_causes: dict | None = None, forecasts: dict | None = None) -> dict:
        from pipelines.flow import write_summary

        ctx = get_current_context()
        try:
            states = ctx["ti"].get_task_states(dag_id=ctx["dag"].dag_id, run_ids=[ctx["run_id"]]).get(ctx["run_id"], {})
        except Exception:  # noqa: BLE001 - a summary without the failed tasks beats no summary
            states = {}
        failed = [task_id for task_id, state in states.items() if state == "failed"]
        summary = write_summary(night, {"log-anomaly": candidate, "failure-rca": root_causes, "metric-forecast": forecaster}, scoring,
                                forecasts, failed, settings=_settings())
        if failed:  # the summary is written; the run still shows red
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException(f"night {night['logical_date']} finished with failed tasks: {', '.join(sorted(failed))}")
        return summary

    night = plan()
    training = ingest_training_window(night)
    fresh = ingest_fresh_window(night)
    validation = validate.override(task_id="validate_training_window")(night, training, "logs")
    candidate = train.override(task_id="train_log_anomaly", outlets=[LOG_ANOMALY_MODEL])("log-anomaly", night, training, validation)
    candidate = promote_candidate.override(task_id="promote_log_anomaly")("log-anomaly", candidate, fresh)  # scoring follows the gate
    root_causes = train.override(task_id="train_failure_rca", outlets=[FAILURE_RCA_MODEL], execution_timeout=timedelta(hours=1))(
        "failure-rca", night, training, validation)  # same snapshot: failed jobs grouped by job id
    root_causes = promote_candidate.override(task_id="promote_failure_rca")("failure-rca", root_causes, fresh)
    scoring = score_fresh_window(night)  # two models, one read of the fresh window, after both gates
    [candidate, root_causes] >> scoring
    metrics = ingest_metric_window(night)
    forecaster = train.override(task_id="train_metric_forecast", outlets=[METRIC_FORECAST_MODEL], execution_timeout=timedelta(hours=1))(
        "metric-forecast", night, metrics, validate.override(task_id="validate_metric_window")(night, metrics, "metrics"))
    forecaster = promote_candidate.override(task_id="promote_metric_forecast")("metric-forecast", forecaster, ingest_metric_holdout(night))
    forecasts = publish_forecasts(night)  # after the forecaster's gate
    forecaster >> forecasts
    summary = summarise(night, candidate, scoring, forecaster, root_causes, forecasts).operator
    # Last of all: a failed ingest marks its branch upstream_failed at once, while a task of another
    # branch may still be waiting for a retry; the summary must see how that one ended.
    summary.set_upstream([t for t in summary.dag.tasks if t is not summary and t not in summary.upstream_list])


nightly_retrain()
