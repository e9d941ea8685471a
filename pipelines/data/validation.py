"""Data validation gate: the Great Expectations suites of `expectations/` run over a snapshot.

The suites live in a GE file context (`expectations/gx`, one suite per dataset kind: `logs`,
`metrics`); thresholds in them are `$PARAMETER`s filled from settings `[validation]`. Every
expectation names in `meta.view` the table it reads:

- `schema`: one row, the snapshot's Arrow column types. Checked first; a wrong schema stops there,
  since every other check would only repeat it.
- `rows`, `labels`: the data itself (labels: one row per root-cause label), validated batch by
  batch, `validation.batch_rows` rows at a time, and the per-batch results merged (counts summed,
  examples kept), so memory stays flat however large the snapshot.
- `summary`, `classes`, `series`: small aggregate tables built while streaming (anomaly and
  duplicate ratios, rows per class, per-series NaN/gap ratios and history), validated once.

`validate_snapshot` writes `DIR.validation/result.json`, a Data Docs site `DIR.validation/data_docs/`
and `DIR.validation/report.html` beside the snapshot `DIR` (`report_dir`; never inside it: a snapshot is immutable,
and on an object store its manifest is its commit marker). Locally the folder is swapped into place atomically; on an
object store `result.json` is uploaded last, and a reader trusts it only for the snapshot's own content hash. `report.html` is nightshift's own page, self-contained (inline CSS, no CDN): each
measured value against its bound (the anomaly ratio as a ratio against its bounds, not "0%
unexpected") and the failed rows with examples. Training logs that folder with its run (`log_to_active_run`) and tags
the registered version with `validation.status`.

Failing examples are data shown to people: each text in them is cut to setting `inputs.show_chars` characters, its full
size stated (`_shown`), once, where the merged results are made; everything built from them (Data Docs, `result.json`,
the CLI's summary, `report.html`, the night's summary) shows them as they are.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from nightshift_models.label_space import load_label_space
from pipelines import storage
from pipelines.config import ConfigError, Settings, ValidationSettings
from pipelines.data.records import parse_duration
from pipelines.data.snapshots import Snapshot, load_snapshot, window_tag
from pipelines.errors import InputError, NightshiftError
from pipelines.pages import badge, esc, fmt, gauge, number, page, truncate
from pipelines.registry.store import use_store
from pipelines.resources import project_dir
from pipelines.storage import StoragePath
from pipelines.telemetry import get_logger

log = get_logger("validation")

GX_PROJECT = project_dir("expectations")
SUITES = ("logs", "metrics")
REPORT_DIR = "validation"
RESULT_FILE = "result.json"
DOCS_DIR = "data_docs"
REPORT_HTML = "report.html"
PASSED, FAILED, WARN, NOT_RUN = "passed", "failed", "warn", "not_run"
# Columns that identify a log row: a row equal to an earlier one on all of them is a duplicate.
DUPLICATE_KEY = ("timestamp", "message", "service", "level", "host", "anomaly", "job_id")
# Where the views' failing rows are located in examples.
INDEX_COLUMNS = {"logs": {"rows": ["timestamp"], "labels": ["timestamp"], "classes": ["class"]},
                 "metrics": {"rows": ["series"], "series": ["series"]}}


class ValidationFailed(NightshiftError, ValueError):
    """A snapshot failed its suite; the message names the failed expectations."""


# ---------------------------------------------------------------------------------------------
# Great Expectations: the suites, and running one view's expectations on one table


def _gx():
    """Import Great Expectations quietly: no usage statistics, no progress bars, no chatter."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    return gx


def load_suite(name: str):
    """The named suite from the project's GE file context (`expectations/gx`)."""
    if name not in SUITES:
        raise ConfigError(f"suite {name!r}: expected one of {', '.join(SUITES)}")
    gx = _gx()
    context = gx.get_context(mode="file", project_root_dir=str(GX_PROJECT))
    return context.suites.get(name)


