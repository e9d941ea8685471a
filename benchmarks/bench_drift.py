"""Drift checks: the cost of a log drift report (all checks, MiniLM-L6 embedding MMD on a sample)
for a night's training window against the previous night's, next to the cost of one MiniLM
forward pass over the current window's distinct messages (what embedding everything would take)."""

from __future__ import annotations

import os
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path


def run(quick: bool = False) -> list[dict]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["NIGHTSHIFT_HOME"] = str(Path(tmp) / "home")
        from nightshift_models.bert import default_checkpoint, load_classifier
        from nightshift_models.normalize import normalize
        from pipelines.config import load_settings
        from pipelines.data.demo_logs import write_demo_logs
        from pipelines.data.drift import compare_snapshots, sentence_embedder
        from pipelines.data.ingest import ingest_logs

        settings = load_settings()
        corpus = write_demo_logs(Path(tmp) / "corpus", per_day=300 if quick else 1500)
        day = lambda d: datetime(2026, 11, d, tzinfo=timezone.utc)  # noqa: E731
        reference = ingest_logs(f"file://{corpus}", day(16), day(20), Path(tmp) / "ref", settings)
        current = ingest_logs(f"file://{corpus}", day(17), day(21), Path(tmp) / "cur", settings)

        champion = type("Champion", (), {})()
        champion.tokenizer, champion.model = load_classifier(default_checkpoint())
        champion.meta, champion.device = {"max_length": 64}, "cpu"
        embed = sentence_embedder(champion)

        compare_snapshots(reference, current, settings, embed)  # warm-up: imports, first forward pass
        started = time.perf_counter()
        compare_snapshots(reference, current, settings, embed)
        drift_s = time.perf_counter() - started

        texts = sorted({normalize(m) for m in current.read(columns=["message"])["message"]})
        started = time.perf_counter()
        embed(texts)
        forward_s = time.perf_counter() - started

    rows = int(current.manifest["row_count"])
    return [
        {"name": f"drift report, logs ({rows} vs {reference.manifest['row_count']} rows, MMD on {settings.drift.embedding_sample}/side)",
         "value": round(drift_s, 2), "unit": "s", "baseline": f"MiniLM forward over the window's {len(texts)} distinct messages",
         "baseline_value": round(forward_s, 2), "ratio": round(drift_s / forward_s, 3)},
    ]


if __name__ == "__main__":
    for row in run(quick=True):
        print(row)
