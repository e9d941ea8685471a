"""The nightly flow, as plain functions: the Airflow DAG wires them together, `nightshift retrain`
runs the DAG once through `airflow dags test`, and `--in-process` calls them directly.

For the night of logical date D, the *fresh* window is the previous day [D-1, D): it is scored and,
never trained on, it is the holdout a candidate must do well on. The candidate trains on the
`retrain.log_days` days before it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, fields
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from pipelines import storage
from pipelines.config import PROJECT_ROOT, Settings
from pipelines.data.demo_logs import DEMO_DAYS, DEMO_START, write_demo_logs
from pipelines.data.demo_metrics import METRICS_FILE, write_demo_metrics
from pipelines.data.ingest import ingest_logs
from pipelines.data.records import RecordError
from pipelines.data.snapshots import SnapshotError, load_snapshot
from pipelines.data.validation import FAILED, brief, record_stopped_run, validate_snapshot, verdict
from pipelines.errors import NightFailed, NightshiftError, TrainingDataError
from pipelines.night_report import forecast_lines, scoring_lines, summary_path, try_night_report
from pipelines.platform_logs import night_logs_dir
from pipelines.registry.gate import judge_first_version, promote
from pipelines.registry.store import ABANDONED, CHALLENGER, CHAMPION, alias_version, prepare_store, use_store
from pipelines.resources import project_dir
from pipelines.scoring.forecasts import forecast
from pipelines.scoring.score_logs import score_logs
from pipelines.scoring.shadow import OFF, shadow_candidate, shadow_mode
from pipelines.signals import publish_signals
from pipelines.sources.prometheus import MetricDataError, ingest_metrics, named_queries
from pipelines.storage import StoragePath
from pipelines.tasks import TASKS, task
from pipelines.telemetry import NightLogEcho, get_logger, job_labels, log_context, night_log

log = get_logger("flow")
T = TypeVar("T")
DAG_ID = "nightly_retrain"


@contextmanager
def task_log(settings: Settings, night: str, task: str | None = None) -> Iterator[None]:
    """The block's log lines also go to the night's `runs/D/logs/TASK.ndjson` (`telemetry.night_log`; a retry under
    Airflow to `TASK.tryN.ndjson`), for `nightshift es ship-logs`. `task`: default the Airflow task id, else the
    task of `log_context`."""
    task = task or job_labels().get("task_id") or "night"
    attempt = os.environ.get("AIRFLOW_CTX_TRY_NUMBER", "")
    name = f"{task}.ndjson" if attempt in ("", "1") else f"{task}.try{attempt}.ndjson"
    with night_log(night_logs_dir(settings, night) / name, night, settings.service, settings.environment):
        yield


def night_logged(fn: Callable[..., T]) -> Callable[..., T]:
    """A step of the night whose log lines also go to the night's folder (`task_log`): the night is the `logical_date`
    of the plan among its arguments, else Airflow's logical date; neither (a step called on its own): no file. The
    file is named after the Airflow task, else the `log_context` task, else the step's function."""
    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> T:
        settings = next((a for a in (*args, *kwargs.values()) if isinstance(a, Settings)), None)
        plan = next((a for a in (*args, *kwargs.values()) if isinstance(a, dict) and "summary_file" in a), None)
        night = str(plan["logical_date"])[:10] if plan else os.environ.get("AIRFLOW_CTX_LOGICAL_DATE", "")[:10]
        if settings is None or not night:
            return fn(*args, **kwargs)
        with task_log(settings, night, job_labels().get("task_id") or fn.__name__):
            return fn(*args, **kwargs)
    return run


def embedded_source(settings: Settings) -> str:
    """The demo corpus under NIGHTSHIFT_HOME, written on first use."""
    path = settings.demo_dir / "logs.ndjson"
    if not path.is_file():
        write_demo_logs(settings.demo_dir)
    return f"file://{path}"


def embedded_metric_source(settings: Settings) -> str:
    """The demo metric history (OpenMetrics) under NIGHTSHIFT_HOME, written on first use."""
    path = settings.demo_dir / METRICS_FILE
    if not path.is_file():
        write_demo_metrics(settings.demo_dir)
    return f"file://{path}"


