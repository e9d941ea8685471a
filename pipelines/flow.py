"""The nightly flow, as plain functions: the Airflow DAG wires them together, `nightshift retrain`
runs the DAG once through `airflow dags test`, and `--in-process` calls them directly.

For the night of logical date D, the *fresh* window is the previous day [D-1, D): it is scored and,
never trained on, it is the holdout a candidate must do well on. The candidate trains on the
`retrain.train_days` days before it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

from pipelines.config import PROJECT_ROOT, Settings
from pipelines.telemetry import get_logger

log = get_logger("flow")
DAG_ID = "nightly_retrain"


def embedded_source(settings: Settings) -> str:
    """The demo corpus under NIGHTSHIFT_HOME, written on first use."""
    from pipelines.demo_data import write_demo_logs

    path = settings.demo_dir / "logs.ndjson"
    if not path.is_file():
        write_demo_logs(settings.demo_dir)
    return f"file://{path}"


def embedded_metric_source(settings: Settings) -> str:
    """The demo metric history (OpenMetrics) under NIGHTSHIFT_HOME, written on first use."""
    from pipelines.demo_metrics import METRICS_FILE, write_demo_metrics

    path = settings.demo_dir / METRICS_FILE
    if not path.is_file():
        write_demo_metrics(settings.demo_dir)
    return f"file://{path}"


def default_logical_date(settings: Settings, source: str | None) -> str:
    """The configured date; for the embedded corpus the day after its last day; otherwise today (UTC)."""
    from pipelines.demo_data import DEMO_DAYS, DEMO_START

    if settings.retrain.logical_date:
        return settings.retrain.logical_date
    if not (source or settings.retrain.log_source):
        return (DEMO_START + timedelta(days=DEMO_DAYS)).date().isoformat()
    return datetime.now(timezone.utc).date().isoformat()


def summary_path(settings: Settings, date: str) -> Path:
    return settings.home / "runs" / date / "summary.json"


def plan_night(settings: Settings, logical_date: str | datetime, source: str | None = None, base_model: str | None = None) -> dict:
    """Windows, snapshot folders and sinks for one night; a plain dict, so it travels as an XCom."""
    day = (logical_date if isinstance(logical_date, datetime) else datetime.fromisoformat(str(logical_date)))
    day = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
    fresh_start = day - timedelta(days=1)
    train_start = fresh_start - timedelta(days=settings.retrain.train_days)
    metric_fresh = day - timedelta(days=settings.forecast.holdout_days)
    source = source or settings.retrain.log_source or embedded_source(settings)
    date = day.date().isoformat()
    return {
        "logical_date": date,
        "source": source,
        "base_model": base_model or settings.train.base_model,
        "train_window": [train_start.isoformat(), fresh_start.isoformat()],
        "fresh_window": [fresh_start.isoformat(), day.isoformat()],
        "train_snapshot": str(settings.snapshot_root / "logs" / date),
        "fresh_snapshot": str(settings.snapshot_root / "logs-fresh" / date),
        "scored_sink": None if source.startswith(("http", "elasticsearch://")) else f"file://{settings.home / 'scored' / date / 'logs.scored.ndjson'}",
        "summary_file": str(summary_path(settings, date)),
        # The metric branch: the newest `forecast.holdout_days` are the forecaster's holdout (whole
        # lookback-plus-horizon windows fit inside), it trains on the `forecast.train_days` before them.
        "metric_source": settings.prometheus.url or None,  # None: the embedded demo history, written when first read
        "metric_window": [(metric_fresh - timedelta(days=settings.forecast.train_days)).isoformat(), metric_fresh.isoformat()],
        "metric_fresh_window": [metric_fresh.isoformat(), day.isoformat()],
        "metric_snapshot": str(settings.snapshot_root / "metrics" / date),
        "metric_fresh_snapshot": str(settings.snapshot_root / "metrics-fresh" / date),
    }


def setup_night(settings: Settings, logical_date: str | datetime, source: str | None = None, base_model: str | None = None) -> dict:
    """The night's plan, after the MLflow store and experiment are set up once, before the tasks fan
    out (three trainings creating them at once would race).

    Raises:
        StoreUnreachable: the tracking server does not answer.
    """
    from pipelines.registry import prepare_store

    store = prepare_store(settings)
    return {**plan_night(settings, logical_date, source, base_model), "store": store}


class DataProblem(RuntimeError):
    """The night's data cannot be used as it is (an empty window, a bad record, no series): retrying the
    same window gives the same answer, so a task fails at once rather than retrying."""


def permanent(exc: BaseException) -> bool:
    """Whether an ingest error is about the data, not a passing fault (a server down, a timeout)."""
    from pipelines.prometheus import MetricDataError
    from pipelines.records import RecordError
    from pipelines.snapshot import SnapshotError

    return isinstance(exc, (DataProblem, SnapshotError, MetricDataError, RecordError, ValueError, FileNotFoundError))


def ingest_window(plan: dict, which: str, settings: Settings) -> str:
    """Snapshot the night's `train` or `fresh` window; returns the snapshot folder.

    Raises:
        SnapshotError: the window is empty, or the snapshot exists with other data (see `permanent`).
    """
    from pipelines.ingest import ingest_logs

    start, end = (datetime.fromisoformat(t) for t in plan[f"{which}_window"])
    return str(ingest_logs(plan["source"], start, end, Path(plan[f"{which}_snapshot"]), settings,
                           dataset="logs" if which == "train" else "logs-fresh").path)


def ingest_metric_window(plan: dict, which: str, settings: Settings) -> str:
    """Snapshot the night's `train` or `fresh` metric window (the named queries at `forecast.step`); returns the snapshot folder."""
    from pipelines.prometheus import ingest_metrics, named_queries

    key = "metric" if which == "train" else "metric_fresh"
    start, end = (datetime.fromisoformat(t) for t in plan[f"{key}_window"])
    return str(ingest_metrics(plan["metric_source"] or embedded_metric_source(settings), named_queries(settings), start, end, settings.forecast.step,
                              Path(plan[f"{key}_snapshot"]), settings).path)


