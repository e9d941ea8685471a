"""Storage: writing and reading a 1M-row log snapshot on the object store (a real SeaweedFS on loopback,
`tests.support.object_store`) against the same on the local disk, in the same run. Writing includes what every
snapshot pays (building the rows, Arrow conversion, the content hash); on the object store it also uploads under a
temporary prefix, copies the data beside the manifest and commits the manifest last. Reading is `Snapshot.read()`.
After a warm-up, each side runs twice, interleaved, and the faster run of each counts."""

from __future__ import annotations

import os
import random
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

START = datetime(2026, 11, 16, tzinfo=timezone.utc)
MESSAGES = ["GET /api/v1/items 200 in {n} ms", "worker {n} heartbeat ok", "cache miss for key user:{n}",
            "connection reset by peer after {n} bytes", "disk usage at {n}% on /var/lib"]


def _rows(n: int, seed: int = 7) -> Iterator[dict]:
    r = random.Random(seed)
    for i in range(n):
        yield {"timestamp": START + timedelta(milliseconds=i * 400), "message": r.choice(MESSAGES).format(n=r.randint(1, 99_999)),
               "service": r.choice(("api", "worker", "db")), "level": "info", "host": f"node-{r.randint(1, 48):02d}",
               "anomaly": r.random() < 0.03, "root_cause": [], "job_id": None}


def _write_read(where, n: int) -> tuple[float, float, int]:
    from pipelines.data.snapshots import load_snapshot, write_snapshot

    started = time.perf_counter()
    write_snapshot(where, _rows(n), dataset="logs", source="bench://storage", query=None, start=START, end=START + timedelta(days=5))
    wrote = time.perf_counter() - started
    started = time.perf_counter()
    rows = len(load_snapshot(where).read())
    return wrote, time.perf_counter() - started, rows


def run(quick: bool = False) -> list[dict]:
    from tests.support.object_store import ObjectStore

    n = 100_000 if quick else 1_000_000
    label = f"{n // 1000}k" if n < 1_000_000 else f"{n // 1_000_000}M"
    with tempfile.TemporaryDirectory() as tmp, ObjectStore() as store:
        os.environ.update(store.env())
        _write_read(Path(tmp) / "warm" / "local", 10_000)  # imports, first connections: paid before any timing
        _write_read(store.uri("warm") + "/s3", 10_000)
        runs = []
        for attempt in range(2):  # each side twice, interleaved; the faster of each counts (the machine is shared)
            runs.append(("local", _write_read(Path(tmp) / "logs" / str(attempt), n)))
            runs.append(("s3", _write_read(store.uri("bench") + f"/logs/{attempt}", n)))
        local_w, local_r, local_rows = (min(r[i] for side, r in runs if side == "local") for i in range(3))
        s3_w, s3_r, s3_rows = (min(r[i] for side, r in runs if side == "s3") for i in range(3))
    if not local_rows == s3_rows == n:
        raise RuntimeError(f"read back {local_rows} rows locally and {s3_rows} from the object store, wrote {n}")
    return [
        {"name": f"snapshot write, {label} log rows: SeaweedFS S3", "value": s3_w, "unit": "s",
         "baseline": "local disk", "baseline_value": local_w, "ratio": s3_w / local_w},
        {"name": f"snapshot read, {label} log rows: SeaweedFS S3", "value": s3_r, "unit": "s",
         "baseline": "local disk", "baseline_value": local_r, "ratio": s3_r / local_r},
    ]


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    for row in run(quick="--quick" in sys.argv):
        print(row)
