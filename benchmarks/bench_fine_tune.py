"""The training speed of the BERT fine-tune, and of a night's training.

`pipelines.training.fine_tune.fine_tune` against `transformers.Trainer` on the same packaged MiniLM, the same
texts, batch size, learning-rate schedule, class-weighted BCE and precision (bf16 autocast where `train.precision`
gives it), one epoch each, samples per second of wall time from model load to the end of training, the best of two
runs taken in turn (ratio: ours / Trainer, higher is better). Both sides validate after the epoch as `fine_tune`
does (the Trainer: `eval_strategy="epoch"` on the same validation texts, its `compute_metrics` tuning the same
threshold); the row also gives both sides without validation. And a night's training on the
demo corpus, in-process: `train_log_anomaly`, `train_failure_rca` and `train_metric_forecast` on the nightly windows
with the default settings except `bench_logs.BERT_CAP` (training examples and BERT epochs), against the same night
with the TF-IDF family only.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from bench_logs import BERT_CAP, QUICK_CAP, _corpus, _settings  # noqa: E402  (one way to build the demo windows)

ROUNDS = 2  # runs of each side of the fine-tune speed row


def _trainer_speed(work: Path, quick: bool) -> list[dict]:
    """Samples/s of `fine_tune` and of `transformers.Trainer`, one epoch each on the same texts."""
    import numpy as np
    import torch
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from nightshift_models.bert import load_classifier, resolve_checkpoint, trains_in_bf16
    from nightshift_models.devices import pick_device
    from pipelines.tasks.log_anomaly import prepare_anomaly_data, tune_anomaly_threshold
    from pipelines.training.fine_tune import compact_training_set, fine_tune

    settings, train, _ = _corpus(work, "default", 300 if quick else 1500)
    params = dataclasses.replace(settings.train, epochs=1, patience=1)
    data = prepare_anomaly_data(train, settings)
    texts, targets, _ = compact_training_set(data.rows["text"].tolist(), data.targets, 256 if quick else 512, params.seed)
    checkpoint = resolve_checkpoint(params.base_model)
    val_texts, y_val = data.validated["text"].tolist()[:64], data.y_val[:64]

    device = pick_device(params.device)
    bf16 = trains_in_bf16(device, params.precision)  # the Trainer runs the fine-tune's precision
    positives = float(targets.sum())
    pos_weight = torch.tensor([min(max((len(targets) - positives) / max(positives, 1.0), 1.0), 50.0)])  # fine_tune's class weight

    def loss(outputs, labels, num_items_in_batch=None):
        return torch.nn.functional.binary_cross_entropy_with_logits(outputs.logits.float(), labels.float(), pos_weight=pos_weight.to(labels.device))

    def ours(validate: bool) -> float:
        started = time.perf_counter()
        fine_tune(texts, targets, val_texts if validate else None, y_val if validate else None, checkpoint=checkpoint,
                  params=params, tune=tune_anomaly_threshold)
        return time.perf_counter() - started

    def theirs(validate: bool) -> float:
        started = time.perf_counter()
        tokenizer, model = load_classifier(checkpoint, 1, params.pooling)

        def examples(some_texts, labels) -> list[dict]:
            encoded = tokenizer(list(some_texts), truncation=True, max_length=params.max_length)["input_ids"]
            return [{"input_ids": ids, "labels": [float(t)]} for ids, t in zip(encoded, labels[:, 0])]

        def metrics(prediction) -> dict[str, float]:  # what fine_tune's validation computes from the probabilities
            probs = 1.0 / (1.0 + np.exp(-np.asarray(prediction.predictions, dtype=np.float64).reshape(len(y_val), -1)))
            return tune_anomaly_threshold(y_val, probs)[1]

        args = TrainingArguments(output_dir=str(work / "trainer"), per_device_train_batch_size=params.batch_size, num_train_epochs=1,
                                 learning_rate=params.learning_rate, weight_decay=params.weight_decay, warmup_steps=0.1,
                                 lr_scheduler_type="linear", save_strategy="no", logging_strategy="no", report_to="none",
                                 disable_tqdm=True, use_cpu=device == "cpu", bf16=bf16, seed=params.seed,
                                 remove_unused_columns=False, dataloader_num_workers=0, label_names=["labels"],
                                 eval_strategy="epoch" if validate else "no", per_device_eval_batch_size=params.batch_size * 2)
        Trainer(model=model, args=args, train_dataset=examples(texts, targets), data_collator=DataCollatorWithPadding(tokenizer),
                eval_dataset=examples(val_texts, y_val) if validate else None, compute_metrics=metrics if validate else None,
                compute_loss_func=loss).train()
        return time.perf_counter() - started

    # Taken in turn, best of ROUNDS each: the first run in a process also pays one-time kernel setup, and this
    # host's speed drifts between runs.
    runs: dict[tuple[str, bool], list[float]] = {(side, validate): [] for side in ("ours", "theirs") for validate in (True, False)}
    for _ in range(ROUNDS):
        for validate in (True, False):
            runs["ours", validate].append(ours(validate))
            runs["theirs", validate].append(theirs(validate))
    best = {key: min(seconds) for key, seconds in runs.items()}
    n = len(texts)
    return [{"name": f"BERT fine-tune speed (fine_tune: {n} log texts x 1 epoch, batch {params.batch_size}, max_length {params.max_length}, "
                     f"{device}, {'bf16 autocast' if bf16 else 'fp32'}, {len(val_texts)} texts validated; wall time from model load)",
             "value": n / best["ours", True], "unit": "samples/s",
             "baseline": "transformers.Trainer, same model, data, batch size, schedule, loss, precision and validation",
             "baseline_value": n / best["theirs", True], "ratio": best["theirs", True] / best["ours", True],
             "extra": {"no validation: samples/s": n / best["ours", False], "no validation: Trainer": n / best["theirs", False],
                       "no validation: ratio": best["theirs", False] / best["ours", False]}}]


def _night(work: Path, families: str, cap: dict) -> float:
    """Seconds of the three trainings of a night on the demo corpus (nightly windows), in-process."""
    from nightshift.cli import parse_time
    from pipelines.data.demo_logs import write_demo_logs
    from pipelines.data.demo_metrics import METRICS_END, write_demo_metrics
    from pipelines.data.ingest import ingest_logs
    from pipelines.sources.prometheus import ingest_metrics, named_queries
    from pipelines.tasks.failure_rca import train_failure_rca
    from pipelines.tasks.log_anomaly import train_log_anomaly
    from pipelines.tasks.metric_forecast import train_metric_forecast

    settings = _settings(work)
    settings = dataclasses.replace(settings, candidates=dataclasses.replace(settings.candidates, families=families),
                                   train=dataclasses.replace(settings.train, max_train_examples=cap["examples"], epochs=cap["epochs"]))
    source = f"file://{write_demo_logs(work / 'demo')}"
    logs = ingest_logs(source, parse_time("2026-11-17"), parse_time("2026-11-21"), work / "logs", settings)
    history = write_demo_metrics(work)
    metrics = ingest_metrics(f"file://{history}", named_queries(settings), METRICS_END - timedelta(days=settings.forecast.train_days),
                             METRICS_END, settings.forecast.step, work / "metrics", settings)
    started = time.perf_counter()
    train_log_anomaly(logs.path, settings)
    train_failure_rca(logs.path, settings)
    train_metric_forecast(metrics.path, settings)
    return time.perf_counter() - started


def run(quick: bool = False) -> list[dict]:
    cap = QUICK_CAP if quick else BERT_CAP
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rows = _trainer_speed(work / "speed", quick)
        print(rows[-1], file=sys.stderr)
        full = _night(work / "night-all", "tfidf,embedding,bert", cap)
        cheap = _night(work / "night-tfidf", "tfidf", cap)
    rows.append({"name": f"a night's training on the demo corpus, in-process: log-anomaly (all families; training examples "
                         f"capped at {cap['examples']}, BERT {cap['epochs']} epochs), failure-rca (all families), metric-forecast",
                 "value": full, "unit": "s", "baseline": "the same night with the TF-IDF family only", "baseline_value": cheap,
                 "ratio": full / cheap})
    return rows


if __name__ == "__main__":
    import json

    print(json.dumps(run(quick="--quick" in sys.argv), indent=2, default=float))