def validate_window(plan: dict, snapshot: str, suite: str, settings: Settings) -> dict:
    """The gate between ingest and train: run the suite over a night's snapshot; the verdict is also kept
    under the night's folder, for the summary."""
    from pipelines.validation import validate_snapshot, verdict

    out = verdict(validate_snapshot(snapshot, suite, settings))
    path = Path(plan["summary_file"]).parent / "validation" / f"{suite}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2, default=str))
    return out


def stop_if_invalid(validation: dict, model: str, settings: Settings) -> str | None:
    """Why `model` must not train on its snapshot (after recording a FAILED MLflow run that names the failed
    expectations), or None when the validation passed or only warned."""
    from pipelines.validation import FAILED, brief, record_stopped_run

    if validation["status"] != FAILED:
        return None
    run_id = record_stopped_run(model, validation["snapshot"], settings)
    log.warning("training stopped by validation", extra={"model": model, "snapshot": validation["snapshot"], "run_id": run_id})
    return f"{model} not trained: the {validation['suite']} snapshot failed validation: {brief(validation)} (MLflow run {run_id})"


def clean_stale_attempts(model: str, snapshot: str, settings: Settings) -> dict:
    """Start a (re)try of `model`'s training on the night's snapshot from a clean registry.

    A killed try leaves its MLflow run `RUNNING` and may leave a version registered without a
    decision: this night's such runs (same model, same snapshot content) are marked `KILLED`, and
    such versions are tagged `promotion.decision = abandoned`, lose the `challenger` alias and are
    never promoted (the gate refuses them). Returns what was cleaned.
    """
    from pipelines.registry import ABANDONED, CHALLENGER, alias_version, use_store
    from pipelines.snapshot import load_snapshot

    client = use_store(settings)
    digest = load_snapshot(snapshot).content_hash
    experiment = client.get_experiment_by_name(settings.experiment)
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.task = '{model}' and tags.`data.snapshot_hash` = '{digest}'")
    killed = [r.info.run_id for r in runs if r.info.status == "RUNNING"]
    for run_id in killed:  # Airflow starts a retry only after the previous try ended, so these are dead
        client.set_terminated(run_id, "KILLED")
    night_runs, abandoned = {r.info.run_id for r in runs}, []
    for mv in client.search_model_versions(f"name='{model}'"):
        if mv.tags.get("promotion.decision", "pending") != "pending":
            continue
        if mv.run_id in night_runs or mv.tags.get("data.snapshot_hash") == digest:
            client.set_model_version_tag(model, mv.version, "promotion.decision", ABANDONED)
            client.set_model_version_tag(model, mv.version, "promotion.reason",
                                         "its training task died before the gate decided; a retry trained another version")
            if alias_version(client, model, CHALLENGER) == str(mv.version):
                client.delete_registered_model_alias(model, CHALLENGER)
            abandoned.append(str(mv.version))
    if killed or abandoned:
        log.warning("cleaned up after a killed try", extra={"model": model, "killed_runs": killed, "abandoned_versions": abandoned})
    return {"killed_runs": killed, "abandoned_versions": abandoned}