def _meta(expectation) -> dict:
    return dict(expectation.meta or {})


class _Runner:
    """An ephemeral GE context with one in-memory dataframe asset per view."""

    def __init__(self, suite_name: str):
        gx = _gx()
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.gx = gx
        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        self.source = self.context.data_sources.add_pandas(f"{suite_name}-snapshot")
        self.suite_name = suite_name
        self._batches: dict[str, Any] = {}
        self._suites: dict[str, Any] = {}
        self.batch_meta: dict | None = None

    def run(self, view: str, frame: pd.DataFrame, expectations: list, parameters: dict) -> list:
        """Validate `frame` against the expectations of one view; one GE result per expectation."""
        if view not in self._batches:
            asset = self.source.add_dataframe_asset(view)
            self._batches[view] = asset.add_batch_definition_whole_dataframe(view)
            self._suites[view] = self.gx.ExpectationSuite(name=f"{self.suite_name}.{view}", expectations=expectations)
        index = [c for c in INDEX_COLUMNS.get(self.suite_name, {}).get(view, []) if c in frame.columns]
        result_format: dict[str, Any] = {"result_format": "SUMMARY", "partial_unexpected_count": 20}
        if index:
            result_format["unexpected_index_column_names"] = index
        batch = self._batches[view].get_batch(batch_parameters={"dataframe": frame})
        result = batch.validate(self._suites[view], expectation_parameters=parameters, result_format=result_format)
        if self.batch_meta is None:
            self.batch_meta = dict(result.meta)
        return list(result.results)


def _check(result) -> str:
    return result.expectation_config.meta["check"]


def _is_map(result: dict) -> bool:
    return "unexpected_count" in result and "element_count" in result


def _shown(example: Any, limit: int) -> Any:
    """A failing example as people see it: every text in it (a row's fields, a list's items) cut to `limit`
    characters with its full size stated (`truncate`); numbers, times and nulls as they are."""
    if isinstance(example, dict):
        return {k: _shown(v, limit) for k, v in example.items()}
    if isinstance(example, (list, tuple)):
        return [_shown(v, limit) for v in example]
    return truncate(example, limit) if isinstance(example, str) else example


class _Merged:
    """One expectation's results over all batches of its view: counts summed, examples kept (cut to `show_chars`)."""

    def __init__(self, show_chars: int):
        self.show_chars = show_chars
        self.first = None
        self.success = True
        self.exception: dict | None = None
        self.counts = {"element_count": 0, "missing_count": 0, "unexpected_count": 0}
        self.examples: list = []
        self.index_examples: list = []

    def add(self, result) -> None:
        if self.first is None:
            self.first = result
        info = result.exception_info or {}
        if info.get("raised_exception"):
            self.exception = self.exception or info
        self.success = self.success and bool(result.success)
        r = result.result or {}
        if _is_map(r):
            for key in self.counts:
                self.counts[key] += int(r.get(key) or 0)
            room = 20 - len(self.examples)
            self.examples += list(r.get("partial_unexpected_list") or [])[:room]
            self.index_examples += list(r.get("partial_unexpected_index_list") or [])[:20 - len(self.index_examples)]

    def result(self):
        """A GE `ExpectationValidationResult` for the whole snapshot."""
        from great_expectations.core.expectation_validation_result import ExpectationValidationResult

        r = dict(self.first.result or {})
        if _is_map(r):
            c = self.counts
            nonmissing = c["element_count"] - c["missing_count"]
            unexpected_pct = 100.0 * c["unexpected_count"] / nonmissing if nonmissing else 0.0
            mostly = self.first.expectation_config.kwargs.get("mostly", 1.0) or 1.0
            r.update(c, unexpected_percent=unexpected_pct, unexpected_percent_nonmissing=unexpected_pct,
                     unexpected_percent_total=100.0 * c["unexpected_count"] / c["element_count"] if c["element_count"] else 0.0,
                     missing_percent=100.0 * c["missing_count"] / c["element_count"] if c["element_count"] else 0.0,
                     partial_unexpected_list=self.examples,
                     partial_unexpected_counts=_value_counts(self.examples))
            if self.index_examples:
                r["partial_unexpected_index_list"] = self.index_examples
            success = self.exception is None and (nonmissing == 0 or (nonmissing - c["unexpected_count"]) / nonmissing >= mostly)
        else:
            success = self.success and self.exception is None
        for key in ("partial_unexpected_list", "partial_unexpected_index_list", "partial_unexpected_counts"):
            if key in r:  # after the counts: values alike only in their first characters stay apart
                r[key] = _shown(r[key], self.show_chars)
        return ExpectationValidationResult(success=success, expectation_config=self.first.expectation_config, result=r,
                                           meta=dict(self.first.meta or {}),
                                           exception_info=self.exception or {"raised_exception": False, "exception_traceback": None, "exception_message": None})


