"""Batch scoring of log documents: read a source in windows, score, write the `ml.*` fields to a sink.

The model is loaded once. Documents stream through in groups of at most `score.max_pending`; a group's texts
that the run has not scored yet (`score.sort_window` of them, or fewer) are length-sorted into batches, so memory
stays flat however large the input.
Every document read is written, in the order read: one without text to score is written unchanged
and counted (`unscored`, by reason). A file sink resumes an interrupted run of the same model
version over unchanged source files (`resume_key`, `pipelines.sources.FileLogSink`). A shadow version
(`pipelines.scoring.shadow`) can be scored beside the model in the same pass, into `ml.shadow.*` or a sink of its own.
"""

from __future__ import annotations

import dataclasses
import gc
import time
from collections import OrderedDict
from contextlib import closing, contextmanager
from datetime import datetime, timezone
from itertools import islice
from typing import Iterable, Iterator

import numpy as np

from pipelines.config import Settings
from pipelines.data.records import batched, doc_context, format_timestamp, get_field, message_text, set_field
from pipelines.registry.store import load_model, use_store
from pipelines.scoring.root_causes import load_annotator
from pipelines.scoring.shadow import ShadowScorer, load_shadow, log_agreement
from pipelines.sources.logs import FileLogSink, file_path, open_log_sink, open_log_source
from pipelines.telemetry import get_logger, progress

log = get_logger("score")


def default_sink(source_uri: str) -> str:
    """For a file source, `<name>.scored.ndjson` beside it (`logs.ndjson.gz` -> `logs.scored.ndjson`); for a folder
    or glob, `scored.ndjson` in it; for Elasticsearch, the documents' own index."""
    if source_uri.startswith(("http://", "https://", "elasticsearch://")):
        return source_uri
    path = file_path(source_uri)
    if path.is_dir() or any(c in path.name for c in "*?["):
        folder = path if path.is_dir() else path.parent
        return f"file://{(folder / 'scored.ndjson').resolve()}"
    plain = path.with_suffix("") if path.suffix == ".gz" else path
    return f"file://{path.with_name(plain.stem + '.scored.ndjson').resolve()}"


def resume_key(source, model: tuple[str, str], rca, settings: Settings, start: datetime | None, end: datetime | None,
               shadow: ShadowScorer | None = None) -> dict | None:
    """What a file sink's interrupted run must share with this one to be resumed: the source files unchanged
    (size, mtime), the models (the shadow's version and mode too), the window and the fields. None (never
    resume) for a source that cannot say it is unchanged (Elasticsearch)."""
    if not hasattr(source, "fingerprint"):
        return None
    key = {"source": source.uri, "files": source.fingerprint(), "format": settings.inputs.format, "model": list(model),
           "rca": [rca.name, rca.version] if rca is not None else None,
           "window": [format_timestamp(t) if t else None for t in (start, end)], "fields": dataclasses.asdict(settings.fields)}
    if shadow is not None:
        key["shadow"] = shadow.key
    return key


class TextCache:
    """Probabilities of the most recently scored distinct texts (an LRU of `size` entries).

    Logs repeat across windows as well as inside one; with this cache each distinct text of a whole run is
    scored about once. Entries are keyed by the text the classifier reads (`read_as`: a message normalised), so
    messages that differ only in their masked parts (numbers, ids, paths) share one. Probabilities depend only
    on that text, so cached and fresh answers are identical.
    """

    def __init__(self, size: int):
        self.size = max(0, size)
        self.rows: OrderedDict[str, np.ndarray] = OrderedDict()

    def probabilities(self, classifier, texts: list[str], batch_size: int, keys: list[str] | None = None,
                      context: dict[str, list] | None = None) -> np.ndarray:
        """(len(texts), K), as `classifier.probabilities(texts)` would return. `context`: each context column's value
        per text (`doc_context`), for a version that reads them. `keys`: `read_as(classifier, texts, context)`, when
        the caller has them already."""
        from nightshift_models.text_classifier import context_fields  # pulls mlflow

        fields = context_fields(classifier)
        if not self.size:
            return classifier.probabilities(texts, batch_size, context) if fields else classifier.probabilities(texts, batch_size)
        keys = read_as(classifier, texts, context) if keys is None else keys
        missing: dict[str, int] = {}  # key -> the first row read as it: the one sent to the model
        for i, key in enumerate(keys):
            if key not in self.rows:
                missing.setdefault(key, i)
        if missing:
            rows = list(missing.values())
            sent = [texts[i] for i in rows]
            columns = {f: (context or {}).get(f) or [None] * len(texts) for f in fields}
            probs = (classifier.probabilities(sent, batch_size, {f: [column[i] for i in rows] for f, column in columns.items()})
                     if fields else classifier.probabilities(sent, batch_size))
            self.rows.update(zip(missing, probs))
        out = np.stack([self.rows[k] for k in keys])
        for k in keys:
            self.rows.move_to_end(k)
        while len(self.rows) > self.size:
            self.rows.popitem(last=False)
        return out

    def __contains__(self, key: str) -> bool:
        return key in self.rows