def train_candidate(plan: dict, model: str, snapshot: str, settings: Settings) -> dict | None:
    """Train and register one model's candidate from the night's training snapshot; None when the
    window has nothing that model learns from (a night without labelled failed jobs, for failure-rca).

    A retry starts clean (`clean_stale_attempts`); torch uses `train.cpu_threads` threads when set.
    """
    from pipelines.train import train_log_anomaly

    from pipelines.rca import NoFailuresError, train_failure_rca
    from pipelines.train_forecast import train_metric_forecast

    clean_stale_attempts(model, snapshot, settings)
    if settings.train.cpu_threads > 0:
        import torch

        torch.set_num_threads(settings.train.cpu_threads)
    trainers = {"log-anomaly": train_log_anomaly, "metric-forecast": lambda snap, s, _base: train_metric_forecast(snap, s),
                "failure-rca": train_failure_rca}
    try:
        return trainers[model](snapshot, settings, plan["base_model"] or None)
    except NoFailuresError as exc:
        log.info("no candidate tonight", extra={"model": model, "reason": str(exc)})
        return None


def gate_candidate(model: str, candidate: dict | None, holdout: str | None, settings: Settings) -> dict | None:
    """Drift checks and the promotion gate for the night's candidate, judged on the fresh holdout;
    the candidate's outcome with the gate's decision (None when the model was not trained)."""
    from pipelines.promotion import GATES, promote

    if candidate is None or candidate.get("decision") == "promoted":  # not trained, or the first version (champion at once)
        return candidate
    if model not in GATES:
        return {**candidate, "promotion": {"reason": f"no promotion gate for {model} (pipelines.promotion.GATES)"}}
    gate = promote(model, settings, holdout=holdout, version=candidate["version"])
    return {**candidate, "decision": gate["decision"],
            "promotion": {k: gate.get(k) for k in ("reason", "champion", "champion_now", "challenger_metrics", "champion_metrics",
                                                    "drift", "champion_decay")}}


def score_fresh(plan: dict, settings: Settings) -> dict:
    """Score the fresh window with the current champion, back into the source or a file sink."""
    from pipelines.registry import CHAMPION, alias_version, use_store
    from serving.score_logs import score_logs

    if alias_version(use_store(settings), "log-anomaly", CHAMPION) is None:  # e.g. the first night's training was stopped
        return {"scored": 0, "model": "log-anomaly@champion", "version": None, "sink": None, "skipped": "no log-anomaly champion yet"}
    start, end = (datetime.fromisoformat(t) for t in plan["fresh_window"])
    return score_logs("log-anomaly@champion", plan["source"], plan["scored_sink"], settings, start=start, end=end)


def publish_forecasts(plan: dict, settings: Settings) -> dict:
    """Push the forecaster champion's forecasts to the Pushgateway, when one is configured. From a
    real Prometheus they start now; from the embedded history, at the night's logical date."""
    from pipelines.registry import CHAMPION, alias_version, use_store
    from serving.forecast import forecast

    if not settings.prometheus.pushgateway:
        return {"skipped": "no Pushgateway configured (setting prometheus.pushgateway)"}
    if alias_version(use_store(settings), "metric-forecast", CHAMPION) is None:
        return {"skipped": "no metric-forecast champion yet"}
    at = None if plan["metric_source"] else datetime.fromisoformat(plan["metric_fresh_window"][1])
    return forecast("metric-forecast@champion", plan["metric_source"] or embedded_metric_source(settings), None, settings, at=at)