def default_logical_date(settings: Settings, source: str | None) -> str:
    """The configured date; for the embedded corpus the day after its last day; otherwise today (UTC)."""
    if settings.retrain.logical_date:
        return settings.retrain.logical_date
    if not (source or settings.retrain.log_source):
        return (DEMO_START + timedelta(days=DEMO_DAYS)).date().isoformat()
    return datetime.now(timezone.utc).date().isoformat()


@dataclass(frozen=True)
class NightPlan:
    """One night's windows, snapshot folders and sinks. Windows are [start, end) in UTC.

    Between Airflow tasks it travels as the JSON dict of `to_dict()` (an XCom); `from_dict` reads it back.
    """

    logical_date: date
    source: str | None  # None: the embedded demo corpus, written on each worker that reads it (a worker's home is its own)
    base_model: str
    train_window: tuple[datetime, datetime]
    fresh_window: tuple[datetime, datetime]
    # locations under the storage root (`pipelines.storage`): local paths, or `s3://…` on an object store
    train_snapshot: StoragePath
    fresh_snapshot: StoragePath
    scored_sink: str | None  # None: scores go back into the Elasticsearch source
    summary_file: StoragePath
    # The metric branch: the newest `forecast.holdout_days` are the forecaster's holdout (whole lookback-plus-horizon
    # windows fit inside); it trains on the `forecast.train_days` before them.
    metric_source: str | None  # None: the embedded demo history, written when first read
    metric_window: tuple[datetime, datetime]
    metric_fresh_window: tuple[datetime, datetime]
    metric_snapshot: StoragePath
    metric_fresh_snapshot: StoragePath
    store: dict = field(default_factory=dict)  # the MLflow store, as `prepare_store` set it up

    def to_dict(self) -> dict:
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = [v.isoformat() for v in value]
            elif isinstance(value, date):
                value = value.isoformat()
            elif f.name.endswith(("_snapshot", "_file")):
                value = storage.uri(value)  # a plain path, or s3://…
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict) -> NightPlan:
        values = dict(data)
        for f in fields(cls):
            value: Any = values.get(f.name)
            if f.name.endswith("_window"):
                values[f.name] = tuple(datetime.fromisoformat(v) for v in value)
            elif f.name.endswith(("_snapshot", "_file")):
                values[f.name] = storage.path(value)
            elif f.name == "logical_date":
                values[f.name] = date.fromisoformat(value)
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})


def plan_night(settings: Settings, logical_date: str | datetime, source: str | None = None, base_model: str | None = None) -> NightPlan:
    """The windows, snapshot folders and sinks of the night of `logical_date` (its training windows end the day before)."""
    day = (logical_date if isinstance(logical_date, datetime) else datetime.fromisoformat(str(logical_date)))
    day = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
    fresh_start = day - timedelta(days=1)
    train_start = fresh_start - timedelta(days=settings.retrain.log_days)
    metric_fresh = day - timedelta(days=settings.forecast.holdout_days)
    source = source or settings.retrain.log_source or None
    night = day.date().isoformat()
    scored = settings.storage_root / "scored" / night / "logs.scored.ndjson"
    return NightPlan(
        logical_date=day.date(), source=source, base_model=base_model or settings.train.base_model,
        train_window=(train_start, fresh_start), fresh_window=(fresh_start, day),
        train_snapshot=settings.snapshot_root / "logs" / night, fresh_snapshot=settings.snapshot_root / "logs-fresh" / night,
        scored_sink=None if (source or "").startswith(("http", "elasticsearch://")) else storage.uri(scored) if storage.is_remote(scored) else f"file://{scored}",
        summary_file=summary_path(settings, night),
        metric_source=settings.prometheus.url or None,
        metric_window=(metric_fresh - timedelta(days=settings.forecast.train_days), metric_fresh), metric_fresh_window=(metric_fresh, day),
        metric_snapshot=settings.snapshot_root / "metrics" / night, metric_fresh_snapshot=settings.snapshot_root / "metrics-fresh" / night,
    )


@night_logged
def setup_night(settings: Settings, logical_date: str | datetime, source: str | None = None, base_model: str | None = None) -> dict:
    """The night's plan (the XCom dict of a `NightPlan`), after the MLflow store and experiment are set up once, before the tasks fan
    out (three trainings creating them at once would race).

    Raises:
        StoreUnreachable: the tracking server does not answer.
    """
    store = prepare_store(settings)
    return dataclasses.replace(plan_night(settings, logical_date, source, base_model), store=store).to_dict()