def read_as(classifier, texts: list[str], context: dict[str, list] | None = None) -> list[str]:
    """The text `classifier` reads for each message: for a `TextClassifier`, the normalised message, prefixed with
    its context fields' values (`context`; `[-]` where missing), as `probabilities` reads them; for any other
    classifier, the message itself."""
    from nightshift_models.text_classifier import TextClassifier, context_fields, model_texts  # pulls mlflow

    if isinstance(classifier, TextClassifier):
        return model_texts(texts, context_fields(classifier), context)
    return texts


def annotate(docs: Iterable[tuple[str, dict]], classifier, model_name: str, version: str, settings: Settings,
             counts: dict[str, int], unscored: dict[str, int], rca=None, shadow: ShadowScorer | None = None) -> Iterator[tuple[str, dict]]:
    """Score documents group by group and set DESIGN.md's `ml.anomaly.*` and `ml.model.*` fields
    (and `ml.rca.*` through `rca`, a `pipelines.scoring.root_causes.RootCauseAnnotator`, in the same pass; and
    `ml.shadow.*` through `shadow`, a `pipelines.scoring.shadow.ShadowScorer`, which in index mode sends them to its own
    sink and takes them off the documents yielded).

    Documents are read in windows of `score.sort_window`, and windows join a group until the group holds
    `score.sort_window` distinct texts the cache has no answer for, or `score.max_pending` documents, or the input
    ends. The group's new texts then go to the model in one call (length-sorted batches): logs repeat, so a window
    alone holds few new texts, and batches cut from a few hundred texts of every length carry far more padding.

    Yields every document, in the order read (in index mode, after a resume, less those the main sink already
    holds). One whose message field holds no text (missing, a number, an object) is yielded unchanged and
    counted in `unscored` by reason; an array of strings is scored as its lines joined.
    """
    fields, cfg = settings.fields, settings.score
    family = getattr(classifier, "family", "bert")  # the model family the version won with
    runtime = getattr(classifier, "runtime", None)  # what runs the forward pass: fp32 (PyTorch) or int8 (ONNX Runtime)
    cache = TextCache(cfg.cache_texts)
    threshold = float(classifier.thresholds[0])

    from nightshift_models.text_classifier import context_fields  # pulls mlflow

    reads = context_fields(classifier)

    def scored(group: list[tuple[str, dict]], scorable: list[tuple[str, dict]], texts: list[str], keys: list[str]):
        if scorable:
            probs = cache.probabilities(classifier, texts, cfg.batch_size, keys, doc_context([d for _, d in scorable], fields, reads))
            scored_at = format_timestamp(datetime.now(timezone.utc).replace(microsecond=0))
            champion = []
            for (where, doc), p in zip(scorable, probs[:, 0]):
                value, flag = round(float(p), 6), bool(p >= threshold)
                set_field(doc, "ml.anomaly.score", value)
                set_field(doc, "ml.anomaly.is_anomaly", flag)
                set_field(doc, "ml.model.name", model_name)
                set_field(doc, "ml.model.version", version)
                set_field(doc, "ml.model.family", family)
                if runtime is not None:
                    set_field(doc, "ml.model.runtime", runtime)
                set_field(doc, "ml.scored_at", scored_at)
                champion.append((value, flag))
                counts["scored"] += 1
            if shadow is not None:
                shadow.score(scorable, texts, champion)
            if rca is not None:
                rca.annotate(scorable)
        return shadow.route(group) if shadow is not None else group

    group: list[tuple[str, dict]] = []  # read, waiting for the group's model call
    scorable: list[tuple[str, dict]] = []
    texts: list[str] = []
    keys: list[str] = []
    new: set[str] = set()  # the group's distinct keys the cache has no answer for
    try:
        for window in batched(docs, cfg.sort_window):
            counts["read"] += len(window)
            first = len(texts)
            for where, doc in window:
                try:
                    texts.append(message_text(get_field(doc, fields.message)))
                except ValueError as exc:
                    reason = f"field '{fields.message}' {exc}"
                    unscored[reason] = unscored.get(reason, 0) + 1
                    continue
                scorable.append((where, doc))
            window_keys = read_as(classifier, texts[first:], doc_context([d for _, d in scorable[first:]], fields, reads))
            keys.extend(window_keys)
            new.update(k for k in window_keys if k not in cache)
            group.extend(window)
            if len(new) >= cfg.sort_window or len(group) >= cfg.max_pending:
                yield from scored(group, scorable, texts, keys)
                group, scorable, texts, keys, new = [], [], [], [], set()
        yield from scored(group, scorable, texts, keys)
        if shadow is not None:
            shadow.finish()  # its sink completes before the main one can
    except BaseException:  # an error, or the sink closing this generator: the shadow's sink keeps what it has
        if shadow is not None:
            shadow.abort()
        raise


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Leave the objects alive now (the loaded models, the imported libraries: millions of them) out of the cyclic
    garbage collector's passes until the block ends, so that a full pass walks only what scoring allocates. One full
    pass over all of them took 0.34 s in the middle of a 10k-document pull. Method: `gc.freeze`
    (https://docs.python.org/3/library/gc.html#gc.freeze); `gc.unfreeze` hands them back at the end, so a model
    released later is still collected. The freeze is process-wide: where the process had frozen its heap before
    (a pre-fork server's way to keep pages shared), it stays frozen."""
    frozen_before = gc.get_freeze_count() > 0
    gc.freeze()
    try:
        yield
    finally:
        if not frozen_before:
            gc.unfreeze()


def score_logs(model_ref: str, source_uri: str, sink_uri: str | None, settings: Settings,
               start: datetime | None = None, end: datetime | None = None, rca_model: str | None = None,
               shadow_model: str | None = None) -> dict:
    """Score every document of the source (optionally only [start, end)) and write it to the sink, with the forward
    pass setting `score.runtime` chooses (`ml.model.runtime` on each document, `runtime` in the result).

    `rca_model`: the root-cause model for `ml.rca.*` (default: the failure-rca champion when there is one; "none": off).
    `shadow_model`: a second log-anomaly version scored beside the model in the same pass (`pipelines.scoring.shadow`: into
    `ml.shadow.*`, or a sink of its own, as setting `score.shadow` says); None or "none": no shadow. The result's
    `shadow` holds its agreement with the model, also logged as `shadow.*` metrics on the shadow version's run.

    Raises:
        RegistryError: a model reference is not registered.
        ConfigError: a setting (`score.shadow`, `score.shadow_sink`, a sink) cannot be used.
    """
    source = open_log_source(source_uri, settings)  # before the models load: a bad URI or setting fails at once
    sink_uri = sink_uri or default_sink(source_uri)
    sink = open_log_sink(sink_uri, settings)
    client = use_store(settings)
    ref, model = load_model(client, model_ref)
    classifier = model.unwrap_python_model()
    if hasattr(classifier, "use_runtime"):  # a TextClassifier: setting score.runtime (int8 where the version allows it)
        classifier.use_runtime(settings.score.runtime)
    rca = load_annotator(client, rca_model, settings)
    shadow = load_shadow(client, shadow_model, ref, settings, TextCache(settings.score.cache_texts))
    with frozen_heap():  # the models are loaded: what the pass allocates is all the collector needs to walk
        if shadow is not None:
            shadow.open_sink(sink_uri, sink, source, settings)
        counts = {"read": 0, "scored": 0}
        skipped: dict[str, int] = {}  # not read: already scored (Elasticsearch)
        unscored: dict[str, int] = {}  # read and written unchanged: no text to score
        started = time.perf_counter()
        # Elasticsearch reads only the documents this version (and shadow, in fields mode) has not scored yet, resuming
        # from the last checkpoint.
        marker = {"ml.model.name": ref.name, "ml.model.version": ref.version, **(shadow.marker if shadow is not None else {})}
        # A file sink resumes after the documents an interrupted run of this same pass already wrote.
        key = resume_key(source, (ref.name, ref.version), rca, settings, start, end, shadow)
        done = sink.resume(key) if hasattr(sink, "resume") else 0
        if shadow is not None:  # index mode: its own sink may hold fewer (or more) than the main one
            done = shadow.resume(done, key, sink.partial if isinstance(sink, FileLogSink) else None)
        docs = source.iter_unscored(marker, sink, start, end, skipped) if hasattr(source, "iter_unscored") else source.iter_docs(start, end)
        with closing(docs), progress("score", unit="docs") as meter:  # a failed run still releases what the source holds
            todo = islice(docs, done, None) if done else docs
            try:
                written = sink.write(annotate(meter.wrap(todo), classifier, ref.name, ref.version, settings, counts, unscored, rca, shadow))
            except BaseException:
                if shadow is not None:
                    shadow.abort()  # when the sink failed before reading a document; otherwise done already
                raise
        seconds = time.perf_counter() - started
        out = {"model": ref.name, "version": ref.version, "runtime": getattr(classifier, "runtime", None), "source": source.uri, "sink": sink.uri, **counts, **written,
               "unscored": sum(unscored.values()), "unscored_reasons": unscored,
               "skipped": sum(skipped.values()), "skipped_reasons": skipped, "seconds": round(seconds, 2),
               "docs_per_s": counts["scored"] / seconds if seconds else 0.0}
        if rca is not None:
            out["rca"] = {"model": rca.name, "version": rca.version, **rca.counts}
        if shadow is not None:
            out["shadow"] = shadow.report(out)
            out["shadow"]["logged_to_run"] = shadow.run_id if log_agreement(client, out["shadow"], shadow.run_id, start) else None
    log.info("scored", extra=out)
    return out