def _value_counts(values: list) -> list[dict]:
    counts: dict[str, dict] = {}
    for v in values:
        key = json.dumps(v, default=str, sort_keys=True)
        counts.setdefault(key, {"value": v, "count": 0})["count"] += 1
    return sorted(counts.values(), key=lambda d: -d["count"])


# ---------------------------------------------------------------------------------------------
# Views: the schema row, and the aggregates built while streaming


def type_family(t: pa.DataType) -> str:
    """A storage type as the suites name it: `timestamp[UTC]`, `string`, `bool`, `int`, `float`, `list<string>`…"""
    if pa.types.is_timestamp(t):
        return f"timestamp[{t.tz}]" if t.tz else "timestamp"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "string"
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_list_view(t):
        return f"list<{type_family(t.value_type)}>"
    if pa.types.is_map(t):
        return f"map<{type_family(t.key_type)},{type_family(t.item_type)}>"
    if pa.types.is_struct(t):
        return "struct"
    if pa.types.is_dictionary(t):
        return type_family(t.value_type)
    return str(t)


def schema_view(schema: pa.Schema) -> pd.DataFrame:
    """One row: each snapshot column and its storage type."""
    return pd.DataFrame([{f.name: type_family(f.type) for f in schema}])


def _labels_frame(batch: pa.RecordBatch) -> pd.DataFrame:
    """One row per root-cause label, with its row's timestamp."""
    causes = batch.column(batch.schema.get_field_index("root_cause"))
    parents = pc.list_parent_indices(causes)
    return pd.DataFrame({"root_cause": pc.list_flatten(causes).to_pandas(),
                         "timestamp": batch.column(batch.schema.get_field_index("timestamp")).take(parents).to_pandas()})


