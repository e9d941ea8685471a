"""Snapshots with known faults, made from a clean one: flipped labels, and a log format change."""

from __future__ import annotations

import json
import random
from datetime import datetime
from pathlib import Path
from typing import Callable

import pyarrow.parquet as pq

from pipelines.snapshot import DATA_FILE, Snapshot, write_snapshot


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