class DataProblem(NightshiftError, RuntimeError):
    """The night's data cannot be used as it is (an empty window, a bad record, no series): retrying the
    same window gives the same answer, so a task fails at once rather than retrying."""


def permanent(exc: BaseException) -> bool:
    """Whether an ingest error is about the data, not a passing fault (a server down, a timeout)."""
    return isinstance(exc, (DataProblem, SnapshotError, MetricDataError, RecordError, ValueError, FileNotFoundError))


@night_logged
def ingest_window(plan: dict, which: str, settings: Settings) -> str:
    """Snapshot the night's `train` or `fresh` window; returns the snapshot's location (`storage.uri`).

    Raises:
        SnapshotError: the window is empty, or the snapshot exists with other data (see `permanent`).
    """
    night = NightPlan.from_dict(plan)
    start, end = getattr(night, f"{which}_window")
    return storage.uri(ingest_logs(night.source or embedded_source(settings), start, end, getattr(night, f"{which}_snapshot"), settings,
                                   dataset="logs" if which == "train" else "logs-fresh").path)


@night_logged
def ingest_metric_window(plan: dict, which: str, settings: Settings) -> str:
    """Snapshot the night's `train` or `fresh` metric window (the named queries at `forecast.step`); returns the snapshot folder."""
    night, key = NightPlan.from_dict(plan), "metric" if which == "train" else "metric_fresh"
    start, end = getattr(night, f"{key}_window")
    return storage.uri(ingest_metrics(night.metric_source or embedded_metric_source(settings), named_queries(settings), start, end,
                                      settings.forecast.step, getattr(night, f"{key}_snapshot"), settings).path)


@night_logged
def validate_window(plan: dict, snapshot: str, suite: str, settings: Settings) -> dict:
    """The gate between ingest and train: run the suite over a night's snapshot; the verdict is also kept
    under the night's folder of the storage root, for the summary (whichever worker writes it)."""
    out = verdict(validate_snapshot(snapshot, suite, settings))
    storage.write_text(storage.path(plan["summary_file"]).parent / "validation" / f"{suite}.json", json.dumps(out, indent=2, default=str))
    return out


@night_logged
def stop_if_invalid(validation: dict, model: str, settings: Settings) -> str | None:
    """Why `model` must not train on its snapshot (after recording a FAILED MLflow run that names the failed
    expectations), or None when the validation passed or only warned."""
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


def untrained_file(plan: dict, model: str) -> StoragePath:
    """Where a night records why `model` trained nothing (`train_candidate`)."""
    return storage.path(plan["summary_file"]).parent / "untrained" / f"{model}.json"


def untrained_reason(plan: dict, model: str) -> str | None:
    """Why `model` trained nothing this night, in one line; None when nothing says it did not train."""
    why = untrained_file(plan, model)
    return json.loads(why.read_text())["reason"] if why.exists() else None


@night_logged
def train_candidate(plan: dict, model: str, snapshot: str, settings: Settings) -> dict | None:
    """Train and register one model's candidate from the night's training snapshot; None when the
    window has nothing that model learns from (no labelled failed job for failure-rca, fewer anomalous rows than
    `candidates.min_positives`, ...): the reason goes to the log in one line and to `untrained_file` for the night's
    summary (`untrained_reason`), and the champion keeps serving.

    A retry starts clean (`clean_stale_attempts`).
    """
    clean_stale_attempts(model, snapshot, settings)
    try:
        return task(model).train(storage.path(snapshot), settings, plan["base_model"] or None).to_dict()
    except TrainingDataError as exc:  # the same snapshot would fail the same way on a retry
        log.warning("no candidate tonight", extra={"model": model, "reason": str(exc)})
        storage.write_text(untrained_file(plan, model), json.dumps({"model": model, "reason": str(exc)}))
        return None