@dataclass
class LogProfile:
    """Aggregates of a log snapshot, accumulated batch by batch.

    Duplicates are exact: one 64-bit hash per distinct row is kept (8 MB per million rows); every
    other aggregate is a handful of counters.
    """

    examples: int = 5
    rows: int = 0
    labelled: int = 0
    anomalous: int = 0
    duplicate_rows: int = 0
    seen: list[np.ndarray] = field(default_factory=list)  # each batch's distinct row hashes, sorted
    duplicate_examples: list = field(default_factory=list)

    def add(self, batch: pa.RecordBatch) -> dict[str, pd.DataFrame]:
        """Count one batch; return its `rows` and `labels` tables for the row-level expectations."""
        frame = batch.drop_columns(["root_cause"]).to_pandas()
        self.rows += len(frame)
        anomaly = frame["anomaly"]
        self.labelled += int(anomaly.notna().sum())
        self.anomalous += int((anomaly == True).sum())  # noqa: E712 - nullable column
        hashes = pd.util.hash_pandas_object(frame[[c for c in DUPLICATE_KEY if c in frame.columns]], index=False).to_numpy()
        distinct, first = np.unique(hashes, return_index=True)
        duplicate = np.ones(len(hashes), dtype=bool)
        duplicate[first] = False  # repeats inside the batch
        earlier = np.zeros(len(distinct), dtype=bool)
        for seen in self.seen:  # batch-sized arrays, never one growing one: no reallocation, no heap creep
            earlier |= seen[np.minimum(np.searchsorted(seen, distinct), len(seen) - 1)] == distinct
        duplicate[first[earlier]] = True
        self.duplicate_rows += int(duplicate.sum())
        if not earlier.all():
            self.seen.append(distinct[~earlier])
        room = self.examples - len(self.duplicate_examples)
        if room > 0 and duplicate.any():
            picked = frame.loc[duplicate, ["timestamp", "message"]].head(room)
            self.duplicate_examples += [{"timestamp": str(t), "message": m} for t, m in zip(picked["timestamp"], picked["message"])]
        return {"rows": frame, "labels": _labels_frame(batch)}

    def views(self) -> dict[str, pd.DataFrame]:
        ratio = self.anomalous / self.labelled if self.labelled else 0.0
        summary = pd.DataFrame([{"rows": self.rows, "labelled_rows": self.labelled, "anomalous_rows": self.anomalous,
                                 "anomaly_ratio": ratio, "duplicate_rows": self.duplicate_rows,
                                 "duplicate_ratio": self.duplicate_rows / self.rows if self.rows else 0.0}])
        classes = pd.DataFrame([{"class": "normal", "rows": self.labelled - self.anomalous},
                                {"class": "anomalous", "rows": self.anomalous}])
        return {"summary": summary, "classes": classes}

    def examples_for(self, key: str) -> list:
        if key == "duplicates":
            return self.duplicate_examples
        if key == "anomaly_ratio":
            ratio = self.anomalous / self.labelled if self.labelled else 0.0
            return [f"{self.anomalous} anomalous of {self.labelled} labelled rows (ratio {ratio:.4f})"]
        return []


def parse_step(value: Any) -> float | None:
    """A Prometheus step (`300`, `"300s"`, `"15m"`, `"1h"`) in seconds, or None when missing or not a duration."""
    if value is None or value == "":
        return None
    try:
        return parse_duration(value)
    except InputError:
        return None


def metric_names(frame: pd.DataFrame) -> pd.Series:
    """The metric of each sample: the series id up to `{` (PromQL spelling), else `labels.__name__`."""
    names = frame["series"].astype("string").str.split("{", n=1).str[0]
    missing = names.isna() | (names == "")
    if missing.any() and "labels" in frame.columns:
        def name_of(labels: Any) -> Any:
            if isinstance(labels, str):
                try:
                    labels = json.loads(labels)
                except ValueError:
                    return None
            if isinstance(labels, list):  # an Arrow map arrives as [(key, value), ...]
                labels = dict(labels)
            return labels.get("__name__") if isinstance(labels, dict) else None
        names[missing] = frame.loc[missing, "labels"].map(name_of).astype("string")
    return names


