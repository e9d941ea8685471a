"""Validation: `nightshift validate --suite logs` wall time and peak RSS on a 1M-row log snapshot, against
the same on a 100k-row one from the same generator. Validation streams the snapshot in batches, so
peak memory must stay flat (ratio near 1) while time grows with the rows (ratio at most ~10)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
START = datetime(2026, 11, 16, tzinfo=timezone.utc)
DAYS = 5


def _rows(n: int, seed: int = 3) -> Iterator[dict]:
    """Demo-shaped log rows in time order: normal traffic, ~3% anomalies, failing jobs with root causes."""
    from pipelines.data.demo_logs import ANOMALY_SEEN, FAILURES, NORMAL

    r = random.Random(seed)
    span_ms = DAYS * 86_400_000
    for i in range(n):
        ts = START + timedelta(milliseconds=i * span_ms // n + r.randrange(span_ms // n or 1))
        roll = r.random()
        if roll < 0.02:
            t = r.choice(ANOMALY_SEEN)
            row = {"message": t.render(r), "service": t.service, "level": t.level, "anomaly": True, "root_cause": [], "job_id": None}
        elif roll < 0.03:
            causes, seen, _ = r.choice(FAILURES)
            row = {"message": r.choice(seen)(r), "service": "pytorch", "level": "error", "anomaly": True,
                   "root_cause": list(causes), "job_id": f"job-{r.getrandbits(48):012x}"}
        else:
            t = r.choice(NORMAL)
            row = {"message": t.render(r), "service": t.service, "level": t.level, "anomaly": False, "root_cause": [], "job_id": None}
        yield {"timestamp": ts, "host": f"gpu-node-{r.randint(1, 48):02d}", **row}


def _snapshot(path: Path, n: int) -> Path:
    from pipelines.data.snapshots import write_snapshot

    return write_snapshot(path, _rows(n), dataset="logs", source="bench://validation", query=None,
                          start=START, end=START + timedelta(days=DAYS)).path


VALIDATE = """
import json, resource, sys, time
import great_expectations  # noqa: F401 - import time (~4 s) is not validation time
from pipelines.config import load_settings
from pipelines.data.validation import validate_snapshot
started = time.perf_counter()
report = validate_snapshot(sys.argv[1], "logs", load_settings())
print(json.dumps({"seconds": time.perf_counter() - started, "status": report["status"], "rows": report["rows"],
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _validate(snapshot: Path, env: dict) -> dict:
    """One `validate_snapshot` in a fresh process: its time (imports excluded) and its peak RSS."""
    out = subprocess.run([sys.executable, "-c", VALIDATE, str(snapshot)], env=env, cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"validation of {snapshot} failed: {out.stderr[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["status"] != "passed":
        raise RuntimeError(f"benchmark snapshot {snapshot} did not pass validation: {result}")
    return result


def run(quick: bool = False) -> list[dict]:
    small_n, large_n = (20_000, 200_000) if quick else (100_000, 1_000_000)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = {**os.environ, "NIGHTSHIFT_HOME": str(work / "home"), "NIGHTSHIFT_LOG_FORMAT": "json", "NIGHTSHIFT_LOG_LEVEL": "WARNING",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        built = time.perf_counter()
        small, large = _snapshot(work / "small", small_n), _snapshot(work / "large", large_n)
        print(f"  snapshots of {small_n} and {large_n} rows written in {time.perf_counter() - built:.0f}s", flush=True)
        sm, lg = _validate(small, env), _validate(large, env)
    label = f"{large_n // 1000}k" if large_n < 1_000_000 else f"{large_n // 1_000_000}M"
    base = f"{small_n // 1000}k rows"
    return [
        {"name": f"validate logs, {label} rows: wall time", "value": lg["seconds"], "unit": "s",
         "baseline": base, "baseline_value": sm["seconds"], "ratio": lg["seconds"] / sm["seconds"]},
        {"name": f"validate logs, {label} rows: throughput", "value": lg["rows"] / lg["seconds"], "unit": "rows/s",
         "baseline": base, "baseline_value": sm["rows"] / sm["seconds"], "ratio": (lg["rows"] / lg["seconds"]) / (sm["rows"] / sm["seconds"])},
        {"name": f"validate logs, {label} rows: peak RSS", "value": lg["peak_rss_mib"], "unit": "MiB",
         "baseline": base, "baseline_value": sm["peak_rss_mib"], "ratio": lg["peak_rss_mib"] / sm["peak_rss_mib"]},
    ]


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(row)
