"""Batch scoring: `nightshift score logs` docs/s against the pure model forward pass on the same
docs, and peak RSS of a scoring run at two input sizes (memory must stay flat as input grows)."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _corpus(path: Path, docs: int, distinct: bool = False, seed: int = 1) -> Path:
    """Demo-shaped logs; with `distinct`, every message gets a unique word so nothing repeats."""
    from pipelines.data.demo_logs import DEMO_START, generate_logs

    rng = random.Random(seed)
    with path.open("w") as fh:
        for i, doc in enumerate(generate_logs(DEMO_START, days=6, per_day=max(docs // 6, 10), seed=seed)):
            if i >= docs:
                break
            if distinct:
                doc["message"] += " trace " + "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=8))
            fh.write(json.dumps(doc) + "\n")
    return path


def _register(settings, corpus: Path, base_model: str | None, work: Path) -> str:
    from pipelines.data.ingest import ingest_logs
    from pipelines.tasks.log_anomaly import train_log_anomaly

    day = lambda d: datetime(2026, 11, d, tzinfo=timezone.utc)  # noqa: E731
    snap = ingest_logs(f"file://{corpus}", day(16), day(21), work / f"snap-{base_model and Path(base_model).name}", settings)
    return "log-anomaly/" + train_log_anomaly(snap.path, settings, base_model).version


def _forward_docs_per_s(model_ref: str, settings, corpus: Path) -> float:
    """The baseline: tokenise and run the model on every doc's text, length-sorted batches, nothing else."""
    import torch

    from nightshift_models.normalize import normalize
    from pipelines.registry.store import load_model, use_store

    clf = load_model(use_store(settings), model_ref)[1].unwrap_python_model()
    texts = [normalize(json.loads(line)["message"]) for line in corpus.open()]
    started = time.perf_counter()
    enc = clf.tokenizer(texts, truncation=True, max_length=clf.meta["max_length"])["input_ids"]
    order = sorted(range(len(enc)), key=lambda i: len(enc[i]))
    with torch.inference_mode():
        for i in range(0, len(order), settings.score.batch_size):
            batch = clf.tokenizer.pad({"input_ids": [enc[j] for j in order[i:i + settings.score.batch_size]]}, return_tensors="pt")
            clf.model(**batch)
    return len(texts) / (time.perf_counter() - started)


def _score_docs_per_s(model_ref: str, settings, corpus: Path, work: Path) -> float:
    from pipelines.scoring.score_logs import score_logs

    started = time.perf_counter()
    out = score_logs(model_ref, f"file://{corpus}", f"file://{work / 'scored.ndjson'}", settings)
    return out["scored"] / (time.perf_counter() - started)


PEAK_RSS = """
import resource, sys
from pipelines.config import load_settings
from pipelines.scoring.score_logs import score_logs
score_logs(sys.argv[1], "file://" + sys.argv[2], "file://" + sys.argv[3], load_settings())
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def _peak_rss_mb(model_ref: str, corpus: Path, work: Path, env: dict) -> float:
    out = subprocess.run([sys.executable, "-c", PEAK_RSS, model_ref, str(corpus), str(work / "rss.ndjson")],
                         env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def run(quick: bool = False) -> list[dict]:
    from nightshift_models.bert import make_tiny_checkpoint
    from pipelines.config import load_settings
    from pipelines.telemetry import configure_logging

    configure_logging(level="WARNING")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = {**os.environ, "NIGHTSHIFT_HOME": str(work / "home"), "NIGHTSHIFT_LOG_FORMAT": "json", "NIGHTSHIFT_LOG_LEVEL": "WARNING"}
        os.environ.update({k: env[k] for k in ("NIGHTSHIFT_HOME",)})
        settings = load_settings()
        settings = dataclasses.replace(settings, train=dataclasses.replace(settings.train, epochs=1, max_train_examples=300))
        train_corpus = _corpus(work / "train.ndjson", 3000)
        minilm = _register(settings, train_corpus, None, work)
        tiny = _register(settings, train_corpus, str(make_tiny_checkpoint(work / "tiny")), work)

        n = 600 if quick else 3000
        rows = []
        for label, corpus in (("demo logs", _corpus(work / "tp.ndjson", n)),
                              ("all-distinct logs", _corpus(work / "tp-distinct.ndjson", n, distinct=True))):
            forward = _forward_docs_per_s(minilm, settings, corpus)
            scored = _score_docs_per_s(minilm, settings, corpus, work)
            rows.append({"name": f"score logs, MiniLM, {n} {label}", "value": scored, "unit": "docs/s",
                         "baseline": "pure forward pass, same docs", "baseline_value": forward, "ratio": scored / forward})

        small, large = (2_000, 20_000) if quick else (10_000, 100_000)
        rss_small = _peak_rss_mb(tiny, _corpus(work / "small.ndjson", small), work, env)
        rss_large = _peak_rss_mb(tiny, _corpus(work / "large.ndjson", large), work, env)
        rows.append({"name": f"score logs peak RSS, {large} docs", "value": rss_large, "unit": "MiB",
                     "baseline": f"{small} docs", "baseline_value": rss_small, "ratio": rss_large / rss_small})
        return rows