@dataclass
class MetricProfile:
    """Per-series aggregates of a metric snapshot, and each series' last timestamp carried across batches."""

    step: float | None = None  # seconds between samples; None: each series' smallest step
    last: dict = field(default_factory=dict)
    series: pd.DataFrame | None = None
    rows: int = 0

    def add(self, batch: pa.RecordBatch) -> dict[str, pd.DataFrame]:
        """Count one batch; return its `rows` with `metric` and `previous_timestamp` (the series' previous
        sample, carried across batches) for the row-level expectations."""
        frame = batch.to_pandas()
        frame["metric"] = metric_names(frame)
        grouped = frame.groupby("series", sort=False, dropna=False)
        previous = grouped["timestamp"].shift()
        first = grouped.cumcount() == 0
        carried = frame.loc[first, "series"].map(self.last)
        previous.loc[first] = pd.to_datetime(carried, utc=True) if len(carried) else previous.loc[first]
        frame["previous_timestamp"] = previous
        step = (frame["timestamp"] - previous).dt.total_seconds()
        frame["_step"] = step.where(step > 0)
        frame["_nan"] = frame["value"].isna()
        stats = frame.groupby("series", sort=False).agg(metric=("metric", "first"), points=("value", "size"), nans=("_nan", "sum"),
                                                        first=("timestamp", "min"), last=("timestamp", "max"), min_step=("_step", "min"))
        self.series = stats if self.series is None else (
            pd.concat([self.series, stats]).groupby(level=0, sort=False).agg(
                {"metric": "first", "points": "sum", "nans": "sum", "first": "min", "last": "max", "min_step": "min"}))
        self.last.update(frame.groupby("series", sort=False)["timestamp"].last().dropna().to_dict())
        self.rows += len(frame)
        return {"rows": frame.drop(columns=["_step", "_nan"])}

    def views(self) -> dict[str, pd.DataFrame]:
        s = self.series.copy() if self.series is not None else pd.DataFrame(columns=["metric", "points", "nans", "first", "last", "min_step"])
        step = pd.Series(self.step, index=s.index, dtype="float64") if self.step else s["min_step"].astype("float64")
        span = (s["last"] - s["first"]).dt.total_seconds()
        expected = (span / step).fillna(0).round().astype("int64") + 1
        s["expected_points"] = expected.where(step.notna(), s["points"])
        s["gap_ratio"] = ((s["expected_points"] - s["points"]).clip(lower=0) / s["expected_points"]).astype("float64")
        s["nan_ratio"] = (s["nans"] / s["points"]).astype("float64")
        s = s.reset_index(names="series")
        return {"series": s[["series", "metric", "points", "expected_points", "nan_ratio", "gap_ratio", "first", "last"]]}

    def examples_for(self, key: str) -> list:
        return []


# ---------------------------------------------------------------------------------------------
# The run


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
    return {"max_nan_ratio": v.max_nan_ratio, "max_gap_ratio": v.max_gap_ratio, "min_history_points": v.min_history_points}, skipped


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


def report_dir(snapshot: Snapshot | str | StoragePath) -> StoragePath:
    """Where a snapshot's validation report lives: `<snapshot>.validation/` beside the snapshot folder (or prefix)."""
    where = snapshot.path if isinstance(snapshot, Snapshot) else storage.path(snapshot)
    return where.parent / f"{where.name}.{REPORT_DIR}"


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


# ---------------------------------------------------------------------------------------------
# The report a person reads: each measured value against its bound, and the failed rows

# What a whole-snapshot ratio is a share of, so the page says `0 anomalous rows of 1,516 labelled rows`.
RATIO_PARTS = {"anomaly_ratio": ("anomalous_rows", "labelled_rows"), "duplicate_ratio": ("duplicate_rows", "rows")}


def _interval(kwargs: dict) -> str:
    """The bound of a `…_between` expectation: `[a, b]`, `>= a` or `<= b` (`)` for a strict maximum)."""
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    if low is not None and high is not None:
        return f"[{fmt(low)}, {fmt(high)}{')' if kwargs.get('strict_max') else ']'}"
    if low is not None:
        return f"{'>' if kwargs.get('strict_min') else '>='} {fmt(low)}"
    return f"{'<' if kwargs.get('strict_max') else '<='} {fmt(high)}" if high is not None else "any"


