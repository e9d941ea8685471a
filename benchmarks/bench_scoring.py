"""Batch scoring: `nightshift score logs` docs/s against the pure fp32 model forward pass on the same
docs (the text the version reads: context fields and normalised message), each the best of `ROUNDS` runs taken in
turn, with each runtime (`score.runtime`: fp32 PyTorch, int8 ONNX Runtime); the int8 graph's decision agreement
with fp32 and the F1 of both on the demo's held-back day and on the development split of `../shared/data/bgl-train`;
and peak RSS of a scoring run at two input sizes (memory must stay flat as input grows)."""

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
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_real_logs: the bgl-train development split
ROUNDS = 3  # runs of each side of the docs/s rows


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
    """The baseline: tokenise and run the model on the text it reads for every doc (`read_as`: the normalised message
    after its context fields), length-sorted batches, nothing else."""
    import torch

    from nightshift_models.text_classifier import context_fields
    from pipelines.data.records import doc_context
    from pipelines.registry.store import load_model, use_store
    from pipelines.scoring.score_logs import read_as

    clf = load_model(use_store(settings), model_ref)[1].unwrap_python_model()
    docs = [json.loads(line) for line in corpus.open()]
    texts = read_as(clf, [d["message"] for d in docs], doc_context(docs, settings.fields, context_fields(clf)))
    started = time.perf_counter()
    enc = clf.tokenizer(texts, truncation=True, max_length=clf.meta["max_length"])["input_ids"]
    order = sorted(range(len(enc)), key=lambda i: len(enc[i]))
    with torch.inference_mode():
        for i in range(0, len(order), settings.score.batch_size):
            batch = clf.tokenizer.pad({"input_ids": [enc[j] for j in order[i:i + settings.score.batch_size]]}, return_tensors="pt")
            clf.model(**batch)
    return len(texts) / (time.perf_counter() - started)


def _score_docs_per_s(model_ref: str, settings, corpus: Path, work: Path, runtime: str = "int8") -> float:
    from pipelines.scoring.score_logs import score_logs

    settings = dataclasses.replace(settings, score=dataclasses.replace(settings.score, runtime=runtime))
    started = time.perf_counter()
    out = score_logs(model_ref, f"file://{corpus}", f"file://{work / 'scored.ndjson'}", settings)
    if out["runtime"] != runtime:
        raise RuntimeError(f"{model_ref} scored with {out['runtime']}, not {runtime} (its int8 check did not pass?)")
    return out["scored"] / (time.perf_counter() - started)


def _agreement_row(model_ref: str, settings, docs: list[dict], where: str) -> dict:
    """fp32 and int8 decisions of one version on labelled docs: the share that agree, and each runtime's F1."""
    from sklearn.metrics import f1_score

    from pipelines.data.records import doc_context
    from pipelines.registry.store import load_model, use_store

    clf = load_model(use_store(settings), model_ref)[1].unwrap_python_model()
    messages = [d["message"] for d in docs]
    truth = [bool(d["labels"]["anomaly"]) for d in docs]
    context = doc_context(docs, settings.fields, clf.meta.get("context_fields", ()))
    decided = {}
    for runtime in ("fp32", "int8"):
        if clf.use_runtime(runtime) != runtime:
            raise RuntimeError(f"{model_ref} cannot run {runtime}: {clf.int8_problem()}")
        decided[runtime] = clf.probabilities(messages, 64, context)[:, 0] >= clf.thresholds[0]
    f1 = {runtime: f1_score(truth, d, zero_division=0) for runtime, d in decided.items()}
    return {"name": f"int8 decision agreement with fp32, MiniLM, {where} ({len(docs)} lines, {sum(truth)} anomalous)",
            "value": float((decided["fp32"] == decided["int8"]).mean()), "unit": "share", "baseline": "all decisions agree",
            "baseline_value": 1.0, "ratio": float((decided["fp32"] == decided["int8"]).mean()),
            "extra": {"F1 fp32": float(f1["fp32"]), "F1 int8": float(f1["int8"]), "F1 int8 - fp32": float(f1["int8"] - f1["fp32"]),
                      "int8 check at registration": float(clf.meta.get("int8", {}).get("agreement", float("nan")))}}


def _held_back_day() -> list[dict]:
    """The demo's held-back day: the sixth day of `_corpus`'s logs (the versions here train on the first five)."""
    from pipelines.data.demo_logs import DEMO_START, generate_logs

    return [d for d in generate_logs(DEMO_START, days=6, per_day=500, seed=1) if d["@timestamp"].startswith("2026-11-21")]


def _bgl_split(settings, work: Path) -> tuple[str, list[dict]]:
    """A MiniLM BERT registered on the oldest 70% of `../shared/data/bgl-train` (its README's development split),
    and the newest 30% to check it on."""
    from bench_real_logs import split_files

    from nightshift.cli import parse_time
    from pipelines.data.ingest import ingest_logs
    from pipelines.tasks.log_anomaly import train_log_anomaly

    train_file, test_file = split_files(work)
    snap = ingest_logs(f"file://{train_file}", parse_time("2005-01-01"), parse_time("2006-01-01"), work / "snap-bgl", settings)
    ref = "log-anomaly/" + train_log_anomaly(snap.path, settings).version
    return ref, [json.loads(line) for line in test_file.read_text().splitlines() if line.strip()]


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
        settings = dataclasses.replace(settings, train=dataclasses.replace(settings.train, epochs=1, max_train_examples=300),
                                       candidates=dataclasses.replace(settings.candidates, families="bert"))  # the BERT path
        train_corpus = _corpus(work / "train.ndjson", 3000)
        minilm = _register(settings, train_corpus, None, work)
        tiny = _register(settings, train_corpus, str(make_tiny_checkpoint(work / "tiny")), work)

        n = 600 if quick else 3000
        rows = []
        for label, corpus in (("demo logs", _corpus(work / "tp.ndjson", n)),
                              ("all-distinct logs", _corpus(work / "tp-distinct.ndjson", n, distinct=True))):
            # Taken in turn, best of ROUNDS each: this 2-core host's speed drifts by a fifth within minutes.
            best = {side: 0.0 for side in ("forward", "fp32", "int8")}
            for _ in range(ROUNDS):
                best["forward"] = max(best["forward"], _forward_docs_per_s(minilm, settings, corpus))
                for runtime in ("fp32", "int8"):
                    best[runtime] = max(best[runtime], _score_docs_per_s(minilm, settings, corpus, work, runtime))
            forward = best["forward"]
            for runtime in ("fp32", "int8"):
                scored = best[runtime]
                rows.append({"name": f"score logs, MiniLM, {runtime}, {n} {label}", "value": scored, "unit": "docs/s",
                             "baseline": "pure fp32 forward pass, same docs", "baseline_value": forward, "ratio": scored / forward})
        rows.append(_agreement_row(minilm, settings, _held_back_day(), "demo held-back day"))
        bgl, test_docs = _bgl_split(settings, work)
        rows.append(_agreement_row(bgl, settings, test_docs, "bgl-train development test part"))

        small, large = (2_000, 20_000) if quick else (10_000, 100_000)
        rss_small = _peak_rss_mb(tiny, _corpus(work / "small.ndjson", small), work, env)
        rss_large = _peak_rss_mb(tiny, _corpus(work / "large.ndjson", large), work, env)
        rows.append({"name": f"score logs peak RSS, {large} docs", "value": rss_large, "unit": "MiB",
                     "baseline": f"{small} docs", "baseline_value": rss_small, "ratio": rss_large / rss_small})
        return rows