@night_logged
def gate_candidate(model: str, candidate: dict | None, holdout: str | None, settings: Settings) -> dict | None:
    """Drift checks and the promotion gate for the night's candidate, judged on the fresh holdout;
    the candidate's outcome with the gate's decision (None when the model was not trained). A first
    version (champion at once) is judged on the holdout all the same (`judge_first_version`)."""
    if candidate is None:
        return None
    if candidate.get("decision") == "promoted":  # the first version: no gate, but its holdout numbers and page
        gate = judge_first_version(model, candidate["version"], settings, holdout)
    else:
        gate = promote(model, settings, holdout=holdout, version=candidate["version"])
    return {**candidate, "decision": gate["decision"],
            "promotion": {k: gate.get(k) for k in ("reason", "champion", "champion_now", "challenger_metrics", "champion_metrics",
                                                    "drift", "champion_decay", "rollback")}}


@night_logged
def score_fresh(plan: dict, settings: Settings) -> dict:
    """Score the fresh window with the current champion, back into the source or a file sink; in the same pass, the
    log-anomaly version that lost its gate or awaits it (`pipelines.scoring.shadow.shadow_candidate`), unless setting
    `score.shadow` is off. The result's `shadow` (absent without one) holds its agreement with the champion.

    Raises:
        ConfigError: setting `score.shadow` is not fields, index or off.
    """
    client = use_store(settings)
    if alias_version(client, "log-anomaly", CHAMPION) is None:  # e.g. the first night's training was stopped
        return {"scored": 0, "model": "log-anomaly@champion", "version": None, "sink": None, "skipped": "no log-anomaly champion yet"}
    night = NightPlan.from_dict(plan)
    start, end = night.fresh_window
    candidate = shadow_candidate(client, "log-anomaly") if shadow_mode(settings) != OFF else None
    shadow = f"{candidate.ref.name}/{candidate.ref.version}" if candidate is not None else None
    return score_logs("log-anomaly@champion", night.source or embedded_source(settings), night.scored_sink, settings, start=start, end=end, shadow_model=shadow)


@night_logged
def publish_forecasts(plan: dict, settings: Settings) -> dict:
    """Push the forecaster champion's forecasts to the Pushgateway, when one is configured. From a
    real Prometheus they start now; from the embedded history, at the night's logical date."""
    if not settings.prometheus.pushgateway:
        return {"skipped": "no Pushgateway configured (setting prometheus.pushgateway)"}
    if alias_version(use_store(settings), "metric-forecast", CHAMPION) is None:
        return {"skipped": "no metric-forecast champion yet"}
    night = NightPlan.from_dict(plan)
    at = None if night.metric_source else night.metric_fresh_window[1]
    return forecast("metric-forecast@champion", night.metric_source or embedded_metric_source(settings), None, settings, at=at)


@night_logged
def write_summary(plan: dict, outcomes: dict, scoring: dict | None, forecasts: dict | None = None,
                  failed_tasks: list[str] | None = None, settings: Settings | None = None) -> dict:
    """The night's summary (`summary.json` under the night's folder): each model's outcome, scoring,
    validation, forecasts, and the tasks that failed (a model whose task failed says which). With
    `settings`, the night's signals are pushed to the Pushgateway first (`signals`: `push_signals`), and the
    night's HTML report is written beside it (`report`: its path, or None)."""
    night = storage.path(plan["summary_file"]).parent
    validation = {p.stem: json.loads(p.read_text()) for p in sorted((night / "validation").glob("*.json"), key=lambda p: p.name)}
    failed = [suite for suite, v in validation.items() if v["status"] == "failed"]
    failed_tasks = sorted(failed_tasks or [])

    def missing(name: str) -> dict:
        tasks = [t for t in failed_tasks if t.endswith(name.replace("-", "_"))]
        if tasks:
            return {"decision": "failed", "reason": f"task {', '.join(tasks)} failed; the champion stays", "failed_tasks": tasks}
        if failed:
            return {"decision": "skipped", "reason": f"not trained: validation failed ({', '.join(failed)})"}
        if why := untrained_reason(plan, name):
            return {"decision": "skipped", "reason": f"not trained: {why}"}
        return {"decision": "skipped", "reason": f"not trained: task {', '.join(failed_tasks)} failed" if failed_tasks else "not trained"}

    outcomes = {name: o if o is not None else missing(name) for name, o in outcomes.items()}
    if scoring is None:
        scoring = {"skipped": f"scoring failed ({', '.join(failed_tasks) or 'no result'})"}
    shadow = scoring.get("shadow")
    if shadow and str((outcomes.get(shadow["model"]) or {}).get("version")) == str(shadow["version"]):
        # tonight's candidate was shadow-scored: its record says how it agreed with the champion it lost to (or awaits)
        outcomes[shadow["model"]] = {**outcomes[shadow["model"]], "shadow": {k: v for k, v in shadow.items() if k not in ("model", "version")}}
    summary = {"logical_date": plan["logical_date"], "models": outcomes, "scoring": scoring, "validation": validation,
               "forecasts": forecasts, "failed_tasks": failed_tasks}
    if settings is not None:
        summary["signals"] = push_signals(summary, settings)
    storage.write_text(storage.path(plan["summary_file"]), json.dumps(summary, indent=2, default=str))
    if settings is not None:
        summary["report"] = try_night_report(settings, plan["logical_date"])
    return summary


