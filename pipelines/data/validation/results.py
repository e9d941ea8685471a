"""The report folder beside a snapshot, its names, and its verdict read back: by training's gate, the CLI and the
night's summary. `describe` and `brief` put a report in words."""

from __future__ import annotations

import json
from pathlib import Path

from pipelines import storage
from pipelines.data.snapshots import Snapshot, load_snapshot
from pipelines.errors import NightshiftError
from pipelines.storage import StoragePath

REPORT_DIR = "validation"
RESULT_FILE = "result.json"
DOCS_DIR = "data_docs"
REPORT_HTML = "report.html"
PASSED, FAILED, WARN, NOT_RUN = "passed", "failed", "warn", "not_run"


class ValidationFailed(NightshiftError, ValueError):
    """A snapshot failed its suite; the message names the failed expectations."""


def report_dir(snapshot: Snapshot | str | StoragePath) -> StoragePath:
    """Where a snapshot's validation report lives: `<snapshot>.validation/` beside the snapshot folder (or prefix)."""
    where = snapshot.path if isinstance(snapshot, Snapshot) else storage.path(snapshot)
    return where.parent / f"{where.name}.{REPORT_DIR}"


def read_report(snapshot: Snapshot | str | Path) -> dict | None:
    """The snapshot's validation report, if one was written for this very snapshot (same content hash)."""
    snapshot = snapshot if isinstance(snapshot, Snapshot) else load_snapshot(snapshot)
    path = report_dir(snapshot) / RESULT_FILE
    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    return report if report.get("content_hash") == snapshot.content_hash else None


def validation_status(snapshot: Snapshot | str | Path) -> str:
    """passed / failed / warn, or not_run when the snapshot has no report of its own."""
    report = read_report(snapshot)
    return report["status"] if report else NOT_RUN


def require_not_failed(snapshot: Snapshot) -> str:
    """The gate before training: raise `ValidationFailed` when the snapshot's validation failed; return its status."""
    report = read_report(snapshot)
    if report and report["status"] == FAILED:
        raise ValidationFailed(f"snapshot {snapshot.path} failed validation, so no model trains on it: {brief(report)} "
                               f"(see {report_dir(snapshot) / RESULT_FILE}; `nightshift validate --warn-only` to explore)")
    return report["status"] if report else NOT_RUN


def verdict(report: dict) -> dict:
    """The report without the raw GE results: what the CLI prints and the night's summary keeps."""
    out = report_dir(report["snapshot"])
    return {"suite": report["suite"], "status": report["status"], "snapshot": report["snapshot"], "rows": report["rows"],
            "statistics": report["statistics"], "failed": report["failed"], "not_evaluated": report["not_evaluated"],
            "result": str(out / RESULT_FILE), "data_docs": str(out / report["data_docs"]),
            "data_docs_page": str(out / report["data_docs_page"]) if report.get("data_docs_page") else None,
            "report_html": str(out / report["report_html"]) if report.get("report_html") else None}


def brief(report: dict) -> str:
    """The failed checks on one line: `message.not_blank on 37 of 1200 rows, …`."""
    parts = [f"{f['check']} ({f['expectation']}) on {f['rows']} of {f['of']} rows" for f in report["failed"]]
    return "; ".join(parts) or "no expectation failed"


def describe(report: dict) -> str:
    """One paragraph: the verdict, then each failed expectation on one line with its row count and up to three
    examples (as `_shown` cut them)."""
    s = report["statistics"]
    head = (f"{report['suite']} suite {report['status']} on {report['rows']} rows of {report['snapshot']}: "
            f"{s['successful']} of {s['evaluated']} expectations met")
    lines = [head]
    for f in report["failed"]:
        where = f" on {f['column']}" if f.get("column") else ""
        count = f"{f['rows']} of {f['of']} rows" if f.get("rows") is not None else "error"
        lines.append(f"  FAILED {f['check']} ({f['expectation']}{where}): {count}; e.g. "
                     + "; ".join(json.dumps(e, default=str, ensure_ascii=False) if not isinstance(e, str) else e for e in f["examples"][:3]))
    for s_ in report.get("not_evaluated", []):
        lines.append(f"  not evaluated {s_['check']}: {s_['reason']}")
    return "\n".join(lines)

