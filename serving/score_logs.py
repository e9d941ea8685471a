"""Batch scoring of log documents: read a source in windows, score, write the `ml.*` fields to a sink.

The model is loaded once. Documents stream through in windows of `score.sort_window`; inside a
window the texts are length-sorted into batches, so memory stays flat however large the input.
"""

from __future__ import annotations

import time
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

from pipelines.config import Settings
from pipelines.records import batched, get_field, set_field
from pipelines.sources import file_path, open_log_sink, open_log_source
from pipelines.telemetry import get_logger

log = get_logger("score")


def default_sink(source_uri: str) -> str:
    """For a file source, `<name>.scored.ndjson` beside it; for Elasticsearch, the documents' own index."""
    if source_uri.startswith(("http://", "https://", "elasticsearch://")):
        return source_uri
    path = file_path(source_uri)
    return f"file://{path.with_name(path.stem + '.scored.ndjson').resolve()}"


def annotate(docs: Iterable[tuple[str, dict]], classifier, model_name: str, version: str, settings: Settings,
             counts: dict[str, int], skipped: dict[str, int], rca=None) -> Iterator[tuple[str, dict]]:
    """Score documents window by window and set DESIGN.md's `ml.anomaly.*` and `ml.model.*` fields
    (and `ml.rca.*` through `rca`, a `serving.rca.RootCauseAnnotator`, in the same pass)."""
    fields = settings.fields
    for window in batched(docs, settings.score.sort_window):
        counts["read"] += len(window)
        scorable = []
        for where, doc in window:
            if isinstance(get_field(doc, fields.message), str):
                scorable.append((where, doc))
            else:
                skipped[f"no text in field '{fields.message}'"] = skipped.get(f"no text in field '{fields.message}'", 0) + 1
        if not scorable:
            continue
        probs = classifier.probabilities([get_field(d, fields.message) for _, d in scorable], settings.score.batch_size)
        threshold = float(classifier.thresholds[0])
        scored_at = datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
        for (where, doc), p in zip(scorable, probs[:, 0]):
            set_field(doc, "ml.anomaly.score", round(float(p), 6))
            set_field(doc, "ml.anomaly.is_anomaly", bool(p >= threshold))
            set_field(doc, "ml.model.name", model_name)
            set_field(doc, "ml.model.version", version)
            set_field(doc, "ml.scored_at", scored_at)
            counts["scored"] += 1
        if rca is not None:
            rca.annotate(scorable)
        yield from scorable


def score_logs(model_ref: str, source_uri: str, sink_uri: str | None, settings: Settings,
               start: datetime | None = None, end: datetime | None = None, rca_model: str | None = None) -> dict:
    """Score every document of the source (optionally only [start, end)) and write it to the sink.

    `rca_model`: the root-cause model for `ml.rca.*` (default: the failure-rca champion when there is one; "none": off).
    """
    from pipelines.registry import load_model, use_store
    from serving.rca import load_annotator

    client = use_store(settings)
    ref, model = load_model(client, model_ref)
    classifier = model.unwrap_python_model()
    rca = load_annotator(client, rca_model, settings)
    source = open_log_source(source_uri, settings)
    sink = open_log_sink(sink_uri or default_sink(source_uri), settings)
    counts = {"read": 0, "scored": 0}
    skipped: dict[str, int] = {}
    started = time.perf_counter()
    # Elasticsearch reads only the documents this version has not scored yet, resuming from the last checkpoint.
    marker = {"ml.model.name": ref.name, "ml.model.version": ref.version}
    docs = source.iter_unscored(marker, sink, start, end, skipped) if hasattr(source, "iter_unscored") else source.iter_docs(start, end)
    with closing(docs):  # a failed run still releases what the source holds (an Elasticsearch point-in-time)
        written = sink.write(annotate(docs, classifier, ref.name, ref.version, settings, counts, skipped, rca))
    seconds = time.perf_counter() - started
    out = {"model": ref.name, "version": ref.version, "source": source.uri, "sink": sink.uri, **counts, **written,
           "skipped": sum(skipped.values()), "skipped_reasons": skipped, "seconds": round(seconds, 2),
           "docs_per_s": counts["scored"] / seconds if seconds else 0.0}
    if rca is not None:
        out["rca"] = {"model": rca.name, "version": rca.version, **rca.counts}
    log.info("scored", extra=out)
    return out
