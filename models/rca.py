"""The root-cause model's answer: K sigmoid probabilities become labels, scores and suggested actions.

A label is given when its probability passes its own threshold (tuned on validation). When none
does, the text is matched against the remediation knowledge base instead, and the best entry comes
back with its similarity, flagged as low confidence: an unknown failure gets a hint, not a
confident wrong label. The label space and the knowledge base both come from the model's own
`nightshift.json`, so every version answers with the labels it was trained on.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from models.knowledge_base import KnowledgeBase, knowledge_base_from_json
from models.label_space import LabelSpace, label_space_from_json

TASK = "failure-rca"
OUTPUT_COLUMNS = ("labels", "scores", "actions", "low_confidence", "kb_match", "kb_similarity")


class RootCauseHead:
    """Label space, per-label thresholds and knowledge base of one RCA model version."""

    def __init__(self, label_space: LabelSpace, thresholds: Sequence[float], knowledge_base: KnowledgeBase):
        if len(thresholds) != len(label_space.labels):
            raise ValueError(f"{len(thresholds)} thresholds for {len(label_space.labels)} labels")
        self.label_space = label_space
        self.labels = label_space.labels
        self.thresholds = np.asarray(thresholds, dtype=np.float32)
        self.knowledge_base = knowledge_base

    @classmethod
    def from_meta(cls, meta: dict) -> RootCauseHead:
        return cls(label_space_from_json(meta["label_space"], "in the model"), meta["thresholds"],
                   knowledge_base_from_json(meta["knowledge_base"], "in the model"))

    @staticmethod
    def check_texts(texts: pd.Series) -> None:
        """A failure needs text to explain; say which input row has none."""
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"input row {i}: 'message' has no text; a failure needs its text (a job's error lines)")

    def decide(self, probs: np.ndarray) -> np.ndarray:
        """(N, K) booleans: which labels pass their thresholds."""
        return probs >= self.thresholds[None, :]

    def format(self, probs: np.ndarray, texts: Sequence[str]) -> pd.DataFrame:
        """One row per text: labels (most likely first), scores per label, actions; or the knowledge-base fallback."""
        chosen = self.decide(probs)
        unknown = [i for i in range(len(texts)) if not chosen[i].any()]
        matches = dict(zip(unknown, self.knowledge_base.match([texts[i] for i in unknown])))
        rows = []
        for i, p in enumerate(probs):
            scores = {label: round(float(v), 6) for label, v in zip(self.labels, p)}
            if i not in matches:
                labels = [self.labels[k] for k in np.argsort(-p, kind="stable") if chosen[i, k]]
                actions = list(dict.fromkeys(a for label in labels for a in self.label_space.actions[label]))
                rows.append((labels, scores, actions, False, "", 0.0))
                continue
            entry, similarity = matches[i].entry, matches[i].similarity
            rows.append(([], scores, list(entry.actions) if entry else [], True, entry.id if entry else "", round(similarity, 6)))
        return pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS))