def push_signals(summary: dict, settings: Settings) -> dict:
    """The night's platform signals to the Pushgateway (`pipelines.signals.publish_signals`); a Pushgateway or registry
    that does not answer is logged and said in the result (`error`), since the night's work is done: Prometheus then
    sees no new success and its alert on a failed night fires."""
    try:
        return publish_signals(summary, settings)
    except NightshiftError as exc:
        log.warning("signals not pushed", extra={"error": str(exc)})
        return {"error": str(exc)}


def task_id(step: str, model: str) -> str:
    """The DAG's id of one model's task: `train_log_anomaly`, `promote_metric_forecast`."""
    return f"{step}_{model.replace('-', '_')}"


def run_in_process(settings: Settings, logical_date: str, source: str | None, base_model: str | None) -> dict:
    """The DAG's tasks in this process, one at a time, in an order the DAG allows (`nightshift retrain --in-process`).

    The summary's `tasks_run` lists the DAG task ids in the order they ran; the tests check it against the DAG's
    graph (every task once, every edge respected), so this and `dags/nightly_retrain.py` cannot drift apart.
    """
    ran: list[str] = []

    night = datetime.fromisoformat(str(logical_date)).date().isoformat()

    def step(task_id: str, fn, *args):
        ran.append(task_id)
        logged = task_log(settings, night, task_id) if isinstance(settings, Settings) else nullcontext()
        with log_context(task=task_id), logged:
            return fn(*args)

    plan = step("plan", setup_night, settings, logical_date, source, base_model)
    snapshots = {"logs": step("ingest_training_window", ingest_window, plan, "train", settings)}
    holdouts = {"logs": step("ingest_fresh_window", ingest_window, plan, "fresh", settings)}
    validations = {"logs": step("validate_training_window", validate_window, plan, snapshots["logs"], "logs", settings)}
    outcomes: dict[str, dict | None] = {}
    for name, spec in TASKS.items():
        if spec.dataset not in snapshots:  # the metric branch
            snapshots["metrics"] = step("ingest_metric_window", ingest_metric_window, plan, "train", settings)
            holdouts["metrics"] = step("ingest_metric_holdout", ingest_metric_window, plan, "fresh", settings)
            validations["metrics"] = step("validate_metric_window", validate_window, plan, snapshots["metrics"], "metrics", settings)
        stopped = stop_if_invalid(validations[spec.dataset], name, settings)
        outcome = step(task_id("train", name), lambda: None if stopped else train_candidate(plan, name, snapshots[spec.dataset], settings))
        outcomes[name] = step(task_id("promote", name), gate_candidate, name, outcome, holdouts[spec.dataset], settings)
    scoring = step("score_fresh_window", score_fresh, plan, settings)
    forecasts = step("publish_forecasts", publish_forecasts, plan, settings)
    summary = step("summarise", write_summary, plan, outcomes, scoring, forecasts, None, settings)
    return {**summary, "tasks_run": ran}


