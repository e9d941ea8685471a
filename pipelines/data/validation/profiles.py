"""The tables the suites' views read: the schema row, and the aggregates of a log or metric snapshot built batch by
batch while streaming."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.data.records import parse_duration
from pipelines.errors import InputError

# Columns that identify a log row: a row equal to an earlier one on all of them is a duplicate.
DUPLICATE_KEY = ("timestamp", "message", "service", "level", "host", "anomaly", "job_id")


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