def _rule(kind: str, kwargs: dict) -> str:
    """What one row must satisfy, in words: `length in [1, 20000]`, `matches /\\S/`, `one of 12 labels`…"""
    if kind == "expect_column_values_to_not_be_null":
        return "is present"
    if kind == "expect_column_values_to_match_regex":
        return f"matches /{kwargs.get('regex')}/"
    if kind == "expect_column_value_lengths_to_be_between":
        return f"length in {_interval(kwargs)}"
    if kind == "expect_column_values_to_be_between":
        return f"in {_interval(kwargs)}"
    if kind == "expect_column_values_to_be_in_set":
        values = list(kwargs.get("value_set") or [])
        return f"one of {', '.join(map(str, values))}" if len(values) <= 4 else f"one of the {len(values)} allowed values"
    if kind == "expect_column_pair_values_a_to_be_greater_than_b":
        return f"{kwargs.get('column_A')} {'>=' if kwargs.get('or_equal') else '>'} {kwargs.get('column_B')}"
    return kind.removeprefix("expect_").replace("_", " ")


def _worst(values: list[float], low: float | None, high: float | None) -> int:
    """Index of the value farthest outside [low, high] (or nearest its edge when all are inside)."""
    def outside(v: float) -> float:
        return max((low - v) if low is not None else -math.inf, (v - high) if high is not None else -math.inf)
    return max(range(len(values)), key=lambda i: outside(values[i]))


def measurement(result: dict, report: dict) -> dict:
    """One expectation as a person reads it: what was measured, against which bound, and the verdict.

    Returns {check, description, view, measured, bound, success, value, low, high}; `value`, `low` and
    `high` are set for a single measured number (a ratio of the whole snapshot), which gets a gauge.
    Row-level checks (`rows`, `labels`) measure how many rows break the rule; aggregate checks
    (`summary`, `classes`, `series`) measure the aggregate itself (the anomaly ratio, rows per class,
    each series' NaN ratio), read from the report's `aggregates`.
    """
    cfg = result["expectation_config"]
    kind, kwargs, meta = cfg["type"], cfg.get("kwargs") or {}, cfg.get("meta") or {}
    r, view = result.get("result") or {}, meta.get("view")
    column = kwargs.get("column") or kwargs.get("column_A")
    out = {"check": meta.get("check"), "description": cfg.get("description"), "view": view, "success": bool(result["success"]),
           "measured": "", "bound": "", "value": None, "low": None, "high": None}
    info = result.get("exception_info") or {}
    if info.get("raised_exception"):
        return {**out, "measured": f"error: {info.get('exception_message')}", "bound": _rule(kind, kwargs)}
    if kind == "expect_table_columns_to_match_set":
        observed = r.get("observed_value") or list((report.get("schema") or {}))
        return {**out, "measured": f"{len(observed)} columns: {', '.join(map(str, observed))}",
                "bound": f"{'exactly' if kwargs.get('exact_match') else 'includes'} {', '.join(kwargs.get('column_set') or [])}"}
    if view == "schema":
        schema = report.get("schema")
        seen = schema.get(column, "absent") if schema is not None else ", ".join(map(str, r.get("partial_unexpected_list") or []))
        return {**out, "measured": f"{column}: {seen or ('as required' if out['success'] else 'unknown')}",
                "bound": " | ".join(map(str, kwargs.get("value_set") or []))}
    table = (report.get("aggregates") or {}).get(view)
    if view in ("rows", "labels") or table is None:
        n, bad = int(r.get("element_count") or 0), int(r.get("unexpected_count") or 0)
        unit = "labels" if view == "labels" else "rows"
        mostly = kwargs.get("mostly") or 1.0
        allowed = "none allowed" if mostly >= 1.0 else f"up to {100 * (1 - mostly):.2g}% allowed"
        share = f" ({100.0 * bad / n:.2f}%)" if n else ""
        return {**out, "measured": f"{fmt(bad)} of {fmt(n)} {unit} break it{share}",
                "bound": f"{column} {_rule(kind, kwargs)}; {allowed}"}
    # An aggregate: the measured value(s) themselves against the bound.
    low, high = number(kwargs.get("min_value")), number(kwargs.get("max_value"))
    values = [row.get(column) for row in table]
    key = meta.get("index")
    bound = f"{column} {_interval(kwargs)}"
    if not key:  # one value for the whole snapshot (`summary`): the anomaly ratio, the duplicate ratio
        value = number(values[0]) if values else None
        row = table[0] if table else {}
        part, whole = RATIO_PARTS.get(column or "", ("", ""))  # "" is no row's key: no context
        context = (f"{fmt(row[part])} {part.replace('_', ' ')} of {fmt(row[whole])} {whole.replace('_', ' ')}"
                   if part in row and whole in row else "")
        return {**out, "measured": f"{column} {fmt(value)}" + (f" ({context})" if context else ""), "bound": bound,
                "value": value, "low": low, "high": high}
    numbers = [number(v) for v in values]
    keys = [row.get(key) for row in table]
    if len(table) <= 4:
        measured = ", ".join(f"{k}: {fmt(v)}" for k, v in zip(keys, values))
    else:
        finite = [i for i, v in enumerate(numbers) if v is not None]
        worst = finite[_worst([v for v in numbers if v is not None], low, high)] if finite else 0
        measured = (f"{fmt(int(r.get('unexpected_count') or 0))} of {fmt(int(r.get('element_count') or len(table)))} {key} outside; "
                    f"worst {keys[worst]}: {fmt(values[worst])}")
    return {**out, "measured": measured, "bound": bound}


