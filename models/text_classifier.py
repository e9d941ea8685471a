"""The MLflow pyfunc for the BERT log models: anyone can `mlflow.pyfunc.load_model("models:/log-anomaly@champion")`
and call `predict` on a DataFrame with a `message` column.

The version carries everything it needs: the fine-tuned weights and tokenizer (artifact
`checkpoint`), and `nightshift.json` beside them with the task, output names, thresholds, max
length and normaliser. The normaliser is applied inside, so callers pass raw log messages.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import mlflow.pyfunc
import numpy as np
import pandas as pd

from models.normalize import normalize

META_FILE = "nightshift.json"


def write_meta(checkpoint_dir: Path, meta: dict[str, Any]) -> None:
    (Path(checkpoint_dir) / META_FILE).write_text(json.dumps(meta, indent=2))


class TextClassifier(mlflow.pyfunc.PythonModel):
    """BERT with K sigmoid outputs, thresholds per output, and the log-text normaliser inside."""

    def load_context(self, context) -> None:
        from models.bert import load_classifier, pick_device

        path = Path(context.artifacts["checkpoint"])
        self.meta = json.loads((path / META_FILE).read_text())
        self.device = pick_device("auto")
        self.tokenizer, self.model = load_classifier(str(path))
        self.model.to(self.device).eval()
        self.thresholds = np.asarray(self.meta["thresholds"], dtype=np.float32)
        self.rca = None
        if self.task == "failure-rca":
            from models.rca import RootCauseHead

            self.rca = RootCauseHead.from_meta(self.meta)

    @property
    def task(self) -> str:
        return self.meta["task"]

    def probabilities(self, messages: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Sigmoid outputs (N, K) for raw messages, normalised here exactly as in training."""
        from models.bert import predict_proba

        return predict_proba(self.model, self.tokenizer, [normalize(m) for m in messages], batch_size=batch_size,
                             max_length=self.meta["max_length"], device=self.device)

    def format(self, probs: np.ndarray, texts: Sequence[str] = ()) -> pd.DataFrame:
        """The task's output columns from probabilities (and the texts, for the RCA knowledge-base fallback)."""
        if self.task == "log-anomaly":
            return pd.DataFrame({"anomaly_score": probs[:, 0].astype(np.float64), "is_anomaly": probs[:, 0] >= self.thresholds[0]})
        if self.rca is not None:
            return self.rca.format(probs, texts)
        raise ValueError(f"unknown task {self.task!r} in {META_FILE}")

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        if "message" not in model_input.columns:
            raise ValueError("input needs a 'message' column (the raw log text)")
        batch_size = int((params or {}).get("batch_size", 64))
        if self.rca is not None:
            self.rca.check_texts(model_input["message"])
        messages = model_input["message"].astype(str).tolist()
        return self.format(self.probabilities(messages, batch_size), messages)
