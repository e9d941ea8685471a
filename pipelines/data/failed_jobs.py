"""Failure jobs: a job's error lines and stack trace aggregated into one short text.

Training, evaluation and scoring all build a job's text here, so the root-cause model reads the
same shape of text everywhere. Documents are grouped by the job id field (`fields.job_id`,
`labels.job_id` by default). A job's text is its error-level lines in time order, each distinct
line once, with stack frames shortened to `at file.py:function` and put last, so the exception
messages come first and survive the model's token limit.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from nightshift_models.label_space import LabelSpace
from nightshift_models.normalize import normalize
from pipelines.config import LogFields
from pipelines.data.records import RecordError

# Levels that make a line part of a failure's story (log.level, case-insensitive).
ERROR_LEVELS = frozenset({"warn", "warning", "error", "err", "severe", "critical", "crit", "fatal", "alert", "emerg", "emergency"})
MAX_TEXT_CHARS = 1000
_FRAME = re.compile(r'^File "(?P<file>[^"]+)", line \d+, in (?P<func>\S+)')
_TRACEBACK = "Traceback (most recent call last)"


def is_error_level(level: object) -> bool:
    return isinstance(level, str) and level.strip().lower() in ERROR_LEVELS


def job_text(lines: Iterable[tuple[object, object]]) -> str:
    """One text from a job's (level, message) lines in time order: the error-level lines, or all
    lines when none has an error level. Empty when the job has no text at all."""
    kept: list[tuple[object, str]] = [(level, message) for level, message in lines if isinstance(message, str) and message.strip()]
    chosen = [m for level, m in kept if is_error_level(level)] or [m for _, m in kept]
    messages: list[str] = []
    frames: list[str] = []
    seen: set[str] = set()
    for text in chosen:
        after_frame = False
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith(_TRACEBACK):
                continue
            frame = _FRAME.match(line)
            if after_frame and not frame and raw[:1].isspace():
                after_frame = False  # the source line a traceback prints under each frame
                continue
            after_frame = bool(frame)
            item = f"at {PurePosixPath(frame['file']).name}:{frame['func']}" if frame else line
            key = normalize(item)
            if key not in seen:
                seen.add(key)
                (frames if frame else messages).append(item)
    return " | ".join(messages + frames)[:MAX_TEXT_CHARS]


def failure_jobs(frame: pd.DataFrame, fields: LogFields, where: str, label_space: LabelSpace | None = None) -> pd.DataFrame:
    """One row per failed job of a snapshot frame: job_id, timestamp (first line), text, root_cause.

    A job counts as failed when it has root causes, an anomalous line or an error-level line.
    Raises `RecordError` for a failed job without text, or with a label outside `label_space`.
    """
    columns = ["job_id", "timestamp", "text", "root_cause"]
    jobs = frame[frame["job_id"].notna()]
    if jobs.empty:
        return pd.DataFrame(columns=columns)
    known = label_space.as_set() if label_space else None
    order = {label: i for i, label in enumerate(label_space.labels)} if label_space else {}
    rows = []
    for job, lines in jobs.sort_values("timestamp", kind="stable").groupby("job_id", sort=False):
        causes = sorted({c for cs in lines["root_cause"] if cs is not None for c in cs}, key=lambda c: (order.get(c, len(order)), c))
        anomalous = lines["anomaly"].fillna(False).astype(bool).any()
        if not (causes or anomalous or any(is_error_level(level) for level in lines["level"])):
            continue  # a healthy job: nothing to explain
        if known is not None and label_space is not None and set(causes) - known:
            raise RecordError(f"{where}: job '{job}'", fields.root_cause,
                              f"has label(s) not in the label space '{label_space.name}': {', '.join(sorted(set(causes) - known))}")
        text = job_text(zip(lines["level"], lines["message"]))
        if not text:
            raise RecordError(f"{where}: job '{job}'", fields.message, "is empty on every line: a failed job needs its error lines")
        rows.append((job, lines["timestamp"].iloc[0], text, causes))
    return pd.DataFrame(rows, columns=columns)


def targets(root_causes: Sequence[Sequence[str]], labels: Sequence[str]) -> np.ndarray:
    """(N, K) float32 multi-hot targets in label-space order."""
    index = {label: k for k, label in enumerate(labels)}
    y = np.zeros((len(root_causes), len(labels)), dtype=np.float32)
    for i, causes in enumerate(root_causes):
        for cause in causes:
            y[i, index[cause]] = 1.0
    return y