def _examples_table(examples: list) -> str:
    """Failed rows as a table (one column per field), their texts as `_shown` cut them."""
    if not examples:
        return "<p class='muted'>no examples kept</p>"

    def cell(value: Any) -> str:
        return esc(value if isinstance(value, str) else json.dumps(value, default=str))

    if all(isinstance(e, dict) for e in examples):
        columns = list(dict.fromkeys(k for e in examples for k in e))
        head = "".join(f"<th>{esc(c)}</th>" for c in columns)
        rows = "".join("<tr>" + "".join(f"<td class='mono'>{cell(e.get(c, ''))}</td>" for c in columns) + "</tr>" for e in examples)
        return f"<table class='examples'><tr>{head}</tr>{rows}</table>"
    return "<ul>" + "".join(f"<li class='mono'>{cell(e)}</li>" for e in examples) + "</ul>"


def render_html(report: dict, show_chars: int) -> str:
    """The validation report as one self-contained HTML page (inline CSS, no scripts, no CDN):
    the verdict, a table of every expectation (measured value, bound, verdict; a gauge for a
    single ratio), the failed rows with their examples, and what was not evaluated. Measured values
    and aggregate cells (series ids hold data) are cut to `show_chars`."""
    results = (report.get("great_expectations") or {}).get("results") or []
    rows = []
    for m in map(lambda d: measurement(d, report), results):
        verdict_ = PASSED if m["success"] else (WARN if report.get("warn_only") else FAILED)
        picture = gauge(m["value"], m["low"], m["high"]) if m["value"] is not None else ""
        rows.append(f"<tr class='check-{'ok' if m['success'] else 'bad'}'><td><b>{esc(m['check'])}</b><br>"
                    f"<span class='small muted'>{esc(m['description'])}</span></td><td>{esc(truncate(m['measured'], show_chars))}<br>{picture}</td>"
                    f"<td>{esc(m['bound'])}</td><td>{badge(verdict_)}</td></tr>")
    failed = []
    for f in report.get("failed", []):
        count = f"{fmt(f['rows'])} of {fmt(f['of'])} rows" if f.get("rows") is not None else "error"
        failed.append(f"<h3>{esc(f['check'])} <span class='small muted'>{esc(f['expectation'])}"
                      f"{' on ' + esc(f['column']) if f.get('column') else ''}</span></h3>"
                      f"<p>{esc(f.get('description'))} <b>{esc(count)}</b></p>{_examples_table(f.get('examples') or [])}")
    skipped = "".join(f"<li><b>{esc(s['check'])}</b>: {esc(s['reason'])}</li>" for s in report.get("not_evaluated", []))
    window = report.get("window") or {}
    s = report.get("statistics") or {}
    aggregates = "".join(
        f"<h3>{esc(view)}</h3><table><tr>{''.join(f'<th>{esc(k)}</th>' for k in table_[0])}</tr>"
        + "".join("<tr>" + "".join(f"<td class='num'>{esc(truncate(fmt(v), show_chars))}</td>" for v in row.values()) + "</tr>"
                  for row in table_[:20])
        + "</table>" + (f"<p class='small muted'>first 20 of {len(table_)} rows</p>" if len(table_) > 20 else "")
        for view, table_ in (report.get("aggregates") or {}).items() if table_)
    docs = report.get("data_docs_page") or report.get("data_docs")
    body = (f"<h1>Validation: {esc(report.get('suite'))} suite {badge(report.get('status'))}</h1>"
            f"<p>{fmt(s.get('successful'))} of {fmt(s.get('evaluated'))} expectations met on {fmt(report.get('rows'))} rows "
            f"of <span class='mono'>{esc(report.get('snapshot'))}</span><br>"
            f"window {esc(window.get('start'))} – {esc(window.get('end'))}; content hash <span class='mono'>{esc(report.get('content_hash'))}</span>; "
            f"validated {esc(report.get('validated_at'))}</p>"
            "<h2>Expectations: measured against their bounds</h2>"
            f"<table class='expectations'><tr><th>check</th><th>measured</th><th>bound</th><th>verdict</th></tr>{''.join(rows)}</table>"
            + (f"<h2>Failed: the rows behind each failure</h2>{''.join(failed)}" if failed else "")
            + (f"<h2>Not evaluated</h2><ul>{skipped}</ul>" if skipped else "")
            + (f"<h2>Aggregates</h2>{aggregates}" if aggregates else "")
            + (f"<p class='small muted'>Great Expectations' own result: <a href='{esc(docs)}'>Data Docs</a> and "
               f"<span class='mono'>{RESULT_FILE}</span> in this folder.</p>" if docs else ""))
    return page(f"validation {report.get('suite')} {report.get('status')}", body)


