"""Root causes in the scoring pass: `ml.rca.*` for flagged documents and for every document of a failed job.

`score_logs` reads the source once and runs two models over each window: the anomaly model on
every document, then the root-cause model on the documents it flags and on all documents of failed
jobs (a job with a flagged or error-level line). A job is explained by its text from
`pipelines.data.failed_jobs.job_text`, built from the job's lines seen so far, so a job that straddles two
windows is explained with all of its lines; documents written in an earlier window keep what they
got. A flagged document without a job id is explained by its own message.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Collection

import pandas as pd

from pipelines.config import Settings
from pipelines.data.failed_jobs import is_error_level, job_text
from pipelines.data.records import get_field, set_field
from pipelines.errors import InputError
from pipelines.registry.store import CHAMPION, alias_version, load_model
from pipelines.telemetry import get_logger

log = get_logger("score.rca")
DEFAULT_REF = "failure-rca@champion"


@dataclass
class _Job:
    lines: deque = field(default_factory=lambda: deque(maxlen=200))  # the newest lines explain a failure best
    failed: bool = False
    explained: bool = False


class RootCauseAnnotator:
    """Sets `ml.rca.*` on a window of documents already scored by the anomaly model."""

    def __init__(self, classifier, name: str, version: str, settings: Settings, max_jobs: int = 10_000):
        if getattr(classifier, "task", None) != "failure-rca":
            raise InputError(f"--rca-model {name}/{version}: is a '{getattr(classifier, 'task', '?')}' model, not failure-rca")
        self.classifier, self.name, self.version, self.settings = classifier, name, version, settings
        self.jobs: OrderedDict[str, _Job] = OrderedDict()  # most recently seen last; bounded by max_jobs
        self.max_jobs = max_jobs
        self.counts = {"annotated": 0, "jobs": 0, "fallback": 0}

    def _remember(self, job: str, level: object, message: object, failed: bool) -> _Job:
        state = self.jobs.pop(job, None) or _Job()
        self.jobs[job] = state
        state.lines.append((level, message))
        state.failed |= failed
        while len(self.jobs) > self.max_jobs:
            self.jobs.popitem(last=False)
        return state

    def annotate(self, window: list[tuple[str, dict]], failed: Collection[str] = ()) -> None:
        """Explain the window's flagged documents and failed jobs (one prediction per distinct text). `failed`: ids of
        jobs known to have failed (an alert said so), explained whatever their lines' levels and scores."""
        fields = self.settings.fields
        todo: list[tuple[dict, str]] = []
        window_jobs: dict[str, list[dict]] = {}
        for _, doc in window:
            level, message = get_field(doc, fields.level), get_field(doc, fields.message)
            flagged = get_field(doc, "ml.anomaly.is_anomaly") is True
            job = get_field(doc, fields.job_id)
            if job is not None:
                self._remember(str(job), level, message, flagged or is_error_level(level) or str(job) in failed)
                window_jobs.setdefault(str(job), []).append(doc)
            elif flagged:
                todo.append((doc, job_text([(level, message)])))
        for job, docs in window_jobs.items():
            state = self.jobs.get(job)
            if state is not None and state.failed:
                text = job_text(state.lines)
                todo.extend((doc, text) for doc in docs)
                self.counts["jobs"] += not state.explained
                state.explained = True
        todo = [(doc, text) for doc, text in todo if text]
        if not todo:
            return
        texts = list(dict.fromkeys(text for _, text in todo))
        answers = self.classifier.predict(None, pd.DataFrame({"message": texts}), {"batch_size": self.settings.score.batch_size})
        by_text = dict(zip(texts, answers.itertuples(index=False)))
        for doc, text in todo:
            self._write(doc, by_text[text])

    def _write(self, doc: dict, answer) -> None:
        set_field(doc, "ml.rca.labels", list(answer.labels))
        set_field(doc, "ml.rca.scores", dict(answer.scores))
        set_field(doc, "ml.rca.actions", list(answer.actions))
        set_field(doc, "ml.rca.low_confidence", bool(answer.low_confidence))
        if answer.low_confidence:
            set_field(doc, "ml.rca.kb.id", answer.kb_match or None)
            set_field(doc, "ml.rca.kb.similarity", float(answer.kb_similarity))
            self.counts["fallback"] += 1
        set_field(doc, "ml.rca.model.name", self.name)
        set_field(doc, "ml.rca.model.version", self.version)
        set_field(doc, "ml.rca.model.family", getattr(self.classifier, "family", "bert"))
        self.counts["annotated"] += 1


def load_annotator(client, ref: str | None, settings: Settings) -> RootCauseAnnotator | None:
    """The annotator for `ref`; with no ref, the RCA champion when there is one; None (anomaly scores only)
    when there is none, or for ref "none"."""
    if ref and ref.lower() == "none":
        return None
    if not ref:
        if alias_version(client, "failure-rca", CHAMPION) is None:
            return None
        ref = DEFAULT_REF
    model_ref, model = load_model(client, ref)
    return RootCauseAnnotator(model.unwrap_python_model(), model_ref.name, model_ref.version, settings)
