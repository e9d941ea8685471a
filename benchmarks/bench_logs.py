"""Log models on the held-back day.

The demo corpus and its hard variant
(`pipelines.data.demo_logs`, `variant="hard"`: incidents in words never seen before the last day,
Chinese lines, mislabelled training lines). Each is ingested like a night's window (five days to
train, the sixth held back), and every `log-anomaly` family is fitted as the nightly training fits it
(`pipelines.tasks.log_anomaly.prepare_anomaly_data`: the folds a night chooses on; thresholds from the
out-of-fold scores, `pipelines.training.families.fit_families`; then refitted on every labelled row). Each
family is then scored on the held-back day's labelled lines: F1 at its out-of-fold threshold and PR-AUC, the
ratio against TF-IDF+LR trained in the same run (higher is better). The row "registered" is the family
`choose_family` picks out of fold. The fine-tuned BERT trains on a capped set (`BERT_CAP`: every anomalous
example, normal ones sampled down; a fixed number of epochs), stated in its row: on 2 shared cores the nightly
4000 examples take about 13 minutes an epoch. The training speed is `bench_fine_tune`'s.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SECTION = "Log models, held-back day"
BERT_CAP = {"examples": 800, "epochs": 2}
QUICK_CAP = {"examples": 300, "epochs": 1}
LABELS = {"tfidf": "TF-IDF word+char n-grams + LR", "embedding": "frozen MiniLM embedding + LR"}


def _settings(work: Path):
    from pipelines.config import load_settings

    settings = load_settings()
    return dataclasses.replace(settings, home=work / "home", tracking_uri="")


def _corpus(work: Path, variant: str, per_day: int):
    from nightshift.cli import parse_time
    from pipelines.data.demo_logs import write_demo_logs
    from pipelines.data.ingest import ingest_logs

    settings = _settings(work)
    source = f"file://{write_demo_logs(work / variant, per_day=per_day, variant=variant)}"
    train = ingest_logs(source, parse_time("2026-11-16"), parse_time("2026-11-21"), work / f"{variant}-train", settings)
    held = ingest_logs(source, parse_time("2026-11-21"), parse_time("2026-11-22"), work / f"{variant}-held", settings)
    return settings, train, held


def _quality_rows(work: Path, variant: str, per_day: int, cap: dict) -> list[dict]:
    from nightshift_models.baselines import family_proba
    from nightshift_models.bert import predict_proba, resolve_checkpoint
    from pipelines.tasks.log_anomaly import context_fields, labelled_logs, prepare_anomaly_data, tune_anomaly_threshold
    from pipelines.training.classification import binary_report
    from pipelines.training.families import choose_family, fit_families, refit
    from pipelines.training.fine_tune import fine_tune

    settings, train, held = _corpus(work, variant, per_day)
    params = dataclasses.replace(settings.train, max_train_examples=cap["examples"])
    data = prepare_anomaly_data(train, settings)
    checkpoint = resolve_checkpoint(params.base_model)
    bert_params = dataclasses.replace(params, epochs=cap["epochs"], patience=cap["epochs"])
    all_texts = data.rows["text"].tolist()

    def fit_bert(texts, targets, weights, val_texts, y_val, epochs, on_epoch):
        return fine_tune(texts, targets, val_texts, y_val, checkpoint=checkpoint, params=bert_params, tune=tune_anomaly_threshold,
                         select=settings.candidates.early_stopping_metric, weights=weights, epochs=epochs)

    fits = fit_families(all_texts, data.targets, data.selection, ("tfidf", "embedding", "bert"), checkpoint=checkpoint,
                        params=params, tune=tune_anomaly_threshold, fit_bert=fit_bert)
    fits = {name: refit(fit, all_texts, data.targets, checkpoint=checkpoint, params=params, fit_bert=fit_bert) for name, fit in fits.items()}
    chosen = choose_family(fits).family
    frame = labelled_logs(held, context_fields(settings))  # the held-back texts read as training's do: "[error] ..."
    y = frame["anomaly"].astype(bool).to_numpy()
    held_texts = frame["text"].tolist()
    scores = {}
    for name, fit in fits.items():
        if name == "bert":
            p = predict_proba(fit.model, fit.tokenizer, held_texts, batch_size=64, max_length=params.max_length, device=fit.device)
        else:
            p = family_proba(name, fit.model, held_texts, 64)
        scores[name] = binary_report(y, p[:, 0], fit.thresholds[0])
    labels = {**LABELS, "bert": f"fine-tuned MiniLM, capped: {cap['examples']} examples x {cap['epochs']} epochs, max_length {params.max_length}"}
    base = scores["tfidf"]
    rows = []
    for name, fit in fits.items():
        s = scores[name]
        rows.append({"name": f"{variant} corpus, {len(y)} lines ({int(y.sum())} anomalous): {name} ({labels[name]})"
                             + (" [registered: best out-of-fold F1]" if name == chosen else ""),
                     "value": s["f1"], "unit": "F1", "baseline": "TF-IDF+LR, same run", "baseline_value": base["f1"],
                     "ratio": s["f1"] / max(base["f1"], 1e-9), "section": SECTION,
                     "extra": {"PR-AUC": s["pr_auc"], "PR-AUC / tfidf": s["pr_auc"] / max(base["pr_auc"], 1e-9),
                               "out-of-fold F1": fit.best_metrics["f1"], "fit s": fit.seconds}})
    return rows


def run(quick: bool = False) -> list[dict]:
    cap = QUICK_CAP if quick else BERT_CAP
    per_day = 400 if quick else 1500
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for variant in ("default", "hard"):
            rows += _quality_rows(Path(tmp) / variant, variant, per_day, cap)
            print(*(f"{r['name']}: {r['value']:.3f} vs {r['baseline_value']:.3f} {r['extra']}" for r in rows), sep="\n", file=sys.stderr)
    return rows


if __name__ == "__main__":
    import json

    print(json.dumps(run(quick="--quick" in sys.argv), indent=2, default=float))
