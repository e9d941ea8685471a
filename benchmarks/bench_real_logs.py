"""Real logs: the log-anomaly recipe on the development split of `../shared/data/bgl-train` (1,400 real BlueGene/L
lines from loghub's `BGL_2k`, see its README): the oldest 70% train, the newest 30% test (their alerts are all of
categories the training part lacks). Beside it, two splits where most test alerts are of categories training holds,
as in a check of a model trained on every line of the file: the lines in time order cut into ten blocks, the odd
blocks train and the even test, then the reverse ("alternate tenths").

Recipe: the training part is ingested through the NDJSON file source like any night's, `train_log_anomaly` chooses
and registers a family with the production defaults (every family scored out of fold, the winner refitted on every
labelled row) in a throwaway MLflow store, and `evaluate` scores the registered version on the test part. Beside it,
on the same split: each family alone (`candidates.families` set to it, the same recipe), and the ten-line reference
that the gate also faces (`nightshift_models.baselines.reference_logreg`: word 1-2 gram TF-IDF, logistic regression
C=10, threshold 0.5, raw messages, every training line). The ratio is the model's F1 over the reference's; PR-AUC
and the threshold are extra columns. Quick mode leaves the BERT out.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DATA = ROOT.parent / "shared" / "data" / "bgl-train" / "logs.ndjson"
SECTION = "Real logs"
TRAIN_SHARE = 0.7
BLOCKS = 10


def split_files(work: Path, split: str = "development") -> tuple[Path, Path]:
    """A split of the file as two NDJSON files (train, test): "development" (the oldest `TRAIN_SHARE` train), or
    "odd tenths" / "even tenths" (the lines in time order cut into `BLOCKS` blocks; the blocks named train, the
    others test)."""
    lines = sorted(DATA.read_text().splitlines(), key=lambda line: json.loads(line)["@timestamp"])
    n = len(lines)
    if split == "development":
        in_train = [i < int(round(n * TRAIN_SHARE)) for i in range(n)]
    else:
        parity = {"odd tenths": 1, "even tenths": 0}[split]
        in_train = [(i * BLOCKS // n) % 2 == parity for i in range(n)]
    train, test = work / f"{split}-train.ndjson", work / f"{split}-test.ndjson"
    train.write_text("\n".join(line for line, t in zip(lines, in_train) if t) + "\n")
    test.write_text("\n".join(line for line, t in zip(lines, in_train) if not t) + "\n")
    return train, test


def run(quick: bool = False) -> list[dict]:
    import numpy as np

    from nightshift.cli import parse_time
    from nightshift_models.baselines import reference_logreg
    from pipelines.config import load_settings
    from pipelines.data.ingest import ingest_logs
    from pipelines.tasks import evaluate
    from pipelines.tasks.log_anomaly import labelled_logs, train_log_anomaly
    from pipelines.training.classification import binary_report

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base = dataclasses.replace(load_settings(), home=work / "home", tracking_uri="")
        start, end = parse_time("2005-01-01"), parse_time("2006-01-01")
        every = [f for f in base.candidates.families.split(",") if not (quick and f == "bert")]
        served = f"served (chosen among {', '.join(every)})"
        for split in ("development", "odd tenths", "even tenths"):
            train_file, test_file = split_files(work, split)
            train = ingest_logs(f"file://{train_file}", start, end, work / f"snap-{split}-train", base)
            test = ingest_logs(f"file://{test_file}", start, end, work / f"snap-{split}-test", base)
            train_rows, test_rows = labelled_logs(train), labelled_logs(test)
            y_test = test_rows["anomaly"].astype(bool).to_numpy()
            reference = reference_logreg(train_rows["message"].tolist(), train_rows["anomaly"].astype(bool).to_numpy())
            ref = binary_report(y_test, reference.predict_proba(test_rows["message"].tolist())[:, 1], 0.5)
            # the development split names every family alone; the other two the served model only
            contenders = {served: ",".join(every), **({f: f for f in every} if split == "development" else {})}
            where = ("development split" if split == "development"
                     else f"{split} train (the others test; {int(train_rows['anomaly'].sum())} alerts train)")
            for name, families in contenders.items():
                settings = dataclasses.replace(base, candidates=dataclasses.replace(base.candidates, families=families))
                trained = train_log_anomaly(train.path, settings)
                out = evaluate(f"log-anomaly/{trained.version}", test.path, settings, baseline=False)
                rows.append({"section": SECTION, "name": f"bgl-train {where}, log-anomaly {name} ({out.family}; "
                                                         f"{int(y_test.sum())} alerts in {len(y_test)} test lines; ratio: F1 vs reference)",
                             "value": out.metrics["f1"], "unit": "F1", "baseline": "ten-line TF-IDF + LR at 0.5",
                             "baseline_value": ref["f1"], "ratio": out.metrics["f1"] / max(ref["f1"], 1e-9),
                             "extra": {"PR-AUC": out.metrics["pr_auc"], "reference PR-AUC": ref["pr_auc"],
                                       "threshold": float(out.details.get("threshold", np.nan)),
                                       "train s": trained.train_seconds}})
    return rows


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
