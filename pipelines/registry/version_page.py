"""A model version's page in the MLflow UI: its markdown description tells the story of the version.

`write_version_page(client, ref, record)` writes it from a decision record (the gate's, `pipelines.registry.gate`,
or the registration's, `pipelines.registry.aliases.mark_challenger`): the decision as a heading, one reason per
line, what became of a decayed champion the gate faced, a table comparing the version, the champion it faced and
the baselines on the fresh holdout (the record's `contenders`), and links to the reports on its run (validation,
drift, the decision record, any report at the top of the run). A rollback (`pipelines.registry.gate.rollback`) adds
its own section at the top of both versions' pages (`add_to_version_page`), above what they said before. The links are relative to the MLflow UI (`#/experiments/E/runs/R/artifactPath/PATH` opens the
artifact in the run's artifact view), so they work behind any host name. `version_description` is the markdown
alone, for tests and for a store that cannot be written.
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Any
from urllib.parse import urlencode

from pipelines.pages import number
from pipelines.registry.store import ModelRef
from pipelines.telemetry import get_logger

log = get_logger("registry")

DESCRIPTION_CHARS = 5000  # MLflow keeps a model version's description in 5000 characters (the SQL store's column)
# Reports the page links when the run holds them: (label, artifact path), in this order; then any other report
# (HTML or PNG) at the top of the run.
KNOWN_REPORTS = (("validation report", "validation/report.html"), ("drift report", "drift/report.html"),
                 ("decision record", "promotion/decision.json"))
REPORT_SUFFIXES = (".html", ".png", ".svg")
# The picture the page shows, the first the run holds (`pipelines.training.plots`): how the model ranks on validation.
PICTURES = (("PR curves on the validation split", "training_report/pr_curve.png"),
            ("forecast against actual, worst series on validation", "training_report/forecast_worst.png"))


def _number(value: Any) -> str:
    return "–" if (x := number(value)) is None else f"{x:.4f}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _headline(record: dict) -> str:
    decision, version, champion = record.get("decision"), record.get("challenger"), record.get("champion")
    now = record.get("champion_now")
    if decision == "promoted":
        return (f"Promoted: v{version} is the champion, replacing v{champion}" if champion
                else f"Promoted: v{version} is the first champion (no gate: there was no champion to face)")
    if decision == "rejected":
        return f"Rejected: v{version} stays out; the champion is v{now or champion}"
    if decision == "stale":
        return f"Stale: the champion moved to v{now} while the gate ran; run the gate again (`nightshift promote`)"
    if decision == "pending":
        return f"Waiting for the gate: v{version} is the `challenger`"
    if decision == "rolled_back":
        return f"Rolled back: v{version} no longer serves; the champion is v{now or champion} again"
    if decision == "restored":
        return f"Restored: v{version} is the champion again, replacing v{champion}"
    return f"{str(decision).capitalize()}: v{version}"


def holdout_table(record: dict) -> list[str]:
    """The markdown table of the record's `contenders` ({name: {metric: value}}) on the holdout: one row per metric
    (the primary first, then the guards, then the rest), one column per contender (this version, the champion, then
    the baselines; the record's `column_titles`, {name: title}, overrides a column's title); the best value of a row
    in bold (for a metric in the record's `targets`, {metric: right value}, the nearest). [] when there are no numbers."""
    contenders: dict[str, dict[str, float]] = {k: v for k, v in (record.get("contenders") or {}).items() if v}
    if not contenders:
        return []
    primary, guards = record.get("primary"), list(record.get("guards") or ())
    lower = set(record.get("lower_is_better") or ())
    targets = {k: float(v) for k, v in (record.get("targets") or {}).items()}
    order = [c for c in ("challenger", "champion") if c in contenders] + sorted(c for c in contenders if c not in ("challenger", "champion"))
    seen = [m for c in order for m in contenders[c]]
    metrics = [m for m in (primary, *guards) if m in seen] + sorted({m for m in seen if m != primary and m not in guards})

    titles = record.get("column_titles") or {}

    def header(name: str) -> str:
        if name in titles:
            return str(titles[name])
        if name == "challenger":
            return f"v{record.get('challenger')} (this version)"
        if name == "champion":
            return f"v{record.get('champion')} (champion)"
        return f"{name} (baseline)"

    rows = ["| metric | " + " | ".join(header(c) for c in order) + " |", "|---" * (len(order) + 1) + "|"]
    for metric in metrics:
        values = [contenders[c].get(metric) for c in order]
        finite = [x for v in values if (x := number(v)) is not None]
        best = (None if len(finite) < 2 else min(finite, key=lambda x: abs(x - targets[metric])) if metric in targets
                else min(finite) if metric in lower else max(finite))
        cells = [f"**{_number(v)}**" if best is not None and v == best else _number(v) for v in values]
        role = " (primary)" if metric == primary else " (guard)" if metric in guards else ""
        label = f"{'**' + metric + '**' if metric == primary else metric}{role}{', lower is better' if metric in lower else f', {targets[metric]:g} is right' if metric in targets else ''}"
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return rows


def version_description(record: dict, links: dict[str, str] | None = None, picture: tuple[str, str] | None = None) -> str:
    """The version page's markdown: the decision, one reason per line, the holdout table (`holdout_table`), the
    `links` ({label: href}) and `picture` ((alt text, src): an image the page shows); at most `DESCRIPTION_CHARS`
    characters (long reasons are cut first)."""
    def build(reason_chars: int) -> str:
        lines = [f"### {_headline(record)}", ""]
        who = " ".join(filter(None, [f"by {record['by']}" if record.get("by") else "", f"at {record['at']}" if record.get("at") else ""]))
        if who:
            lines += [f"Decided {who}.", ""]
        reasons = record.get("reasons") or ([record["reason"]] if record.get("reason") else [])
        if reasons:
            lines += ["**Why**", ""] + [f"- {_cell(r)[:reason_chars]}" for r in reasons] + [""]
        if rollback := record.get("rollback"):  # the gate's: what became of the decayed champion it faced
            title = "Champion rolled back" if rollback.get("status") == "rolled_back" else "Champion decayed"
            lines += [f"**{title}**: {_cell(str(rollback.get('reason')))[:reason_chars]}", ""]
        holdout = record.get("holdout")
        table = holdout_table(record)
        if holdout and table:
            where = PurePath(str(holdout.get("snapshot")))  # `DATASET/NIGHT`, as the run's dataset input names it
            lines += [f"**On the fresh holdout** `{where.parent.name}/{where.name}` (window {holdout.get('window')}, "
                      f"{str(holdout.get('content_hash'))[:19]}…), which no version here trained on:", ""] + table + [""]
        elif record.get("decision") not in ("pending", "rolled_back", "restored"):
            lines += ["No numbers on a fresh holdout.", ""]
        if links:
            lines += ["**Reports**", ""] + [f"- [{label}]({href})" for label, href in links.items()] + [""]
        if picture:
            lines += [f"![{picture[0]}]({picture[1]})", ""]
        return "\n".join(lines).rstrip() + "\n"

    for reason_chars in (1000, 300, 120):
        text = build(reason_chars)
        if len(text) <= DESCRIPTION_CHARS:
            return text
    return text[:DESCRIPTION_CHARS - 2] + "…\n"


def report_links(client, run_id: str | None) -> dict[str, str]:
    """{label: MLflow UI link} of the reports the run `run_id` holds (`KNOWN_REPORTS`, then other top-level reports),
    and the run itself; {} without a run."""
    if not run_id:
        return {}
    from mlflow.exceptions import MlflowException

    experiment = client.get_run(run_id).info.experiment_id
    run_page = f"#/experiments/{experiment}/runs/{run_id}"
    try:
        files = {f.path for folder in ("", "validation", "drift", "promotion") for f in client.list_artifacts(run_id, folder or None)}
    except (MlflowException, OSError) as exc:  # the links are a convenience: the page is written without them
        log.warning("cannot list the run's artifacts", extra={"run_id": run_id, "error": str(exc)[:200]})
        files = set()
    links = {label: f"{run_page}/artifactPath/{path}" for label, path in KNOWN_REPORTS if path in files}
    known = {path for _, path in KNOWN_REPORTS}
    links.update({path: f"{run_page}/artifactPath/{path}" for path in sorted(files)
                  if "/" not in path and path.endswith(REPORT_SUFFIXES) and path not in known})
    links["training run"] = run_page
    return links


def report_picture(client, run_id: str | None) -> tuple[str, str] | None:
    """(alt text, src) of the first of `PICTURES` the run holds, as the tracking server serves it (`get-artifact`,
    relative to the UI, which shows images in a description); None without one."""
    if not run_id:
        return None
    from mlflow.exceptions import MlflowException

    try:
        files = {f.path for f in client.list_artifacts(run_id, "training_report")}
    except (MlflowException, OSError):
        return None
    for alt, path in PICTURES:
        if path in files:
            return alt, "get-artifact?" + urlencode({"path": path, "run_uuid": run_id})
    return None


def add_to_version_page(client, ref: ModelRef, record: dict) -> str:
    """Put `record` (a rollback's: decision `rolled_back` or `restored`) at the top of version `ref`'s page, above what
    the page said before (cut to fit `DESCRIPTION_CHARS`), so the version's story reads newest first; returns the
    markdown.

    Raises:
        MlflowException: the registry refused the update.
    """
    earlier = client.get_model_version(ref.name, ref.version).description or ""
    text = version_description(record)
    if earlier.strip():
        text += "\n---\n\n" + earlier
    if len(text) > DESCRIPTION_CHARS:
        text = text[:DESCRIPTION_CHARS - 2] + "…\n"
    client.update_model_version(ref.name, ref.version, description=text)
    return text


def write_version_page(client, ref: ModelRef, record: dict) -> str:
    """Write the description of version `ref` from `record` (`version_description`, with `report_links` of its run);
    returns the markdown.

    Raises:
        MlflowException: the registry refused the update.
    """
    run_id = client.get_model_version(ref.name, ref.version).run_id
    text = version_description(record, report_links(client, run_id), report_picture(client, run_id))
    client.update_model_version(ref.name, ref.version, description=text)
    return text
