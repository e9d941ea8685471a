"""The night report: one self-contained HTML page per night (`runs/D/report.html`), built with the page kit
of `pipelines.pages`.

Reading order: `gather_night` (the night's summary plus what MLflow holds on each model), `render_night`
(the page), `write_night_report` (both, to the file).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pipelines import storage
from pipelines.config import Settings
from pipelines.errors import InputError, MissingInput
from pipelines.pages import CURRENT_COLOUR, REFERENCE_COLOUR, UiLinks, badge, esc, figure, fmt, link, page, png, table, truncate
from pipelines.registry.store import use_store
from pipelines.storage import StoragePath
from pipelines.telemetry import get_logger

log = get_logger("report")

NIGHT_REPORT_FILE = "report.html"


def summary_path(settings: Settings, date: str) -> StoragePath:
    """Where the night of logical date `date` (YYYY-MM-DD) keeps its summary: `runs/D/summary.json` under the storage
    root (setting `storage`; default `$NIGHTSHIFT_HOME`)."""
    return settings.storage_root / "runs" / date / "summary.json"


def latest_night(settings: Settings) -> str:
    """The logical date (YYYY-MM-DD) of the newest night with a summary under the storage root.

    Raises:
        MissingInput: no night has a summary there yet (the message says what to run).
    """
    nights = sorted(p.parent.name for p in (settings.storage_root / "runs").glob("*/summary.json"))
    if not nights:
        raise MissingInput(f"no night has run under {settings.storage_root}: run `make demo` or `nightshift retrain` "
                                f"first (or set NIGHTSHIFT_HOME to the state folder it used)")
    return nights[-1]


# ---- the night report: gather ----------------------------------------------------------------

def _mlflow_facts(client, name: str, outcome: dict) -> dict:
    """What MLflow holds on one model for the night: the version's tags, its run's experiment and
    holdout metrics, the model's aliases now, and the run's drift report (None where absent).

    Raises:
        mlflow.exceptions.MlflowException: the store does not know the model, version or run.
    """
    facts: dict[str, Any] = {"aliases": {}, "tags": {}, "experiment_id": None, "run_metrics": {}, "drift_report": None}
    facts["aliases"] = {alias: str(v) for alias, v in (client.get_registered_model(name).aliases or {}).items()}
    if outcome.get("version") is None:
        return facts
    version = client.get_model_version(name, str(outcome["version"]))
    facts["tags"] = dict(version.tags or {})
    run_id = outcome.get("run_id") or version.run_id
    if run_id:
        run = client.get_run(run_id)
        facts.update(run_id=run_id, experiment_id=run.info.experiment_id, run_metrics=dict(run.data.metrics))
        facts["drift_report"] = _run_json(client, run_id, "drift/report.json")
    return facts


def _run_json(client, run_id: str, path: str) -> dict | None:
    """A JSON artifact of a run, or None when the run has none at `path`."""
    import tempfile

    if not any(a.path == path for a in client.list_artifacts(run_id, str(Path(path).parent))):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        return json.loads(Path(client.download_artifacts(run_id, path, tmp)).read_text())


def gather_night(settings: Settings, date: str) -> dict:
    """The night's summary (`runs/D/summary.json`) with, per model, what MLflow holds (`mlflow` key,
    or `mlflow_error` when the store cannot be read: the page is still written from the summary).

    Raises:
        FileNotFoundError: the night has no summary (it has not run, or ran under another home).
    """
    from datetime import date as Date


    try:
        date = Date.fromisoformat(str(date)[:10]).isoformat()
    except ValueError:
        raise InputError(f"night {date!r}: expected a date like 2026-11-22") from None
    path = summary_path(settings, date)
    if not path.is_file():
        raise MissingInput(f"night {date}: no summary at {path}; run `nightshift retrain --logical-date {date}` first "
                                "(or point NIGHTSHIFT_HOME / NIGHTSHIFT_STORAGE at the home or storage that ran it)")
    summary = json.loads(path.read_text())
    try:
        client = use_store(settings)
    except Exception as exc:  # noqa: BLE001 - the summary alone still makes a page
        client, error = None, f"{type(exc).__name__}: {exc}"
    models = {}
    for name, outcome in (summary.get("models") or {}).items():
        outcome = outcome or {}
        entry: dict[str, Any] = {"outcome": outcome}
        if client is None:
            entry["mlflow_error"] = error
        else:
            try:
                entry["mlflow"] = _mlflow_facts(client, name, outcome)
            except Exception as exc:  # noqa: BLE001 - e.g. a model never registered: say so on its card
                entry["mlflow_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
        models[name] = entry
    return {"date": date, "summary": summary, "summary_file": str(path), "models": models,
            "tracking_uri": settings.mlflow_uri, "ui_url": settings.ui_url}


# ---- the night report: the page --------------------------------------------------------------

def headline(outcome: dict, run_metrics: dict[str, float]) -> dict[str, dict[str, float]]:
    """The numbers a person compares, as {column: {metric: value}}: the candidate and its baseline on
    its validation split, and the candidate and the champion on the night's fresh holdout (from the
    gate's record, else the `holdout_*` metrics on the run). Columns without numbers are left out."""
    promotion = outcome.get("promotion") or {}
    holdout = promotion.get("challenger_metrics") or {k.removeprefix("holdout_"): v for k, v in run_metrics.items()
                                                       if k.startswith("holdout_") and not k.startswith("holdout_champion_")}
    champion = promotion.get("champion_metrics") or {k.removeprefix("holdout_champion_"): v for k, v in run_metrics.items()
                                                     if k.startswith("holdout_champion_")}
    columns = {"candidate, validation": outcome.get("metrics") or {}, "baseline, validation": outcome.get("baseline") or {},
               "candidate, holdout": holdout, "champion, holdout": champion}
    return {c: {k: v for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)} for c, m in columns.items() if m}