# ---------------------------------------------------------------------------------------------
# Reading the verdict back: training, MLflow and the nightly flow


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


def log_to_active_run(snapshot: Snapshot) -> str:
    """Inside an MLflow run: log `validation/` (result.json, report.html, Data Docs) as artifacts and tag
    `validation.status`; return the status."""
    import mlflow

    report = read_report(snapshot)
    status = report["status"] if report else NOT_RUN
    if report:
        with storage.local_copy(report_dir(snapshot)) as folder:
            mlflow.log_artifacts(str(folder), REPORT_DIR)
        mlflow.log_metrics({"validation_failed_expectations": len(report["failed"]),
                            "validation_rows": report["rows"]})
    mlflow.set_tag("validation.status", status)
    return status


def record_stopped_run(task: str, snapshot: Snapshot | str | Path, settings: Settings) -> str:
    """A FAILED MLflow run for a model whose training the gate stopped, so the night's reason shows in the UI."""
    import mlflow

    snapshot = snapshot if isinstance(snapshot, Snapshot) else load_snapshot(snapshot)
    report = read_report(snapshot) or {}
    use_store(settings)
    run = mlflow.start_run(run_name=f"{task} {(snapshot.manifest.get('window') or {}).get('end') or ''} stopped by validation".strip())
    try:
        mlflow.set_tags({"task": task, "data.snapshot_hash": snapshot.content_hash, "data.window": window_tag(snapshot.window),
                         "data.snapshot": str(snapshot.path), "stopped_by": "validation",
                         "validation.failed": brief(report)[:5000] if report else "no report"})
        log_to_active_run(snapshot)
    finally:
        mlflow.end_run(status="FAILED")
    return run.info.run_id
