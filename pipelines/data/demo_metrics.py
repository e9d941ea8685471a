"""The embedded demo metric history: five weeks of a small GPU platform, as OpenMetrics text.

Fourteen series, the four kinds the nightly flow forecasts: GPU utilisation and GPU memory of four
GPUs on two nodes (training jobs start more on weekday working hours and run for hours, with the
odd Xid crash), the p99 request latency of three services (daily and weekly traffic, a slow trend,
incidents) and the quota use ratio of three groups (steady growth, daily writes, clean-ups). One
node's exporter is down for two hours, and a few latency samples are NaN (no traffic to divide by).

The same file is the embedded default source (`file://…/metrics.om`) and what tests and the demo
load into a real Prometheus with `promtool tsdb create-blocks-from openmetrics`. Everything is
deterministic per seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from pipelines.data.demo_logs import DEMO_DAYS, DEMO_START
from pipelines.sources.prometheus import series_id

METRICS_END = DEMO_START + timedelta(days=DEMO_DAYS)  # the log corpus and the metrics end together
METRICS_DAYS = 35
METRICS_INTERVAL = 300  # seconds between samples
METRICS_FILE = "metrics.om"


@dataclass
class DemoSeries:
    name: str
    help: str
    labels: dict[str, str]
    timestamps: np.ndarray  # int64 seconds since the epoch
    values: np.ndarray  # float64, NaN for a NaN sample; absent samples are simply not there


def _calendar(ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hour of day (float) and day of week (0 = Monday) of epoch seconds, in UTC."""
    hour = (ts % 86400) / 3600.0
    dow = ((ts // 86400) + 3) % 7  # 1970-01-01 was a Thursday
    return hour, dow


def _traffic(hour: np.ndarray, dow: np.ndarray) -> np.ndarray:
    """Request traffic shape in 0..1: a daytime peak around 14:00 UTC, quieter at weekends."""
    daily = 0.5 + 0.5 * np.cos((hour - 14.0) / 24.0 * 2 * math.pi)
    return daily * np.where(dow >= 5, 0.45, 1.0)


def _gpu_jobs(rng: np.random.Generator, hour: np.ndarray, dow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A GPU's job timeline: (busy flag, job memory in MiB while busy), one 5-minute step at a time."""
    n = len(hour)
    busy = np.zeros(n, dtype=bool)
    memory = np.zeros(n)
    workday = (dow < 5) & (hour >= 7) & (hour < 19)
    start_p = np.where(workday, 0.05, np.where(dow < 5, 0.012, 0.006))
    state, left, job_mem = False, 0, 0.0
    for i in range(n):
        if state:
            left -= 1
            if left <= 0:
                state = False
        elif rng.random() < start_p[i]:
            state, left = True, int(rng.uniform(2, 12) * 3600 / METRICS_INTERVAL)
            job_mem = rng.uniform(28_000, 76_000)
        busy[i] = state
        memory[i] = job_mem if state else 0.0
    return busy, memory


def generate_metrics(start: datetime, end: datetime, seed: int = 7) -> list[DemoSeries]:
    """All demo series sampled every 5 minutes in [start, end)."""
    rng = np.random.default_rng(seed)
    first = int(start.timestamp()) // METRICS_INTERVAL * METRICS_INTERVAL
    ts = np.arange(first, int(end.timestamp()), METRICS_INTERVAL, dtype=np.int64)
    hour, dow = _calendar(ts)
    days = (ts - ts[0]) / 86400.0
    out: list[DemoSeries] = []

    for node in ("gpu-node-01", "gpu-node-02"):
        for gpu in ("0", "1"):
            labels = {"Hostname": node, "gpu": gpu, "job": "dcgm-exporter", "instance": f"{node}:9400"}
            busy, job_mem = _gpu_jobs(rng, hour, dow)
            util = np.where(busy, rng.normal(88, 5, len(ts)), rng.normal(2, 1.5, len(ts)))
            # An Xid crash now and then: the job dies, utilisation drops, memory is released.
            for _ in range(2):
                at = rng.integers(0, len(ts) - 30)
                util[at:at + 24], busy[at:at + 24] = 0.0, False
            memory = np.where(busy, job_mem, 380.0) + rng.normal(0, 40, len(ts))
            out.append(DemoSeries("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", labels, ts, np.clip(util, 0, 100)))
            out.append(DemoSeries("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).", labels, ts, np.clip(memory, 0, 81_559)))

    traffic = _traffic(hour, dow)
    for service, base in (("checkout", 0.12), ("search", 0.25), ("inference", 0.6)):
        latency = base * (1 + 0.8 * traffic) * (1 + 0.004 * days) * np.exp(rng.normal(0, 0.06, len(ts)))
        for _ in range(int(rng.integers(3, 6))):  # incidents: 30-120 minutes of 3-6x latency
            at, length = rng.integers(0, len(ts) - 30), int(rng.integers(6, 25))
            latency[at:at + length] *= rng.uniform(3, 6)
        latency[rng.choice(len(ts), size=3, replace=False)] = np.nan
        out.append(DemoSeries("request_latency_p99_seconds", "99th percentile request latency.", {"service": service}, ts, latency))

    for group, level in (("team-vision", 0.42), ("team-nlp", 0.35), ("team-search", 0.55)):
        growth = level + 0.011 * days + 0.015 * np.sin((hour - 10) / 24 * 2 * math.pi) * (dow < 5)
        for day in rng.uniform(2, max(days[-1], 3), size=3):
            growth -= np.where(days >= day + 0.1, rng.uniform(0.06, 0.12), 0.0)  # a clean-up frees space
        ratio = np.clip(growth + rng.normal(0, 0.003, len(ts)), 0, 1)
        out.append(DemoSeries("quota_group_use_ratio", "Share of the group's storage quota in use.", {"group": group}, ts, ratio))

    # gpu-node-02's exporter is down for two hours, two days before the end.
    down = (ts >= ts[-1] - 2 * 86400) & (ts < ts[-1] - 2 * 86400 + 7200)
    for s in out:
        if s.labels.get("Hostname") == "gpu-node-02":
            s.timestamps, s.values = s.timestamps[~down], s.values[~down]
    return out


def write_openmetrics(series: list[DemoSeries], path: Path) -> Path:
    """OpenMetrics text (gauges, one family after another, samples in time order), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    families: dict[str, list[DemoSeries]] = {}
    for s in series:
        families.setdefault(s.name, []).append(s)
    with tmp.open("w") as fh:
        for name, members in families.items():
            fh.write(f"# HELP {name} {members[0].help}\n# TYPE {name} gauge\n")
            for s in members:
                prefix = series_id({**s.labels, "__name__": name})
                fh.write("".join(f"{prefix} {'NaN' if v != v else repr(round(float(v), 6))} {t}\n"
                                 for t, v in zip(s.timestamps.tolist(), s.values.tolist())))
        fh.write("# EOF\n")
    tmp.replace(path)
    return path


def write_demo_metrics(out_dir: Path, end: datetime = METRICS_END, days: int = METRICS_DAYS, seed: int = 7) -> Path:
    """Write `out_dir/metrics.om`: `days` days of demo metrics ending at `end`; return its path."""
    end = end.astimezone(timezone.utc)
    return write_openmetrics(generate_metrics(end - timedelta(days=days), end, seed), Path(out_dir) / METRICS_FILE)
