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
        "scored_sink": None if source.startswith("http") else f"file://{settings.home / 'scored' / date / 'logs.scored.ndjson'}",
        "summary_file": str(summary_path(settings, date)),
    }


def ingest_window(plan: dict, which: str, settings: Settings) -> str:
    """Snapshot the night's `train` or `fresh` window; returns the snapshot folder."""
    from pipelines.ingest import ingest_logs

    start, end = (datetime.fromisoformat(t) for t in plan[f"{which}_window"])
    return str(ingest_logs(plan["source"], start, end, Path(plan[f"{which}_snapshot"]), settings,
                           dataset="logs" if which == "train" else "logs-fresh").path)


def train_candidate(plan: dict, model: str, snapshot: str, settings: Settings) -> dict:
    """Train and register one model's candidate from the night's training snapshot."""
    from pipelines.train import train_log_anomaly

    trainers = {"log-anomaly": train_log_anomaly}
    return trainers[model](snapshot, settings, plan["base_model"] or None)


def score_fresh(plan: dict, settings: Settings) -> dict:
    """Score the fresh window with the current champion, back into the source or a file sink."""
    from serving.score_logs import score_logs

    start, end = (datetime.fromisoformat(t) for t in plan["fresh_window"])
    return score_logs("log-anomaly@champion", plan["source"], plan["scored_sink"], settings, start=start, end=end)


def write_summary(plan: dict, outcomes: dict, scoring: dict) -> dict:
    summary = {"logical_date": plan["logical_date"], "models": outcomes, "scoring": scoring}
    path = Path(plan["summary_file"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, default=str))
    return summary


def run_in_process(settings: Settings, logical_date: str, source: str | None, base_model: str | None) -> dict:
    plan = plan_night(settings, logical_date, source, base_model)
    train_snapshot = ingest_window(plan, "train", settings)
    ingest_window(plan, "fresh", settings)
    outcome = train_candidate(plan, "log-anomaly", train_snapshot, settings)
    return write_summary(plan, {"log-anomaly": outcome}, score_fresh(plan, settings))


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
    """Run the nightly flow once: through `airflow dags test` (default) or in this process."""
    date = logical_date or default_logical_date(settings, source)
    if in_process:
        summary = run_in_process(settings, date, source, base_model)
    else:
        env = airflow_env(settings)
        subprocess.run([airflow_bin(), "db", "migrate"], env=env, check=True, stdout=subprocess.DEVNULL)
        conf = json.dumps({"source": source, "base_model": base_model})
        done = subprocess.run([airflow_bin(), "dags", "test", DAG_ID, date, "--conf", conf], env=env)
        summary_file = summary_path(settings, datetime.fromisoformat(date).date().isoformat())
        if done.returncode != 0 or not summary_file.is_file():
            raise RuntimeError(f"airflow dags test {DAG_ID} {date} failed (exit {done.returncode}); see the task logs above")
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
    s = summary.get("scoring")
    if s:
        lines.append(f"  scored {s['scored']} docs of the fresh window with {s['model']} v{s['version']} -> {s['sink']}")
    return "\n".join(lines)