def write_summary(plan: dict, outcomes: dict, scoring: dict | None, forecasts: dict | None = None,
                  failed_tasks: list[str] | None = None, settings: Settings | None = None) -> dict:
    """The night's summary (`summary.json` under the night's folder): each model's outcome, scoring,
    validation, forecasts, and the tasks that failed (a model whose task failed says which). With
    `settings`, the night's HTML report is written beside it too (`report`: its path, or None)."""
    night = Path(plan["summary_file"]).parent
    validation = {p.stem: json.loads(p.read_text()) for p in sorted((night / "validation").glob("*.json"))}
    failed = [suite for suite, v in validation.items() if v["status"] == "failed"]
    failed_tasks = sorted(failed_tasks or [])

    def missing(name: str) -> dict:
        tasks = [t for t in failed_tasks if t.endswith(name.replace("-", "_"))]
        if tasks:
            return {"decision": "failed", "reason": f"task {', '.join(tasks)} failed; the champion stays", "failed_tasks": tasks}
        if failed:
            return {"decision": "skipped", "reason": f"not trained: validation failed ({', '.join(failed)})"}
        return {"decision": "skipped", "reason": f"not trained: task {', '.join(failed_tasks)} failed" if failed_tasks else "not trained"}

    outcomes = {name: o if o is not None else missing(name) for name, o in outcomes.items()}
    if scoring is None:
        scoring = {"skipped": f"scoring failed ({', '.join(failed_tasks) or 'no result'})"}
    summary = {"logical_date": plan["logical_date"], "models": outcomes, "scoring": scoring, "validation": validation,
               "forecasts": forecasts, "failed_tasks": failed_tasks}
    path = Path(plan["summary_file"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, default=str))
    if settings is not None:
        from pipelines.report import try_night_report

        summary["report"] = try_night_report(settings, plan["logical_date"])
    return summary


def run_in_process(settings: Settings, logical_date: str, source: str | None, base_model: str | None) -> dict:
    plan = setup_night(settings, logical_date, source, base_model)
    train_snapshot = ingest_window(plan, "train", settings)
    ingest_window(plan, "fresh", settings)
    validation = validate_window(plan, train_snapshot, "logs", settings)
    stopped = stop_if_invalid(validation, "log-anomaly", settings)
    outcome = None if stopped else train_candidate(plan, "log-anomaly", train_snapshot, settings)
    outcome = gate_candidate("log-anomaly", outcome, plan["fresh_snapshot"], settings)
    root_causes = None if stop_if_invalid(validation, "failure-rca", settings) else train_candidate(plan, "failure-rca", train_snapshot, settings)
    root_causes = gate_candidate("failure-rca", root_causes, plan["fresh_snapshot"], settings)
    metric_snapshot = ingest_metric_window(plan, "train", settings)
    metric_holdout = ingest_metric_window(plan, "fresh", settings)
    stopped = stop_if_invalid(validate_window(plan, metric_snapshot, "metrics", settings), "metric-forecast", settings)
    forecaster = None if stopped else train_candidate(plan, "metric-forecast", metric_snapshot, settings)
    forecaster = gate_candidate("metric-forecast", forecaster, metric_holdout, settings)
    return write_summary(plan, {"log-anomaly": outcome, "failure-rca": root_causes, "metric-forecast": forecaster}, score_fresh(plan, settings),
                         publish_forecasts(plan, settings), settings=settings)


def airflow_env(settings: Settings) -> dict[str, str]:
    """Environment for a project-local Airflow on SQLite under NIGHTSHIFT_HOME."""
    home = settings.airflow_home
    home.mkdir(parents=True, exist_ok=True)
    return {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
        "NIGHTSHIFT_HOME": str(settings.home),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])),
    }


def airflow_bin() -> str:
    candidate = Path(sys.executable).with_name("airflow")
    return str(candidate) if candidate.exists() else "airflow"


