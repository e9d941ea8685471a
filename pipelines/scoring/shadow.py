"""Shadow scoring: a log-anomaly version that is not the champion, scored beside it in the nightly pass.

Which version (`shadow_candidate`): of the model's versions other than the champion, those whose tag
`promotion.decision` is `pending` (not gated yet; a version without the tag counts as pending) or `rejected`
with a version number above the champion's (registered after it, and lost its gate); of these, the newest
(highest version number). Abandoned, stale and rolled-back versions never shadow. The rule reads tags only,
not the `challenger` alias, which the gate removes once it decides. With no champion there is nothing to
compare against, so no shadow.

Where its answers go (setting `score.shadow`):
- `fields` (default): onto each document beside the champion's, as `ml.shadow.score`, `ml.shadow.is_anomaly`,
  `ml.shadow.model.name` and `ml.shadow.model.version`, in the same write. The file sink's run key and the
  Elasticsearch filter include the shadow version, so a resumed run keeps them and a new shadow re-reads.
- `index`: into a sink of its own (`score.shadow_sink`; by default `NAME.shadow.ndjson` beside a file sink, or
  the index `nightshift-ml-results-shadow` on an Elasticsearch sink's cluster), one document per document
  scored, holding `ml.shadow.*` only; the main sink gets the champion's fields alone. A file shadow sink is
  written like the main one (every document in the order read, all or nothing, resumable on its own; a rerun
  skips what both have written and each sink skips what it alone has). An Elasticsearch shadow index gets each
  window (upserts keyed by the source document) before the main sink does, so it is never behind the main
  sink's checkpoint. The main sink's filter knows only the champion there: a document the champion already
  scored is not read again, even for a new shadow.
- `off`: no shadow.

Agreement (`Agreement`): on the documents both versions scored, the share whose `is_anomaly` agrees, Cohen's
kappa, the mean absolute score difference, and the flips each way. A resumed file-sink run rebuilds the
agreement of the documents written before the interruption from the partial file(s), so it covers the whole
pass; a resumed Elasticsearch pass covers the documents it read (`covers: "this run"`). The numbers are
logged as metrics `shadow.*` on the shadow version's MLflow run.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit, urlunsplit

import numpy as np
from statsmodels.stats.inter_rater import cohens_kappa

from pipelines.config import ConfigError, Settings
from pipelines.data.records import doc_context, get_field, set_field
from pipelines.errors import InputError, NightshiftError
from pipelines.registry.store import CHAMPION, ModelRef, alias_version, load_model
from pipelines.sources.elastic.reader import ElasticsearchLogSource
from pipelines.sources.elastic.writer import ElasticsearchLogSink
from pipelines.sources.logs import FileLogSink, file_path, open_log_sink
from pipelines.telemetry import get_logger

log = get_logger("score.shadow")

FIELDS, INDEX, OFF = "fields", "index", "off"
SHADOW_MODES = (FIELDS, INDEX, OFF)
DEFAULT_SHADOW_INDEX = "nightshift-ml-results-shadow"  # matches the results-index template (nightshift-ml-results*)
PENDING, REJECTED = "pending", "rejected"
ES_SCHEMES = ("http://", "https://", "elasticsearch://")


class ShadowStopped(NightshiftError, RuntimeError):
    """The scoring pass stopped before the shadow sink was complete; the message names the sink."""


def shadow_mode(settings: Settings) -> str:
    """The setting `score.shadow`, checked.

    Raises:
        ConfigError: it is not one of fields, index, off.
    """
    mode = settings.score.shadow.strip().lower()
    if mode not in SHADOW_MODES:
        raise ConfigError(f"setting score.shadow (NIGHTSHIFT_SCORE_SHADOW): must be one of {', '.join(SHADOW_MODES)}, "
                          f"got {settings.score.shadow!r}")
    return mode


@dataclass(frozen=True)
class ShadowCandidate:
    """The version to shadow, the champion it is compared with, and its `promotion.decision`."""

    ref: ModelRef
    champion: str
    decision: str


def shadow_candidate(client, name: str = "log-anomaly") -> ShadowCandidate | None:
    """The version of `name` to score beside its champion (the module docstring's rule), or None: no champion,
    or no pending version and no rejected one newer than the champion.

    Raises:
        StoreUnreachable: the registry does not answer.
    """
    champion = alias_version(client, name, CHAMPION)
    if champion is None:
        return None
    best: tuple[int, str] | None = None
    for mv in client.search_model_versions(f"name='{name}'"):
        version, decision = int(mv.version), (mv.tags or {}).get("promotion.decision", PENDING)
        if str(version) == champion:
            continue
        if decision == PENDING or (decision == REJECTED and version > int(champion)):
            best = max(best or (version, decision), (version, decision))
    return ShadowCandidate(ModelRef(name, str(best[0])), champion, best[1]) if best else None


# ---- agreement ---------------------------------------------------------------------------------------------

@dataclass
class Agreement:
    """How often the shadow agrees with the champion, counted document by document (memory stays flat).

    `both_anomaly`/`both_normal`: the two agree; `to_anomaly`: the champion says normal and the shadow anomaly;
    `to_normal`: the reverse. `abs_diff`: the sum of |champion score - shadow score| (scores as written, in [0, 1]).
    """

    both_anomaly: int = 0
    both_normal: int = 0
    to_anomaly: int = 0
    to_normal: int = 0
    abs_diff: float = 0.0

    def add(self, champion_flags: Any, shadow_flags: Any, champion_scores: Any, shadow_scores: Any) -> None:
        """Count documents: four equal-length sequences (flags bool, scores in [0, 1])."""
        c, s = np.asarray(champion_flags, dtype=bool), np.asarray(shadow_flags, dtype=bool)
        self.both_anomaly += int(np.sum(c & s))
        self.both_normal += int(np.sum(~c & ~s))
        self.to_anomaly += int(np.sum(~c & s))
        self.to_normal += int(np.sum(c & ~s))
        self.abs_diff += float(np.sum(np.abs(np.asarray(champion_scores, dtype=float) - np.asarray(shadow_scores, dtype=float))))

    @property
    def documents(self) -> int:
        return self.both_anomaly + self.both_normal + self.to_anomaly + self.to_normal

    def kappa(self) -> float | None:
        """Cohen's kappa of the two models' flags, from the counted 2x2 table (statsmodels' `cohens_kappa`); None
        when it is undefined: no documents, or both models put every document in the same one class."""
        table = np.array([[self.both_anomaly, self.to_normal], [self.to_anomaly, self.both_normal]])  # champion rows
        if self.documents in (0, self.both_anomaly, self.both_normal):  # chance agreement is 1
            return None
        return float(cohens_kappa(table).kappa)

    def summary(self) -> dict[str, Any]:
        """`documents` compared; `agreement` (share in [0, 1], None with no documents), `kappa` (None when undefined),
        `mean_abs_score_diff`, `flips_to_anomaly`, `flips_to_normal`, and each model's anomaly count."""
        n = self.documents
        kappa = self.kappa()
        return {"documents": n, "agreement": round((self.both_anomaly + self.both_normal) / n, 6) if n else None,
                "kappa": round(kappa, 6) if kappa is not None else None,
                "mean_abs_score_diff": round(self.abs_diff / n, 6) if n else None,
                "flips_to_anomaly": self.to_anomaly, "flips_to_normal": self.to_normal,
                "champion_anomalies": self.both_anomaly + self.to_normal, "shadow_anomalies": self.both_anomaly + self.to_anomaly}


# ---- the shadow's own sink (index mode) --------------------------------------------------------------------

def shadow_sink_uri(main_sink_uri: str, setting: str) -> str:
    """Where index mode writes (`score.shadow_sink`): a URI as given; a bare name is an index on the main sink's
    cluster when that is Elasticsearch, else a file path; empty: the index `nightshift-ml-results-shadow` beside an
    Elasticsearch sink, `NAME.shadow.ndjson` beside a file sink (`logs.scored.ndjson` -> `logs.scored.shadow.ndjson`)."""
    setting = setting.strip()
    if "://" in setting:
        return setting
    if main_sink_uri.startswith(ES_SCHEMES):
        index, parts = setting or DEFAULT_SHADOW_INDEX, urlsplit(main_sink_uri)
        if parts.scheme == "elasticsearch":
            return f"elasticsearch://{index}"
        prefix = parts.path.rstrip("/").rpartition("/")[0]
        return urlunsplit(parts._replace(path=f"{prefix}/{index}"))
    if setting:
        return f"file://{Path(setting).resolve()}"
    path = file_path(main_sink_uri)
    stem = path.name.removesuffix(".ndjson")
    return f"file://{path.with_name(stem + '.shadow.ndjson').resolve()}"


_END, _ABORT = object(), object()


class _FileShadowSink:
    """A `FileLogSink` written on a thread of its own, fed window by window: the same all-or-nothing file and
    checkpoints as the main sink, resumed by its own count."""

    def __init__(self, sink: FileLogSink):
        self.sink, self.uri = sink, sink.uri
        self.queue: queue.Queue = queue.Queue(maxsize=2)  # windows in flight: memory stays a few windows
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.result: dict = {}
        self.taken = False

    def resume(self, key: dict | None) -> int | None:
        done = self.sink.resume(key)
        self.taken = True
        return done

    def prefix(self, n: int) -> Iterator[dict]:
        """The first `n` documents already in the partial file (after `resume`)."""
        return _read_prefix(self.sink.partial, n)

    def _docs(self) -> Iterator[tuple[str, dict]]:
        while True:
            item = self.queue.get()
            if item is _END:
                return
            if item is _ABORT:
                raise ShadowStopped(f"shadow sink {self.uri}: the scoring pass stopped; the next run resumes it")
            yield from item

    def _run(self) -> None:
        try:
            self.result = self.sink.write(self._docs())
        except BaseException as exc:  # handed to the scoring thread, which raises it
            self.error = exc

    def _put(self, item: object) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="shadow-sink", daemon=True)
            self.thread.start()
        while True:
            if self.error is not None:
                raise self.error
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                if not self.thread.is_alive():  # it stopped without an error only after _END or _ABORT
                    return

    def send(self, docs: list[tuple[str, dict]]) -> None:
        self._put(docs)

    def finish(self) -> dict:
        self._put(_END)
        assert self.thread is not None  # _put started it
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.result

    def abort(self) -> None:
        """Stop the writer after what it was sent: it checkpoints that (resumable) and releases the file."""
        if not self.taken or (self.thread is not None and not self.thread.is_alive()):
            return
        try:
            self._put(_ABORT)
        except BaseException:  # noqa: BLE001 - its own error: it has stopped already, and the pass's error matters more
            pass
        if self.thread is not None:
            self.thread.join()


class _IndexShadowSink:
    """An Elasticsearch index written window by window, each window acknowledged before the main sink gets it."""

    def __init__(self, sink: ElasticsearchLogSink):
        self.sink, self.uri = sink, sink.uri
        self.result: dict[str, Any] = {"written": 0, "failed": 0, "failed_reasons": {}}

    def resume(self, key: dict | None) -> int | None:
        return None  # upserts keyed by the source document: never behind the main sink, rewriting is harmless

    def prefix(self, n: int) -> Iterator[dict]:
        return iter(())

    def send(self, docs: list[tuple[str, dict]]) -> None:
        if not docs:
            return
        out = self.sink.write(iter(docs))
        self.result["written"] += out["written"]
        self.result["failed"] += out["failed"]
        for reason, n in out["failed_reasons"].items():
            self.result["failed_reasons"][reason] = self.result["failed_reasons"].get(reason, 0) + n

    def finish(self) -> dict:
        return self.result

    def abort(self) -> None:
        pass


def _read_prefix(path: Path, n: int) -> Iterator[dict]:
    """The first `n` NDJSON documents of `path`."""
    if n <= 0:
        return
    with open(path, "rb") as fh:
        for line in islice(fh, n):
            yield json.loads(line)


def _flag_and_score(doc: dict, prefix: str) -> tuple[bool, float] | None:
    flag, score = get_field(doc, f"{prefix}.is_anomaly"), get_field(doc, f"{prefix}.score")
    return (flag, float(score)) if isinstance(flag, bool) and isinstance(score, (int, float)) else None


# ---- the scorer --------------------------------------------------------------------------------------------

class ShadowScorer:
    """Scores each window's texts with the shadow version, counts the agreement, and routes its answers to the
    document (`fields`) or to its own sink (`index`). Built by `load_shadow`; driven by `pipelines.scoring.score_logs`."""

    def __init__(self, classifier, ref: ModelRef, champion: ModelRef, mode: str, settings: Settings, cache,
                 decision: str | None = None, run_id: str | None = None):
        self.classifier, self.ref, self.champion, self.mode = classifier, ref, champion, mode
        self.settings, self.decision, self.run_id = settings, decision, run_id
        self.cache = cache  # its own `pipelines.scoring.score_logs.TextCache`: answers by text, as the champion's
        self.agreement = Agreement()
        self.sink: _FileShadowSink | _IndexShadowSink | None = None
        self.sink_result: dict[str, Any] = {}
        self.position = 0  # documents routed in this run
        self.main_skip = self.sink_skip = 0  # index mode, resumed: documents only one of the two sinks already holds
        self.rebuilt = 0  # documents of an interrupted run whose agreement was read back from its partial file(s)
        self.covers_pass = True

    @property
    def marker(self) -> dict[str, str]:
        """What the Elasticsearch filter must also find on a document scored with this shadow (fields mode)."""
        return {"ml.shadow.model.name": self.ref.name, "ml.shadow.model.version": self.ref.version} if self.mode == FIELDS else {}

    @property
    def key(self) -> list[str]:
        """Its part of a file sink's run key."""
        return [self.ref.name, self.ref.version, self.mode]

    # -- the pass --
    def open_sink(self, main_sink_uri: str, main_sink, source, settings: Settings) -> None:
        """Index mode: open the shadow's own sink (`shadow_sink_uri` of the main sink's URI).

        Raises:
            ConfigError: it is the main sink, or the source's own index.
        """
        if self.mode != INDEX:
            return
        uri = shadow_sink_uri(main_sink_uri, settings.score.shadow_sink)
        sink = open_log_sink(uri, settings)
        if sink.uri == main_sink.uri:
            raise ConfigError(f"setting score.shadow_sink (NIGHTSHIFT_SCORE_SHADOW_SINK): {sink.uri} is the main sink; "
                              "name another file or index")
        if isinstance(sink, ElasticsearchLogSink):
            if isinstance(source, ElasticsearchLogSource) and sink.bind(source):
                raise ConfigError(f"setting score.shadow_sink (NIGHTSHIFT_SCORE_SHADOW_SINK): {sink.uri} is the source's own index; "
                                  "the shadow goes to a separate index")
            self.sink = _IndexShadowSink(sink)
        else:
            assert isinstance(sink, FileLogSink)
            self.sink = _FileShadowSink(sink)

    def resume(self, main_done: int, key: dict | None, main_partial: Path | None) -> int:
        """How many source documents to skip, given that the main sink already holds `main_done`; sets what each sink
        skips on its own, and rebuilds the agreement of the skipped documents from the partial file(s)."""
        shadow_done = self.sink.resume(key) if self.sink is not None else None
        skip = main_done if shadow_done is None else min(main_done, shadow_done)
        self.main_skip, self.sink_skip = main_done - skip, (shadow_done or 0) - skip
        if not skip:
            return 0
        if main_partial is None or (self.mode == INDEX and isinstance(self.sink, _IndexShadowSink)):
            self.covers_pass = False  # the shadow's answers for those documents are not in a file this run can read
            return skip
        pairs: Iterator[tuple[dict, dict]]
        if self.mode == FIELDS:
            pairs = ((doc, doc) for doc in _read_prefix(main_partial, skip))
        else:
            assert self.sink is not None
            pairs = zip(_read_prefix(main_partial, skip), self.sink.prefix(skip))
        rows = [(c, s) for main, shadow in pairs
                if (c := _flag_and_score(main, "ml.anomaly")) and (s := _flag_and_score(shadow, "ml.shadow"))]
        if rows:
            self.agreement.add([c[0] for c, _ in rows], [s[0] for _, s in rows], [c[1] for c, _ in rows], [s[1] for _, s in rows])
        self.rebuilt = len(rows)
        return skip

    def score(self, scorable: list[tuple[str, dict]], texts: list[str], champion: list[tuple[float, bool]]) -> None:
        """Set `ml.shadow.*` on the scored group's documents and count the agreement with the champion's
        (score, is_anomaly) of each."""
        from nightshift_models.text_classifier import context_fields

        context = doc_context([doc for _, doc in scorable], self.settings.fields, context_fields(self.classifier))
        probs = self.cache.probabilities(self.classifier, texts, self.settings.score.batch_size, context=context)[:, 0]
        threshold = float(self.classifier.thresholds[0])
        scores = [round(float(p), 6) for p in probs]
        flags = [bool(p >= threshold) for p in probs]
        for (_, doc), score, flag in zip(scorable, scores, flags):
            set_field(doc, "ml.shadow.score", score)
            set_field(doc, "ml.shadow.is_anomaly", flag)
            set_field(doc, "ml.shadow.model.name", self.ref.name)
            set_field(doc, "ml.shadow.model.version", self.ref.version)
        self.agreement.add([f for _, f in champion], flags, [s for s, _ in champion], scores)

    def route(self, window: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
        """The window's documents for the main sink. Index mode: their shadow copies (the document without `ml`,
        plus `ml.shadow`) go to the shadow's sink first, and `ml.shadow` leaves the main documents."""
        if self.mode != INDEX:
            return window
        assert self.sink is not None
        copies, main = [], []
        for where, doc in window:
            ml = doc.get("ml")
            shadow = ml.pop("shadow", None) if isinstance(ml, dict) else None
            if self.position >= self.sink_skip:
                copy = {k: v for k, v in doc.items() if k != "ml" and not k.startswith("ml.")}
                if shadow is not None:
                    copy["ml"] = {"shadow": shadow}
                copies.append((where, copy))
            if self.position >= self.main_skip:
                main.append((where, doc))
            self.position += 1
        self.sink.send(copies)
        return main

    def finish(self) -> None:
        """Index mode: complete the shadow's sink (before the main sink completes, so a failure there fails the pass)."""
        if self.sink is not None:
            self.sink_result = self.sink.finish()

    def abort(self) -> None:
        """The pass failed or was closed: the shadow's file sink checkpoints what it was sent and lets go (no-op otherwise)."""
        if self.sink is not None:
            self.sink.abort()

    # -- afterwards --
    def report(self, scoring: dict) -> dict[str, Any]:
        """What the pass's summary says about the shadow: the version, its decision, the mode, its sink (index mode)
        and the agreement (`Agreement.summary`), with `rebuilt_documents` and `covers`: "pass" when the agreement counts
        every document of the window, "this run" when some were written earlier and are not counted (`scoring`, the
        pass's counts, says the Elasticsearch source skipped some, or its sink resumed from a checkpoint)."""
        earlier = scoring.get("resumed_from") is not None or bool(scoring.get("skipped"))
        out: dict[str, Any] = {"model": self.ref.name, "version": self.ref.version, "decision": self.decision,
                               "champion_version": self.champion.version, "mode": self.mode, **self.agreement.summary(),
                               "covers": "pass" if self.covers_pass and not earlier else "this run", "rebuilt_documents": self.rebuilt}
        if self.sink is not None:
            out["sink"] = {"uri": self.sink.uri, **{k: v for k, v in self.sink_result.items() if k != "resumed_from"}}
        return out


def load_shadow(client, ref: str | None, champion: ModelRef, settings: Settings, cache) -> ShadowScorer | None:
    """The scorer for `ref` (`NAME/VERSION` or `NAME@ALIAS`); None for no ref or "none", under `score.shadow = off`, or
    when `ref` is the champion itself.

    Raises:
        ConfigError: `score.shadow` is not fields, index or off.
        RegistryError: `ref` is not registered.
        InputError: `ref` is not a log-anomaly model.
    """
    mode = shadow_mode(settings)
    if not ref or ref.lower() == "none":
        return None
    if mode == OFF:
        log.info("shadow scoring is off", extra={"shadow": ref, "setting": "score.shadow"})
        return None
    shadow_ref, model = load_model(client, ref)
    if shadow_ref == champion:
        log.info("the shadow is the champion itself: not scored twice", extra={"shadow": ref})
        return None
    classifier = model.unwrap_python_model()
    if getattr(classifier, "task", "log-anomaly") != "log-anomaly":
        raise InputError(f"shadow model {shadow_ref.name}/{shadow_ref.version}: is a '{classifier.task}' model, not log-anomaly")
    mv = client.get_model_version(shadow_ref.name, shadow_ref.version)
    return ShadowScorer(classifier, shadow_ref, champion, mode, settings, cache, (mv.tags or {}).get("promotion.decision", PENDING), mv.run_id)


def log_agreement(client, shadow: dict[str, Any], run_id: str | None, day: datetime | None) -> bool:
    """Log the agreement on the shadow version's run: metrics `shadow.documents`, `shadow.agreement`, `shadow.kappa`,
    `shadow.mean_abs_score_diff`, `shadow.flips_to_anomaly`, `shadow.flips_to_normal` (step: the window's first day as
    YYYYMMDD, else 0) and the tag `shadow.champion_version`. Returns whether it was logged: nothing is logged without
    compared documents or a run, and a store that refuses is a warning (the write-back is done; the summary keeps the
    numbers)."""
    if not run_id or not shadow.get("documents"):
        return False
    step = int(day.strftime("%Y%m%d")) if day else 0
    now = int(time.time() * 1000)
    names = ("documents", "agreement", "kappa", "mean_abs_score_diff", "flips_to_anomaly", "flips_to_normal")
    try:
        for name in names:
            if shadow.get(name) is not None:
                client.log_metric(run_id, f"shadow.{name}", float(shadow[name]), timestamp=now, step=step)
        client.set_tag(run_id, "shadow.champion_version", str(shadow["champion_version"]))
    except Exception as exc:  # noqa: BLE001 - see the docstring
        log.warning("shadow agreement not logged on the run", extra={"run_id": run_id, "reason": f"{type(exc).__name__}: {exc}"[:300]})
        return False
    return True

