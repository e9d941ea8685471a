"""Great Expectations: the suites of `expectations/gx`, running one view's expectations on one table, and one
expectation's results merged over every batch of its view."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import pandas as pd

from pipelines.config import ConfigError
from pipelines.pages import truncate
from pipelines.resources import project_dir

GX_PROJECT = project_dir("expectations")
SUITES = ("logs", "metrics")
# Where the views' failing rows are located in examples.
INDEX_COLUMNS = {"logs": {"rows": ["timestamp"], "labels": ["timestamp"], "classes": ["class"]},
                 "metrics": {"rows": ["series"], "series": ["series"]}}


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