def airflow_env(settings: Settings) -> dict[str, str]:
    """Environment for a project-local Airflow on SQLite under NIGHTSHIFT_HOME."""
    home = settings.airflow_home
    home.mkdir(parents=True, exist_ok=True)
    return {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(project_dir("dags")),
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
        night_date = datetime.fromisoformat(date).date().isoformat()
        summary_file = summary_path(settings, night_date)
        airflow_log = summary_file.with_name("airflow.log")
        airflow_log.parent.mkdir(parents=True, exist_ok=True)
        summary_file.unlink(missing_ok=True)  # only this run's summary may count as success
        # the demo's night takes about half an hour on 2 CPU cores: a person at a terminal sees its tasks' lines
        # (epochs, progress) as they are written; elsewhere they stay in the night's log files
        logs = night_logs_dir(settings, night_date)
        echo = NightLogEcho(Path(logs), log) if sys.stderr.isatty() and not storage.is_remote(logs) else None
        log.info(f"running the night with airflow dags test; Airflow's own log: {airflow_log}", extra={"logical_date": date})
        with airflow_log.open("w") as out:  # Airflow's task logs are long: keep them in the night's folder
            with subprocess.Popen([airflow_bin(), "dags", "test", DAG_ID, date, "--conf", conf], env=env, stdout=out,
                                  stderr=subprocess.STDOUT) as night:
                try:
                    while night.poll() is None:
                        time.sleep(1.0)
                        if echo:
                            echo.echo()
                except BaseException:  # interrupted: the night stops with this command
                    night.kill()
                    raise
        if echo:
            echo.echo()
        if night.returncode != 0 or not summary_file.is_file():
            tail = "".join(airflow_log.read_text().splitlines(keepends=True)[-40:])
            raise NightFailed(f"airflow dags test {DAG_ID} {date} failed (exit {night.returncode}); last lines of {airflow_log}:\n{tail}")
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
        lines.append(f"  validation {suite}: {v['status']} ({v['statistics']['successful']}/{v['statistics']['evaluated']} expectations met) -> {v.get('report_html') or v['data_docs']}")
        lines += [f"    failed {f['check']} ({f['expectation']}) on {f['rows']} of {f['of']} rows, e.g. {json.dumps(f['examples'][:2], default=str, ensure_ascii=False)}"
                  for f in v["failed"]]
    lines += [f"  {name} {o['decision']}: {o['reason']}" for name, o in summary["models"].items() if o.get("decision") in ("skipped", "failed")]
    if summary.get("failed_tasks"):
        lines.append(f"  failed tasks: {', '.join(summary['failed_tasks'])}")
    lines += [f"  {name} v{o['version']} {o['decision']}: {o['promotion']['reason']}" for name, o in summary["models"].items()
              if o.get("promotion")]
    for name, o in summary["models"].items():
        if rollback := (o.get("promotion") or {}).get("rollback"):
            what = f"rolled back v{rollback['from']} -> v{rollback['to']}" if rollback["status"] == "rolled_back" else "not rolled back"
            lines.append(f"  {name} champion {what}: {rollback['reason']}")
    lines += [f"  {line}" for line in scoring_lines(summary.get("scoring"))]
    if shadow := (summary.get("scoring") or {}).get("shadow"):
        lines.append(f"  shadow: {shadow_line(shadow)}")
    lines += [f"  {line}" for line in forecast_lines(summary.get("forecasts"))]
    signals = summary.get("signals")
    if signals and signals.get("error"):
        lines.append(f"  signals not pushed: {signals['error']}")
    elif signals and signals.get("models"):
        lines.append(f"  pushed the signals of {len(signals['models'])} models -> {signals['pushgateway']} (job {signals['job']})")
    return "\n".join(lines)


def shadow_line(shadow: dict) -> str:
    """One line on the shadow-scored version (the `shadow` of a scoring result): its agreement with the champion."""
    def num(value: float | None, digits: int = 3) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    where = shadow["sink"]["uri"] if shadow.get("sink") else "ml.shadow.* fields"
    return (f"{shadow['model']} v{shadow['version']} ({shadow.get('decision') or 'pending'}) beside champion v{shadow['champion_version']} "
            f"on {shadow['documents']} docs ({'the whole window' if shadow.get('covers') == 'pass' else 'this run only'}): "
            f"agreement {num(shadow['agreement'])}, kappa {num(shadow['kappa'])}, mean |score diff| {num(shadow['mean_abs_score_diff'], 4)}, "
            f"flips {shadow['flips_to_anomaly']} to anomaly / {shadow['flips_to_normal']} to normal -> {where}")


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
