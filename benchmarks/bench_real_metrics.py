"""Real data: the served forecaster and each contender on the public NAB series, newest 3 days held back.

Data: `../shared/data/nab-public/metrics.om.gz` (its README.md and SERIES.tsv). Each series'
window is its newest `DAYS` whole days (the partial last day dropped), moved by whole days so that
all windows end together: the hour of day is kept (the day of week is not). Series with more than
`MAX_GAP` of their grid points missing at the step, in the training days or in the whole window,
are left out and named in the rows (the hourly and irregular ones at a 15m step).

Recipe: a metric snapshot of the first `DAYS - HELD_DAYS` days is ingested through the OpenMetrics
file source like any night's, `train_metric_forecast` trains and registers it with the default
settings (15m step, 24h lookback, 2h horizon) in a throwaway MLflow store, and
`mlflow.pyfunc.load_model` loads the registered version back. Scored: every window whose targets
lie in the newest `HELD_DAYS` days (its lookback may reach back into the training days, as
serving's would), for the served family, every contender and both baselines, with
`pipelines.tasks.metric_forecast.evaluate_windows`: MAE in the robust scale of the training days, MASE
against their in-sample daily seasonal naive, and p10..p90 coverage (the baselines' bands come from
their residuals on the training days). Seasonal naive is the better of a day and a week earlier.
"""

from __future__ import annotations

import gzip
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DATA = ROOT.parent / "shared" / "data" / "nab-public" / "metrics.om.gz"
DAYS, HELD_DAYS = 13, 3
MAX_GAP = 0.7  # the traffic series miss 3.5 days of 13 (60% of their training days at 15m), still worth scoring
END = datetime(2026, 12, 1, tzinfo=timezone.utc)  # where the moved windows end
SECTION = "Real data"


