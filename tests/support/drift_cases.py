"""Snapshots with known faults, made from a clean one: flipped labels, and a log format change; and metric snapshots
with a daily cycle, scaled or shifted to drift."""

from __future__ import annotations

import json
import math
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow.parquet as pq

from pipelines.data.snapshots import DATA_FILE, Snapshot, write_snapshot


def rewrite(snapshot: Snapshot, out: Path, change: Callable[[int, dict], dict], tag: str) -> Snapshot:
    """A new snapshot with every row of `snapshot` passed through `change`; same window."""
    rows = [change(i, row) for i, row in enumerate(pq.read_table(snapshot.path / DATA_FILE).to_pylist())]
    m = snapshot.manifest
    window = [datetime.fromisoformat(m["window"][k].replace("Z", "+00:00")) for k in ("start", "end")]
    return write_snapshot(out, iter(rows), dataset=m["dataset"], source=f"{m['source']}#{tag}", query=m["query"],
                          start=window[0], end=window[1])


def flip_labels(snapshot: Snapshot, out: Path, fraction: float = 0.3, seed: int = 3) -> Snapshot:
    """`fraction` of the rows get the opposite anomaly label (a labelling fault)."""
    rng = random.Random(seed)

    def change(i: int, row: dict) -> dict:
        if row["anomaly"] is not None and rng.random() < fraction:
            row["anomaly"] = not row["anomaly"]
        return row

    return rewrite(snapshot, out, change, f"flipped-{fraction}")


def json_envelope(snapshot: Snapshot, out: Path) -> Snapshot:
    """Every message wrapped in a JSON logging envelope, as after a switch to structured logging."""
    def change(i: int, row: dict) -> dict:
        row["message"] = json.dumps({"level": (row["level"] or "info").upper(), "logger": f"com.acme.{row['service']}.Handler",
                                     "thread": f"worker-{i % 17}", "msg": row["message"]})
        return row

    return rewrite(snapshot, out, change, "json-envelope")


def metric_snapshot(path, days: int, *, scale: float = 1.0, phase_hours: float = 0.0, seed: int = 0):
    """Two series with a daily cycle, every 15 minutes."""
    from pipelines.sources.prometheus import METRIC_SCHEMA

    rng = np.random.default_rng(seed)
    start = datetime(2026, 11, 1, tzinfo=timezone.utc)
    rows = []
    for series, base in (("latency{service=\"a\"}", 1.0), ("latency{service=\"b\"}", 2.0)):
        for i in range(days * 96):
            ts = start + timedelta(minutes=15 * i)
            daily = math.sin(2 * math.pi * ((ts.hour + ts.minute / 60 + phase_hours) / 24))
            rows.append({"timestamp": ts, "series": series, "labels": [("service", series[-3])],
                         "value": scale * (base + 0.5 * daily + rng.normal(0, 0.05))})
    return write_snapshot(path, iter(rows), dataset="metrics", source="test", query=None, start=start,
                          end=start + timedelta(days=days), schema=METRIC_SCHEMA)
