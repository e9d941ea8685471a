"""The run: `validate_snapshot` fills the suite's thresholds from settings, streams the snapshot through its views,
and writes the report folder beside the snapshot (`result.json`, Data Docs, `report.html`)."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from nightshift_models.label_space import load_label_space
from pipelines import storage
from pipelines.config import ConfigError, Settings, ValidationSettings
from pipelines.data.snapshots import Snapshot, load_snapshot
from pipelines.data.validation.page import render_html
from pipelines.data.validation.profiles import LogProfile, MetricProfile, parse_step, schema_view, type_family
from pipelines.data.validation.results import (
    DOCS_DIR,
    FAILED,
    PASSED,
    REPORT_HTML,
    RESULT_FILE,
    WARN,
    describe,
    report_dir,
)
from pipelines.data.validation.suites import SUITES, _check, _Merged, _meta, _Runner, _shown, load_suite
from pipelines.telemetry import get_logger

log = get_logger("validation")


def parse_value_ranges(text: str) -> dict[str, tuple[float | None, float | None]]:
    """`metric=min:max,…` (either bound may be empty) as {metric: (min, max)}."""
    ranges: dict[str, tuple[float | None, float | None]] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, bounds = item.partition("=")
        low, colon, high = bounds.partition(":")
        try:
            if not sep or not colon or not name.strip():
                raise ValueError
            ranges[name.strip()] = (float(low) if low.strip() else None, float(high) if high.strip() else None)
        except ValueError:
            raise ConfigError(f"setting validation.value_ranges: cannot read {item!r} as metric=min:max") from None
    return ranges


def _parameters(suite: str, snapshot: Snapshot, settings: Settings) -> tuple[dict, list[dict]]:
    """Thresholds for the suite's `$PARAMETER`s, and the checks that cannot run on this snapshot."""
    v: ValidationSettings = settings.validation
    skipped: list[dict] = []
    if suite == "logs":
        window = snapshot.manifest.get("window") or {}
        start, end = window.get("start"), window.get("end")
        if not (start and end):
            skipped.append({"check": "timestamp.in_window", "reason": "the snapshot's manifest has no window"})
        return {
            "min_text_length": v.min_text_length, "max_text_length": v.max_text_length,
            "window_start": pd.Timestamp(start) if start else None, "window_end": pd.Timestamp(end) if end else None,
            "label_space": sorted(load_label_space(settings.rca.label_space or None).labels),
            "min_anomaly_ratio": v.min_anomaly_ratio, "max_anomaly_ratio": v.max_anomaly_ratio,
            "max_duplicate_ratio": v.max_duplicate_ratio, "min_rows_per_class": v.min_rows_per_class,
        }, skipped
    return {"max_nan_ratio": v.max_nan_ratio, "max_gap_ratio": v.max_gap_ratio,
            "min_history_points": settings.forecast.lookback}, skipped  # a series shorter than the lookback cannot be forecast


def _expand(suite, parameters: dict, skipped: list[dict], settings: Settings) -> list:
    """The suite's expectations for this run: per-metric copies of `value.range`, minus skipped checks."""
    from great_expectations.expectations.row_conditions import Column

    skip = {s["check"] for s in skipped}
    out = []
    for e in suite.expectations:
        meta = _meta(e)
        if meta.get("check") in skip:
            continue
        if meta.get("for_each") == "metric":
            ranges = parse_value_ranges(settings.validation.value_ranges)
            if not ranges:
                skipped.append({"check": meta["check"], "reason": "no ranges configured (validation.value_ranges)"})
            kwargs = {k: v for k, v in e.configuration.kwargs.items() if k not in ("min_value", "max_value")}
            for metric, (low, high) in ranges.items():
                out.append(type(e)(**kwargs, min_value=low, max_value=high, row_condition=Column("metric") == metric,
                                   meta={**meta, "check": f"{meta['check']}[{metric}]", "metric": metric},
                                   description=f"Values of `{metric}` lie in [{low}, {high}]."))
            continue
        out.append(type(e)(**e.configuration.kwargs, meta=meta, description=e.description))
    return out


