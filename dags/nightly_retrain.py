"""Nightly retrain: snapshot yesterday's logs, train and register a candidate, score the fresh window.

Only the task graph lives here; every task calls a function of `pipelines.flow`, imported inside
the task so that this file parses without torch, transformers or mlflow.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Asset, dag, get_current_context, task

LOG_SNAPSHOTS = Asset("nightshift://snapshots/logs")
LOG_ANOMALY_MODEL = Asset("mlflow://models/log-anomaly")
SCORED_LOGS = Asset("nightshift://scored/logs")


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

    @task(outlets=[LOG_ANOMALY_MODEL], retries=0, execution_timeout=timedelta(hours=3))
    def train_log_anomaly(night: dict, snapshot: str) -> dict:
        from pipelines.flow import train_candidate

        return train_candidate(night, "log-anomaly", snapshot, _settings())

    @task(outlets=[SCORED_LOGS])
    def score_fresh_window(night: dict, fresh_snapshot: str, candidate: dict) -> dict:
        from pipelines.flow import score_fresh

        return score_fresh(night, _settings())

    @task
    def summarise(night: dict, candidate: dict, scoring: dict) -> dict:
        from pipelines.flow import write_summary

        return write_summary(night, {"log-anomaly": candidate}, scoring)

    night = plan()
    training = ingest_training_window(night)
    fresh = ingest_fresh_window(night)
    candidate = train_log_anomaly(night, training)
    scoring = score_fresh_window(night, fresh, candidate)
    summarise(night, candidate, scoring)


nightly_retrain()