def run_retrain(settings: Settings, logical_date: str | None = None, source: str | None = None,
                base_model: str | None = None, in_process: bool = False) -> dict:
    """Run the nightly flow once: through `airflow dags test` (default; tasks do not retry unless
    NIGHTSHIFT_AIRFLOW_RETRIES says so) or in this process.

    Raises:
        RuntimeError: the DAG run failed (the message holds the last lines of its log).
    """
    date = logical_date or default_logical_date(settings, source)
    if in_process:
        summary = run_in_process(settings, date, source, base_model)
    else:
        # one run, watched by a person: a failed task fails the run now rather than retrying for minutes
        env = {"NIGHTSHIFT_AIRFLOW_RETRIES": "0", **airflow_env(settings)}
        subprocess.run([airflow_bin(), "db", "migrate"], env=env, check=True, stdout=subprocess.DEVNULL)
        ensure_pool(settings, env)
        conf = json.dumps({"source": source, "base_model": base_model})
        summary_file = summary_path(settings, datetime.fromisoformat(date).date().isoformat())
        airflow_log = summary_file.with_name("airflow.log")
        airflow_log.parent.mkdir(parents=True, exist_ok=True)
        summary_file.unlink(missing_ok=True)  # only this run's summary may count as success
        log.info("running the DAG with airflow dags test", extra={"logical_date": date, "airflow_log": str(airflow_log)})
        with airflow_log.open("w") as out:  # Airflow's task logs are long: keep them in the night's folder
            done = subprocess.run([airflow_bin(), "dags", "test", DAG_ID, date, "--conf", conf], env=env, stdout=out, stderr=subprocess.STDOUT)
        if done.returncode != 0 or not summary_file.is_file():
            tail = "".join(airflow_log.read_text().splitlines(keepends=True)[-40:])
            raise RuntimeError(f"airflow dags test {DAG_ID} {date} failed (exit {done.returncode}); last lines of {airflow_log}:\n{tail}")
        summary = json.loads(summary_file.read_text())
    return {**summary, "summary": describe(summary)}


def describe(summary: dict) -> str:
    """The night as a short table: one row per model, then the scoring line."""
    def fmt(metrics: dict) -> str:
        return " ".join(f"{k}={v:.3f}" for k, v in metrics.items() if k not in ("primary", "threshold") and isinstance(v, (int, float)))

    rows = [("model", "version", "decision", "validation metrics", "baseline", "train s", "device")]
    for name, o in summary["models"].items():
        rows.append((name, str(o.get("version", "-")), str(o.get("decision", "-")), fmt(o.get("metrics", {})),
                     fmt(o.get("baseline", {})), str(o.get("train_seconds", "-")), str(o.get("device", "-"))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"night {summary['logical_date']}"] + ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    for suite, v in summary.get("validation", {}).items():
        lines.append(f"  validation {suite}: {v['status']} ({v['statistics']['successful']}/{v['statistics']['evaluated']} expectations met) -> {v['data_docs']}")
        lines += [f"    failed {f['check']} ({f['expectation']}) on {f['rows']} of {f['of']} rows, e.g. {json.dumps(f['examples'][:2], default=str)}"
                  for f in v["failed"]]
    lines += [f"  {name} {o['decision']}: {o['reason']}" for name, o in summary["models"].items() if o.get("decision") in ("skipped", "failed")]
    if summary.get("failed_tasks"):
        lines.append(f"  failed tasks: {', '.join(summary['failed_tasks'])}")
    lines += [f"  {name} v{o['version']} {o['decision']}: {o['promotion']['reason']}" for name, o in summary["models"].items()
              if o.get("promotion")]
    s = summary.get("scoring")
    if s and s.get("skipped"):
        lines.append(f"  scoring skipped: {s['skipped']}")
    elif s:
        lines.append(f"  scored {s['scored']} docs of the fresh window with {s['model']} v{s['version']} -> {s['sink']}")
        if s.get("rca"):
            r = s["rca"]
            lines.append(f"  root causes on {r['annotated']} docs of {r['jobs']} failed jobs with {r['model']} v{r['version']} "
                         f"({r['fallback']} from the knowledge base)")
    f = summary.get("forecasts")
    if f and f.get("skipped"):
        lines.append(f"  forecasts not pushed: {f['skipped']}")
    elif f:
        lines.append(f"  pushed {f['horizon']} forecasts of {f['series']} series with {f['model']} v{f['version']} -> {f['pushgateway']}")
    return "\n".join(lines)


def ensure_pool(settings: Settings, env: dict[str, str] | None = None) -> None:
    """Create or resize the Airflow pool of the training tasks (`airflow.training_pool`,
    `airflow.training_pool_slots` slots) in the Airflow that `env` points at.

    Raises:
        subprocess.CalledProcessError: `airflow pools set` failed.
    """
    cfg = settings.airflow
    subprocess.run([airflow_bin(), "pools", "set", cfg.training_pool, str(cfg.training_pool_slots),
                    "nightshift trainings that run at once (setting airflow.training_pool_slots)"],
                   env=env or os.environ.copy(), check=True, stdout=subprocess.DEVNULL)