def validate_snapshot(snapshot_dir: str | Path, suite: str | None, settings: Settings, warn_only: bool | None = None) -> dict:
    """Run a suite over a snapshot; write `validation/result.json` and Data Docs beside it; return the report.

    `suite` defaults from the snapshot's dataset (`logs…` → logs, `metrics…` → metrics).
    """
    started = time.perf_counter()
    snapshot = load_snapshot(snapshot_dir)
    suite = suite or _suite_for(snapshot)
    warn_only = settings.validation.warn_only if warn_only is None else warn_only
    if settings.validation.batch_rows < 1:
        raise ConfigError("setting validation.batch_rows: must be at least 1")
    parameters, skipped = _parameters(suite, snapshot, settings)
    gx_suite = load_suite(suite)
    expectations = _expand(gx_suite, parameters, skipped, settings)
    by_view: dict[str, list] = {}
    for e in expectations:
        by_view.setdefault(_meta(e)["view"], []).append(e)
    runner = _Runner(suite)
    merged: dict[str, _Merged] = {}

    def run(view: str, frame: pd.DataFrame) -> None:
        for r in runner.run(view, frame, by_view[view], parameters) if view in by_view else []:
            merged.setdefault(_check(r), _Merged(settings.inputs.show_chars)).add(r)

    # 1. The schema; absent columns are named by `schema.columns`, not by a type check each.
    with snapshot.parquet() as data:
        schema = data.schema_arrow
    by_view["schema"] = [e for e in by_view.get("schema", []) if e.configuration.kwargs.get("column", None) in (None, *schema.names)]
    run("schema", schema_view(schema))
    # 2. The rows, batch by batch, then the aggregates built on the way.
    profile = LogProfile(examples=settings.validation.examples) if suite == "logs" else MetricProfile(step=_step(snapshot))
    views: dict[str, pd.DataFrame] = {}
    if all(m.result().success for m in merged.values()):
        for batch in snapshot.batches(batch_size=settings.validation.batch_rows):
            for view, frame in profile.add(batch).items():
                run(view, frame)
        views = profile.views()
        for view, table in views.items():
            run(view, table)
    else:
        skipped.append({"check": "(rows and aggregates)", "reason": "not run: the snapshot's schema breaks the contract"})
    rows = profile.rows if views else snapshot.manifest.get("row_count", 0)
    results = [merged[c].result() for c in (_meta(e)["check"] for e in expectations) if c in merged]
    report = _report(suite, snapshot, results, skipped, parameters, warn_only, rows, profile, views, settings)
    report["schema"] = {f.name: type_family(f.type) for f in schema}  # the measured side of the schema checks
    report["seconds"] = round(time.perf_counter() - started, 2)
    _write(snapshot, report, results, runner, gx_suite, expectations, settings.inputs.show_chars)
    log.info("snapshot validated", extra={"snapshot": str(snapshot.path), "suite": suite, "status": report["status"],
                                          "failed": [f["check"] for f in report["failed"]], "rows": rows, "seconds": report["seconds"]})
    return report


def _step(snapshot: Snapshot) -> float | None:
    """The metric snapshot's sampling step, from its manifest (`step_seconds`, `step` or `query.step`)."""
    m, query = snapshot.manifest, snapshot.manifest.get("query")
    return parse_step(m.get("step_seconds") or m.get("step") or (query.get("step") if isinstance(query, dict) else None))


def _suite_for(snapshot: Snapshot) -> str:
    dataset = str(snapshot.manifest.get("dataset", ""))
    for name in SUITES:
        if dataset.startswith(name):
            return name
    raise ConfigError(f"snapshot {snapshot.path}: cannot tell the suite from dataset {dataset!r}; pass --suite logs|metrics")


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _failure(result: dict, rows_total: int, profile, views: dict[str, pd.DataFrame], examples: int, show_chars: int) -> dict:
    """One failed expectation, for people: which, on how many rows, with examples (those that are not the result's
    own, already cut by `_Merged`, cut here to `show_chars`)."""
    cfg = result["expectation_config"]
    meta, kwargs, r = cfg.get("meta") or {}, cfg.get("kwargs") or {}, result.get("result") or {}
    view = meta.get("view")
    out = {"check": meta.get("check"), "expectation": cfg["type"], "column": kwargs.get("column") or kwargs.get("column_A"),
           "view": view, "description": cfg.get("description")}
    info = result.get("exception_info") or {}
    if info.get("raised_exception"):
        out.update(rows=None, of=rows_total, examples=[_shown(f"error: {info.get('exception_message')}", show_chars)])
        return out
    if view == "schema":
        missing = ((r.get("details") or {}).get("mismatched") or {}).get("missing")
        out.update(rows=rows_total, of=rows_total,
                   examples=[f"missing column {c}" for c in missing] if missing else
                   [f"{kwargs.get('column')} is {v}" for v in r.get("partial_unexpected_list", [])][:1])
    elif view in ("rows", "labels"):
        index = r.get("partial_unexpected_index_list") or []
        out.update(rows=r.get("unexpected_count"), of=r.get("element_count"),
                   examples=(index or r.get("partial_unexpected_list") or [])[:examples])
    else:
        table = views.get(view) if view is not None else None
        rows_column = meta.get("rows_column")
        key = meta.get("index")
        if key and table is not None:
            bad = {json.dumps(i.get(key), default=str) for i in r.get("partial_unexpected_index_list") or []}
            failing = table[table[key].map(lambda v: json.dumps(v, default=str)).isin(bad)]
            column = kwargs["column"]
            out.update(rows=int(failing[rows_column].sum()) if rows_column else None, of=rows_total,
                       examples=[_shown(f"{k}: {column} {v:.4g}" if isinstance(v, float) else f"{k}: {column} {v}", show_chars)
                                 for k, v in zip(failing[key], failing[column])][:examples])
        else:
            out.update(rows=int(table[rows_column].iloc[0]) if table is not None and rows_column else None, of=rows_total,
                       examples=_shown(profile.examples_for(meta.get("examples_from", ""))[:examples], show_chars)
                       or r.get("partial_unexpected_list", [])[:examples])
    return _jsonable(out)


