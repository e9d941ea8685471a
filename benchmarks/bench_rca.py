"""Root-cause analysis quality: the `failure-rca` model (packaged MiniLM, CPU) trained by the nightly
recipe (every candidate family, the one best on validation registered) on the demo corpus's training window (2026-11-17..20) and judged on the held-back day
(2026-11-21: every failure cause in words never seen in training, plus causes outside the label
space), against the TF-IDF one-vs-rest baseline trained and tuned on the same snapshot.

F1 values are fractions. The ratio is the model's error against the baseline's, (1 - F1) / (1 - F1
baseline): lower is better, 1 means no better than the baseline (a plain F1 ratio is undefined when
the baseline scores 0). Quick mode trains 2 epochs instead of the default.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path


def run(quick: bool = False) -> list[dict]:
    from nightshift.cli import parse_time
    from pipelines.config import load_settings
    from pipelines.data.demo_logs import write_demo_logs
    from pipelines.data.ingest import ingest_logs
    from pipelines.tasks import evaluate
    from pipelines.tasks.failure_rca import train_failure_rca

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        settings = load_settings()
        settings = dataclasses.replace(settings, home=work / "home", tracking_uri="",
                                       rca=dataclasses.replace(settings.rca, epochs=2) if quick else settings.rca)
        corpus = f"file://{write_demo_logs(work / 'demo')}"
        train = ingest_logs(corpus, parse_time("2026-11-17"), parse_time("2026-11-21"), work / "snap-train", settings)
        fresh = ingest_logs(corpus, parse_time("2026-11-21"), parse_time("2026-11-22"), work / "snap-fresh", settings)
        trained = train_failure_rca(train.path, settings)
        out = evaluate(f"failure-rca/{trained.version}", fresh.path, settings)

    model, base = out.metrics, out.baselines["tfidf"]
    jobs = f"{out.examples} failed jobs; registered family: {out.family}"
    rows = []
    for metric in ("micro_f1", "macro_f1"):
        rows.append({"name": f"rca {metric.replace('_', '-')} on the held-back day ({jobs}; ratio: error vs baseline)",
                     "value": model[metric], "unit": "F1", "baseline": "TF-IDF one-vs-rest", "baseline_value": base[metric],
                     "ratio": (1 - model[metric]) / max(1 - base[metric], 1e-9), "train_seconds": trained.train_seconds})
    return rows


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