def _headline_table(numbers: dict[str, dict[str, float]]) -> str:
    metrics = list(dict.fromkeys(k for m in numbers.values() for k in m if k not in ("threshold", "primary")))
    return table(["metric", *numbers], [[k, *(m.get(k) for m in numbers.values())] for k in metrics],
                 numeric=range(1, len(numbers) + 1))


def _headline_figure(name: str, numbers: dict[str, dict[str, float]], limit: int = 4) -> str:
    """Small multiples, one panel per metric (each on its own scale): a bar per column."""
    columns: list[str] = [c for c in ("candidate, holdout", "champion, holdout") if c in numbers] or \
              [c for c in ("candidate, validation", "baseline, validation") if c in numbers]
    metrics = [k for k in dict.fromkeys(k for c in columns for k in numbers[c]) if k not in ("threshold", "primary")][:limit]
    if not metrics:
        return ""
    fig = figure(2.3 * len(metrics) + 0.4, 2.4)
    colours = [CURRENT_COLOUR, REFERENCE_COLOUR]
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), i + 1)
        values = [numbers[c].get(metric, math.nan) for c in columns]
        bars = ax.bar(range(len(columns)), values, color=colours[:len(columns)])
        ax.bar_label(bars, labels=[fmt(v, 3) for v in values], fontsize=7)
        ax.set_xticks(range(len(columns)), [c.split(",")[0] for c in columns], fontsize=8)
        ax.set_title(metric, fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
        ax.margins(y=0.2)
    fig.suptitle(f"{name}: {columns[0].split(', ')[1]}", fontsize=9)
    return png(fig, f"{name}: {', '.join(metrics)}, {' against '.join(columns)}")


def _reasons(outcome: dict, tags: dict) -> list[str]:
    promotion = outcome.get("promotion") or {}
    text = promotion.get("reason") or outcome.get("reason") or tags.get("promotion.reason") or ""
    return [r.strip() for r in text.split("; ") if r.strip()]


def _drift_block(facts: dict, outcome: dict, links: UiLinks) -> str:
    drift = (outcome.get("promotion") or {}).get("drift") or {}
    report = facts.get("drift_report")
    status = (report or {}).get("status") or drift.get("status") or facts.get("tags", {}).get("drift.status") or "not_run"
    shift = (report or drift).get("label_shift")
    head = f"<p><b>Drift</b> {badge(status)}{' <b>label shift</b>' if shift else ''} "
    if facts.get("run_id") and report:
        head += link(links.artifact(facts["experiment_id"], facts["run_id"], "drift/report.html"), "drift report with pictures")
    head += f" <span class='small muted'>{esc((report or drift).get('reason') or '')}</span></p>"
    checks = (report or {}).get("checks") or []
    if not checks:
        return head
    return head + table(["check", "statistic", "value", "status"], [[c["name"], c["statistic"], c["value"], badge(c["status"])] for c in checks],
                        numeric=(2,), raw=(3,))


def _model_card(name: str, entry: dict, links: UiLinks) -> str:
    outcome, facts = entry["outcome"], entry.get("mlflow") or {}
    tags, version = facts.get("tags") or {}, outcome.get("version")
    decision = outcome.get("decision") or tags.get("promotion.decision") or "n/a"
    parts = [f"<div class='card model' id='model-{esc(name)}'><h2>{esc(name)} "
             f"{'v' + esc(version) + ' ' if version is not None else ''}{badge(decision)}</h2>"]
    parts += [f"<p class='reason'>{esc(r)}</p>" for r in _reasons(outcome, tags)]
    nav = []
    if version is not None:
        nav.append(link(links.model_version(name, version), f"version {version} in MLflow"))
    if facts.get("run_id"):
        nav.append(link(links.run(facts["experiment_id"], facts["run_id"]), "training run"))
        nav.append(link(links.artifact(facts["experiment_id"], facts["run_id"], "validation/report.html"), "validation report"))
    nav.append(link(links.model(name), "all versions"))
    aliases = ", ".join(f"@{a} = v{v}" for a, v in sorted(facts.get("aliases", {}).items())) or "none"
    parts.append(f"<p class='small'>{' · '.join(nav)}<br>aliases now: {esc(aliases)}"
                 + (f" · validation {badge(tags['validation.status'])}" if tags.get("validation.status") else "") + "</p>")
    if entry.get("mlflow_error"):
        parts.append(f"<p class='small muted'>MLflow: {esc(entry['mlflow_error'])}</p>")
    numbers = headline(outcome, facts.get("run_metrics") or {})
    if numbers:
        parts.append(f"<h3>Headline numbers</h3>{_headline_table(numbers)}<div class='figs'>{_headline_figure(name, numbers)}</div>")
    if version is not None:
        parts.append(_drift_block(facts, outcome, links))
    return "".join(parts) + "</div>"


def _validation_section(validation: dict) -> str:
    if not validation:
        return "<p class='muted'>No snapshot was validated this night.</p>"
    out = []
    for suite, v in validation.items():
        s = v.get("statistics") or {}
        html_file = v.get("report_html")
        out.append(f"<div class='card validation' id='validation-{esc(suite)}'><h3>{esc(suite)} suite {badge(v.get('status'))}</h3>"
                   f"<p>{fmt(s.get('successful'))} of {fmt(s.get('evaluated'))} expectations met on {fmt(v.get('rows'))} rows of "
                   f"<span class='mono'>{esc(v.get('snapshot'))}</span>"
                   + (f" · {link(html_file if '://' in html_file else Path(html_file).as_uri(), 'validation report')}" if html_file else "") + "</p>")
        if v.get("failed"):
            out.append(table(["failed check", "rows", "of", "e.g."],
                             [[f["check"], f.get("rows"), f.get("of"), truncate((f.get("examples") or [""])[0], 120)] for f in v["failed"]],
                             numeric=(1, 2)))
        out.append("</div>")
    return "".join(out)


def scoring_lines(scoring: dict | None) -> list[str]:
    """What the night's scoring wrote back, one line each: the scored window (or why it was skipped) and the root causes
    of its failed jobs. The terminal summary and the report both say it this way."""
    s = scoring or {}
    if s.get("skipped"):
        return [f"scoring skipped: {s['skipped']}"]
    if not s:
        return []
    lines = [f"scored {s['scored']} documents of the fresh window with {s['model']} v{s['version']} -> {s['sink']}"]
    if r := s.get("rca"):
        lines.append(f"root causes on {r['annotated']} documents of {r['jobs']} failed jobs with {r['model']} v{r['version']} "
                     f"({r['fallback']} from the knowledge base)")
    return lines


def forecast_lines(forecasts: dict | None) -> list[str]:
    """Where the night's forecasts went (or why they were not pushed): one line, or none."""
    f = forecasts or {}
    if f.get("skipped"):
        return [f"forecasts not pushed: {f['skipped']}"]
    return [f"pushed {f['horizon']} forecasts of {f['series']} series with {f['model']} v{f['version']} -> {f['pushgateway']}"] if f else []


def _operations_section(summary: dict) -> str:
    """Scoring, root causes, forecasts and failed tasks, one line each; then the shadow's agreement with the champion."""
    lines = scoring_lines(summary.get("scoring")) + forecast_lines(summary.get("forecasts"))
    if summary.get("failed_tasks"):
        lines.append(f"failed tasks: {', '.join(summary['failed_tasks'])}")
    return ("<ul>" + "".join(f"<li>{esc(line)}</li>" for line in lines) + "</ul>" if lines else "") + _shadow_block((summary.get("scoring") or {}).get("shadow"))


def _shadow_block(shadow: dict | None) -> str:
    """The shadow-scored version's agreement with the champion on the fresh window (`pipelines.scoring.shadow`), as a table."""
    if not shadow:
        return ""
    where = (shadow.get("sink") or {}).get("uri") or "ml.shadow.* fields"
    covers = "the whole window" if shadow.get("covers") == "pass" else "the documents this run read (it resumed an earlier one)"
    rows: list[list[Any]] = [["documents compared", shadow.get("documents")], ["is_anomaly agrees (share)", shadow.get("agreement")],
            ["Cohen's kappa", shadow["kappa"] if shadow.get("kappa") is not None else "undefined (one class throughout)"], ["mean |score difference|", shadow.get("mean_abs_score_diff")],
            ["flips normal -> anomaly", shadow.get("flips_to_anomaly")], ["flips anomaly -> normal", shadow.get("flips_to_normal")],
            ["anomalies: champion / shadow", f"{fmt(shadow.get('champion_anomalies'))} / {fmt(shadow.get('shadow_anomalies'))}"]]
    return (f"<div class='card shadow' id='shadow'><h3>Shadow: {esc(shadow.get('model'))} v{esc(shadow.get('version'))} "
            f"{badge(shadow.get('decision') or 'pending')} beside champion v{esc(shadow.get('champion_version'))}</h3>"
            f"<p class='small'>scored in the same pass over {esc(covers)} -> <span class='mono'>{esc(where)}</span>"
            + (" · logged as shadow.* metrics on its run" if shadow.get("logged_to_run") else "") + "</p>"
            + table(["measure", "value"], rows, numeric=(1,)) + "</div>")


def render_night(night: dict) -> str:
    """The night report page from `gather_night`'s dict: a line per model, then per model its decision
    and reasons, headline numbers (table and picture), drift and links into MLflow; then the
    validation verdicts, scoring and forecasts."""
    from datetime import datetime, timezone

    links = UiLinks(night["ui_url"])
    summary = night["summary"]
    rows = []
    for name, e in night["models"].items():
        outcome, tags = e["outcome"], (e.get("mlflow") or {}).get("tags") or {}
        drift = tags.get("drift.status") or ((outcome.get("promotion") or {}).get("drift") or {}).get("status") or "not_run"
        first = (_reasons(outcome, tags) or [""])[0]  # the gate's primary comparison, or why nothing was trained
        rows.append([link(f"#model-{name}", name), esc(outcome.get("version", "-")), badge(outcome.get("decision")),
                     esc(truncate(first, 110)), badge(drift), badge(tags.get("validation.status") or "not_run")])
    overview = table(["model", "version", "decision", "headline", "drift", "validation"], rows, raw=range(6))
    body = (f"<h1>nightshift: night of {esc(night['date'])}</h1>"
            f"<p class='small muted'>from {esc(night['summary_file'])} and the MLflow store {esc(night['tracking_uri'])}; "
            f"links open the MLflow UI at {link(night['ui_url'], night['ui_url'])}</p>"
            f"<h2>Decisions</h2>{overview}"
            + "".join(_model_card(name, e, links) for name, e in night["models"].items())
            + f"<h2>Validation</h2>{_validation_section(summary.get('validation') or {})}"
            + f"<h2>Scoring and forecasts</h2>{_operations_section(summary)}"
            + f"<p class='small muted'>written {datetime.now(timezone.utc).isoformat(timespec='seconds')}</p>")
    return page(f"nightshift night {night['date']}", body)


def write_night_report(settings: Settings, date: str, out: str | Path | None = None, ui_url: str | None = None) -> StoragePath:
    """Write the night report of `date` (default `runs/D/report.html` beside the summary; atomically)
    and return its path. `ui_url` overrides the setting `ui_url` for the links into MLflow.

    Raises:
        FileNotFoundError: the night has no summary.
    """
    import dataclasses

    if ui_url:
        settings = dataclasses.replace(settings, ui_url=ui_url)
    night = gather_night(settings, date)
    path = storage.path(out) if out else storage.path(night["summary_file"]).with_name(NIGHT_REPORT_FILE)
    storage.write_text(path, render_night(night))
    log.info("night report written", extra={"night": date, "path": str(path)})
    return path


def try_night_report(settings: Settings, date: str) -> str | None:
    """`write_night_report` for the night's summary task: the report's path, or None (logged with its
    traceback) when it could not be written, since a night must not fail over its page."""
    try:
        return str(write_night_report(settings, date))
    except Exception:  # noqa: BLE001 - the summary is the record; the page is a view of it
        log.exception("night report not written", extra={"night": date})
        return None