def _report(suite: str, snapshot: Snapshot, results: list, skipped: list[dict], parameters: dict, warn_only: bool,
            rows: int, profile, views: dict, settings: Settings) -> dict:
    dicts = [r.to_json_dict() for r in results]
    failed = [_failure(d, rows, profile, views, settings.validation.examples, settings.inputs.show_chars)
              for d in dicts if not d["success"]]
    status = PASSED if not failed else (WARN if warn_only else FAILED)
    report = {
        "suite": suite, "status": status, "success": not failed, "warn_only": warn_only,
        "snapshot": str(snapshot.path), "content_hash": snapshot.content_hash, "window": snapshot.manifest.get("window"),
        "rows": rows, "validated_at": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
        "statistics": {"evaluated": len(results), "successful": len(results) - len(failed), "unsuccessful": len(failed)},
        "failed": failed, "not_evaluated": skipped, "thresholds": _jsonable(parameters),
        "aggregates": {k: _jsonable(v.head(200).to_dict(orient="records")) for k, v in views.items()},
        "data_docs": f"{DOCS_DIR}/index.html", "report_html": REPORT_HTML,
    }
    report["message"] = describe(report)
    report["expectations"] = [{"check": (d["expectation_config"].get("meta") or {}).get("check"), "expectation": d["expectation_config"]["type"],
                               "success": d["success"]} for d in dicts]
    report["great_expectations"] = _jsonable({"success": not failed, "suite_name": suite, "results": dicts})
    return report


def _write(snapshot: Snapshot, report: dict, results: list, runner: _Runner, gx_suite, expectations: list, show_chars: int) -> None:
    """The report folder beside the snapshot (`report_dir`): built in a hidden local folder, then swapped into place
    (on an object store: uploaded, `result.json` last). `show_chars`: where `report.html` cuts measured values."""
    from great_expectations.core.expectation_validation_result import ExpectationSuiteValidationResult
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import ExpectationSuiteIdentifier, ValidationResultIdentifier

    final = report_dir(snapshot)
    remote = storage.is_remote(final)
    here = Path(tempfile.gettempdir()) if remote else final.parent  # GE writes Data Docs to the local disk only
    tmp = here / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    old = here / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir(parents=True)
        context = runner.context
        name = report["suite"]
        context.suites.add(runner.gx.ExpectationSuite(name=name, expectations=expectations, notes=gx_suite.notes, meta=gx_suite.meta))
        run_id = RunIdentifier(run_name="nightshift-validate", run_time=datetime.now(timezone.utc))
        s = report["statistics"]
        suite_result = ExpectationSuiteValidationResult(
            success=report["success"], results=results, suite_name=name,
            statistics={"evaluated_expectations": s["evaluated"], "successful_expectations": s["successful"],
                        "unsuccessful_expectations": s["unsuccessful"],
                        "success_percent": 100.0 * s["successful"] / s["evaluated"] if s["evaluated"] else 100.0},
            meta={**(runner.batch_meta or {}), "run_id": run_id, "validation_time": run_id.run_time,
                  "expectation_suite_name": name, "snapshot": report["snapshot"], "content_hash": report["content_hash"],
                  "rows": report["rows"], "status": report["status"]},
        )
        batch_id = re.sub(r"[^\w-]", "-", report["content_hash"])
        key = ValidationResultIdentifier(expectation_suite_identifier=ExpectationSuiteIdentifier(name=name), run_id=run_id, batch_identifier=batch_id)
        context.validation_results_store.store_validation_results(suite_result, key, ExpectationSuiteIdentifier(name=name))
        context.add_data_docs_site("snapshot", {"class_name": "SiteBuilder", "show_how_to_buttons": False,
                                                "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(tmp / DOCS_DIR)},
                                                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"}})
        context.build_data_docs(site_names=["snapshot"])
        # Fonts and logos are 4 MB a copy, logged with every training run; the pages fall back to system fonts.
        for heavy in ("fonts", "images"):
            shutil.rmtree(tmp / DOCS_DIR / "static" / heavy, ignore_errors=True)
        pages = sorted((tmp / DOCS_DIR / "validations").rglob("*.html"))
        report["data_docs_page"] = str(pages[0].relative_to(tmp)) if pages else None
        (tmp / RESULT_FILE).write_text(json.dumps(report, indent=2, default=str))
        (tmp / REPORT_HTML).write_text(render_html(report, show_chars))
        if remote:
            for file in sorted(p for p in tmp.rglob("*") if p.is_file() and p.name != RESULT_FILE):
                storage.upload(file, final / file.relative_to(tmp).as_posix())
            storage.upload(tmp / RESULT_FILE, final / RESULT_FILE)
            return
        if final.exists():
            final.rename(old)
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)