def aligned_history(source: Path, out: Path, step: float, settings) -> tuple[Path, list[str], list[str]]:
    """Write the moved windows, read on the step grid with Prometheus's semantics, as one OpenMetrics
    file; return it, the series kept and those left out (with their share of gaps)."""
    from pipelines.sources.prometheus import open_metric_source, series_id

    plain = out / "nab.om"
    with gzip.open(source, "rt") as fh, plain.open("w") as dst:
        shutil.copyfileobj(fh, dst)
    day = 86400.0
    points, train_points = int(DAYS * day / step), int((DAYS - HELD_DAYS) * day / step)
    everything = open_metric_source(f"file://{plain}", settings).query_range("nab_value", datetime(2026, 1, 1, tzinfo=timezone.utc),
                                                                              datetime(2027, 1, 1, tzinfo=timezone.utc), step)
    kept, dropped, lines = [], [], []
    for s in sorted(everything, key=lambda s: s.labels["file"]):
        last_midnight = (s.timestamps[-1] // day) * day
        inside = (s.timestamps >= last_midnight - DAYS * day) & (s.timestamps < last_midnight) & np.isfinite(s.values)
        moved = s.timestamps[inside] + (END.timestamp() - last_midnight)  # whole days: the series' last midnight lands on END
        slot = np.rint((moved - (END.timestamp() - DAYS * day)) / step).astype(int)
        gaps = (1 - (slot < train_points).sum() / train_points, 1 - len(slot) / points)
        if max(gaps) > MAX_GAP:
            dropped.append(f"{s.labels['file']} ({max(gaps):.0%} gaps)")
            continue
        kept.append(s.labels["file"])
        prefix = series_id(s.labels)
        lines += [f"{prefix} {v!r} {int(t)}\n" for t, v in zip(moved.tolist(), s.values[inside].tolist())]
    path = out / "nab-aligned.om"
    path.write_text("# TYPE nab_value gauge\n" + "".join(lines) + "# EOF\n")
    return path, kept, dropped


def _row(name: str, scores: dict, linear: dict, seasonal: dict, detail: str) -> dict:
    return {"name": f"{name}{detail}", "value": scores["mae"], "unit": "", "baseline": "predict_linear", "baseline_value": linear["mae"],
            "ratio": scores["mae"] / linear["mae"], "section": SECTION,
            "extra": {"MAE / seasonal naive": scores["mae"] / seasonal["mae"], "MASE": scores["mase"], "p10..p90 coverage": scores["coverage"]}}


def run(quick: bool = False, step: str | None = None) -> list[dict]:
    """The rows of `make bench`'s "Real data" table; `step` overrides forecast.step (e.g. "5m", from the command line)."""
    import mlflow

    from pipelines.config import Settings
    from pipelines.data.records import parse_duration
    from pipelines.registry.store import use_store
    from pipelines.sources.prometheus import ingest_metrics
    from pipelines.tasks.metric_forecast import evaluate_windows, load_metric_snapshot, train_metric_forecast

    if not DATA.is_file():
        print(f"skipped: {DATA} is not there", file=sys.stderr)
        return []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        settings = Settings(home=work / "home")
        settings = replace(settings, prometheus=replace(settings.prometheus, max_gap_fraction=MAX_GAP),
                           train=replace(settings.train, cpu_threads=1),
                           forecast=replace(settings.forecast, **({"epochs": 3} if quick else {}), **({"step": step} if step else {})))
        step = parse_duration(settings.forecast.step)
        history, kept, dropped = aligned_history(DATA, work, step, settings)
        query = {"nab": 'nab_value{file=~"' + "|".join(kept) + '"}'}
        start, cut = END - timedelta(days=DAYS), END - timedelta(days=HELD_DAYS)
        train = ingest_metrics(f"file://{history}", query, start, cut, settings.forecast.step, work / "train", settings)
        whole = ingest_metrics(f"file://{history}", query, start, END, settings.forecast.step, work / "whole", settings)
        outcome = train_metric_forecast(train.path, settings)
        use_store(settings)
        forecaster = mlflow.pyfunc.load_model(f"models:/metric-forecast/{outcome.version}").unwrap_python_model()
        data = load_metric_snapshot(whole.path, MAX_GAP)
        held_from = int(np.searchsorted(data.times, cut.timestamp()))
        ends = np.arange(held_from - 1, data.raw.shape[1] - forecaster.cfg.horizon)
        report = evaluate_windows(forecaster, data, ends, settings.forecast.seed, families=forecaster.families, history_until=held_from)
    seconds = time.perf_counter() - started
    baselines = report["baseline_metrics"]
    linear = baselines["predict_linear"]
    seasonal_name = min((n for n in baselines if n.startswith("seasonal_naive")), key=lambda n: baselines[n]["mae"])
    seasonal = baselines[seasonal_name]
    cfg = forecaster.cfg
    detail = (f": MAE in scaled units on NAB, {len(kept)} series at {settings.forecast.step}, {DAYS - HELD_DAYS} days trained, newest "
              f"{HELD_DAYS} held back ({report['windows']} windows, {cfg.horizon} steps ahead)")
    rows = [_row(f"{family} ({'served' if family == forecaster.family else 'contender'}, conformal band)", scores, linear, seasonal, "")
            for family, scores in report["family_metrics"].items()]
    rows[0]["name"] += detail
    rows += [_row("predict_linear (baseline, residual band)", linear, linear, seasonal, ""),
             _row(f"seasonal naive, {seasonal_name.removeprefix('seasonal_naive_')} (baseline, residual band)", seasonal, linear, seasonal, "")]
    rows.append({"name": f"train + register + score, whole recipe (left out: {', '.join(dropped) or 'none'})", "value": seconds, "unit": "s",
                 "baseline": "its training alone (LSTM + contenders)", "baseline_value": outcome.train_seconds, "ratio": seconds / outcome.train_seconds,
                 "section": SECTION, "extra": {}})
    return rows


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--step", help="grid step instead of the default forecast.step, e.g. 5m")
    args = parser.parse_args()
    print(json.dumps(run(quick=args.quick, step=args.step), indent=2))
