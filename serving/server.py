"""`nightshift serve`: the champions answer over HTTP, in one process (FastAPI on uvicorn).

Reading order:
1. `Slot` and `Champions`: the version each model serves, loaded with `pipelines.registry.store.load_model`
   (the same pyfunc `mlflow models serve` runs) and re-resolved by alias every
   `serve.refresh_seconds` on a background thread. A moved alias is loaded first and then swapped in
   by one assignment; a request keeps the slot it started with, so a swap drops none.
2. `Batcher`: concurrent texts for one BERT model share a forward pass. Whatever queued while the
   previous pass ran goes into the next (up to `serve.max_batch` texts, waiting at most
   `serve.max_wait_ms` for more); every pass runs on one worker thread, so torch never competes
   with itself for the cores.
3. `ServerMetrics`: Prometheus counters and histograms by route, model and version.
4. `create_app`: the routes (`/v1/...`, the seed's `/predict` shapes, `/v1/admin/reload`, Alertmanager's
   webhook `/v1/alerts` (`serving/alerts.py`), `/healthz`, `/readyz`, `/metrics`), the request and answer schemas (OpenAPI at `/docs`), and the errors: 422
   naming the field, per-row errors where a route takes many rows, 413 for oversized bodies, 503 with
   the reason when a model has no champion. Every route but the health checks (and `/metrics` with
   `serve.metrics_public`) needs an API key with its scope (`serving/auth.py`): the scoring routes sit
   on one router that requires `score`, the admin routes on one that requires `admin`, the webhook on one
   that requires `alerts`, and the app
   refuses to start with a route that has no key check.
5. `serve`: uvicorn on a bound socket, HTTPS with `serve.tls_certfile` and `serve.tls_keyfile`.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, ConfigDict, Field

from pipelines.config import ConfigError, Settings
from pipelines.data.records import format_duration, parse_duration, parse_timestamp
from pipelines.errors import NightshiftError
from pipelines.registry.store import alias_version, load_model, use_store
from pipelines.sources.prometheus import series_id
from pipelines.telemetry import get_logger
from serving.alerts import AlertmanagerMessage, AlertResponder, AlertsResponse
from serving.auth import ADMIN, ALERTS, REFUSALS, SCORE, Guard, KeyFileError, load_keys

log = get_logger("serve")
access_log = get_logger("serve.access")  # one line per request, with the API key's name

LOG_ANOMALY, FAILURE_RCA, METRIC_FORECAST = "log-anomaly", "failure-rca", "metric-forecast"


class NoChampion(NightshiftError, LookupError):
    """A model has nothing to serve yet; the message says why (answered as 503)."""


def json_safe(value: Any) -> Any:
    """`value` with each float that JSON cannot hold (NaN, infinity: Python's json reads them in a request) as its text."""
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def unprocessable(field_path: list[str | int], message: str) -> HTTPException:
    """A 422 in FastAPI's own shape, naming the field at fault."""
    return HTTPException(422, detail=[{"loc": ["body", *field_path], "msg": message, "type": "value_error"}])


# ---- 1. the served versions ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Slot:
    """One loaded version: `model` is its pyfunc's python model (`TextClassifier` or `MetricForecaster`)."""

    name: str
    version: str
    model: Any
    family: str
    load_seconds: float
    loaded_at: float = field(default_factory=time.time)


class Champions:
    """The served version of each model, re-resolved by alias on a background thread."""

    def __init__(self, client, names: list[str], alias: str, where: str, on_swap=None, runtime: str = "int8"):
        self.client, self.names, self.alias, self.where = client, names, alias, where
        self.runtime = runtime  # setting score.runtime: the forward pass of each log model loaded (int8 where the version allows it)
        self.slots: dict[str, Slot | None] = {name: None for name in names}
        self.reasons: dict[str, str] = {name: "loading" for name in names}
        self.refreshed = threading.Event()  # set after the first pass: /readyz knows each model's state
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._on_swap = on_swap
        self._passes = threading.Lock()  # the background loop and an admin's reload never load the same version twice

    def get(self, name: str) -> Slot:
        """The slot serving `name` now.

        Raises:
            NoChampion: nothing is loaded for `name`; the message says why.
        """
        slot = self.slots.get(name)
        if slot is None:
            if name not in self.slots:
                raise NoChampion(f"{name} is not served here (setting serve.models)")
            raise NoChampion(f"{name}: {self.reasons[name]}")
        return slot

    def refresh(self) -> None:
        """One pass: read each alias; load a version the alias moved to, then swap it in."""
        with self._passes:
            try:
                self._refresh()
            finally:
                self.refreshed.set()

    def states(self) -> dict[str, dict[str, Any]]:
        """Each model's served version, or why none is served."""
        return {name: ({"version": slot.version, "family": slot.family, "load_seconds": round(slot.load_seconds, 3),
                        **({"runtime": slot.model.runtime} if hasattr(slot.model, "runtime") else {})}
                       if (slot := self.slots[name]) else {"version": None, "reason": self.reasons[name]}) for name in self.names}

    def _refresh(self) -> None:
        for name in self.names:
            try:
                version = alias_version(self.client, name, self.alias)
            except Exception as exc:  # the store is unreachable for a moment: keep serving what is loaded
                self.reasons[name] = f"cannot read alias '{self.alias}' from {self.where} ({exc.__class__.__name__})"
                continue
            current = self.slots[name]
            if version is None:
                if current is None:
                    self.reasons[name] = (f"no champion yet: no version of {name} has the alias '{self.alias}' in the registry at "
                                          f"{self.where} (train one: nightshift train {name} ..., or make demo)")
                continue
            if current is not None and current.version == version:
                continue
            started = time.perf_counter()
            try:
                ref, pyfunc = load_model(self.client, f"{name}/{version}")
                model = pyfunc.unwrap_python_model()
                if hasattr(model, "use_runtime"):
                    model.use_runtime(self.runtime)
            except Exception as exc:  # a broken version must not take the served one down
                self.reasons[name] = f"version {version} (alias '{self.alias}') failed to load: {exc}"
                log.error("model load failed", extra={"model": name, "version": version, "error": str(exc)})
                continue
            slot = Slot(name, ref.version, model, getattr(model, "family", "unknown"), time.perf_counter() - started)
            self.slots[name] = slot  # the swap: requests that hold the old slot finish on it
            self.reasons[name] = "serving"
            log.info("model swapped in", extra={"model": name, "version": slot.version, "previous": current.version if current else None,
                                                "load_seconds": round(slot.load_seconds, 3)})
            if self._on_swap:
                self._on_swap(current, slot)

    def start(self, every: float) -> None:
        """Refresh now and then every `every` seconds, on a daemon thread."""
        def loop() -> None:
            while True:
                try:
                    self.refresh()
                except Exception as exc:  # keep the loop alive whatever one pass hits
                    log.error("refresh failed", extra={"error": str(exc)})
                if self._stop.wait(every):
                    return

        self._thread = threading.Thread(target=loop, name="nightshift-serve-refresh", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


# ---- 2. batching ------------------------------------------------------------------------------------------

class Batcher:
    """Queue texts for one BERT model; one forward pass answers every request queued together."""

    def __init__(self, name: str, champions: Champions, executor: ThreadPoolExecutor, max_batch: int, max_wait: float,
                 observe_batch):
        self.name, self.champions, self.executor = name, champions, executor
        self.max_batch, self.max_wait, self.observe_batch = max_batch, max_wait, observe_batch
        self.queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None

    async def probabilities(self, texts: list[str], context: dict[str, list[Any]] | None = None) -> tuple[Slot, np.ndarray]:
        """(the slot that answered, sigmoid outputs (len(texts), K)). `context`: per-row values of context columns
        (`level`, ...), read by a version that was trained with them.

        Raises:
            NoChampion: nothing is served for this model.
        """
        if self.queue is None:
            self.queue = asyncio.Queue()
            self._task = asyncio.create_task(self._work())
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((texts, context or {}, future))
        return await future

    async def _work(self) -> None:
        from nightshift_models.text_classifier import context_fields

        loop = asyncio.get_running_loop()
        queue = self.queue
        assert queue is not None  # probabilities() creates it before it starts this task
        while True:
            batch = [await queue.get()]
            size = len(batch[0][0])
            deadline = loop.time() + self.max_wait
            while size < self.max_batch:
                try:
                    item = queue.get_nowait() if queue.qsize() else await asyncio.wait_for(
                        queue.get(), max(0.0, deadline - loop.time()))
                except (asyncio.TimeoutError, asyncio.QueueEmpty):
                    break
                batch.append(item)
                size += len(item[0])
            texts = [t for item_texts, _, _ in batch for t in item_texts]
            try:
                slot = self.champions.get(self.name)  # the version serving now answers the whole batch
                fields = context_fields(slot.model)
                context = {f: [v for item_texts, item_context, _ in batch for v in item_context.get(f) or [None] * len(item_texts)]
                           for f in fields}
                probs = await loop.run_in_executor(self.executor, slot.model.probabilities, texts, self.max_batch,
                                                   *((context,) if fields else ()))
            except Exception as exc:
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.observe_batch(slot, len(texts))
            start = 0
            for item_texts, _, future in batch:
                if not future.done():
                    future.set_result((slot, probs[start:start + len(item_texts)]))
                start += len(item_texts)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()


# ---- 3. metrics -------------------------------------------------------------------------------------------

class ServerMetrics:
    """The server's own Prometheus registry (not the process-global one: two servers in one process stay apart)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("nightshift_serve_requests", "Requests answered, by route, model, version and HTTP status",
                                ["route", "model", "version", "status"], registry=self.registry)
        self.latency = Histogram("nightshift_serve_request_seconds", "Request latency in seconds, by route, model and version",
                                 ["route", "model", "version"], registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))
        self.batch_texts = Histogram("nightshift_serve_batch_texts", "Texts per forward pass (concurrent requests batched together)",
                                     ["model", "version"], registry=self.registry,
                                     buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
        self.load_seconds = Gauge("nightshift_serve_model_load_seconds", "Seconds it took to load each served version",
                                  ["model", "version"], registry=self.registry)
        self.served = Gauge("nightshift_serve_model_info", "1 for the version each model serves now",
                            ["model", "version", "family"], registry=self.registry)

    def swapped(self, old: Slot | None, new: Slot) -> None:
        if old is not None:
            self.served.remove(old.name, old.version, old.family)
        self.served.labels(new.name, new.version, new.family).set(1)
        self.load_seconds.labels(new.name, new.version).set(new.load_seconds)

    def batch(self, slot: Slot, texts: int) -> None:
        self.batch_texts.labels(slot.name, slot.version).observe(texts)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


# ---- 4. the HTTP interface --------------------------------------------------------------------------------

class Served(BaseModel):
    model: str = Field(description="registered model name")
    version: str = Field(description="the registered version that answered")
    family: str = Field(description="what answers: bert-cls / bert-mean, or the forecaster's family (committee, lstm, ets, ...)")


class LogAnomalyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"texts": ["Out of memory: Killed process 4242 (python)",
                                                                                          "GET /healthz 200"]}]})
    texts: list[Any] = Field(min_length=1, description="raw log lines; a row that is not non-empty text gets its own error")
    level: list[str | None] | None = Field(None, description="each line's log level (its `log.level`), one per text; a version "
                                                            "trained with the level reads it, null where unknown")
    threshold: float | None = Field(None, ge=0, le=1, description="instead of the version's tuned threshold")


class AnomalyRow(BaseModel):
    score: float | None = Field(None, description="anomaly probability, 0..1")
    is_anomaly: bool | None = None
    error: str | None = Field(None, description="why this row was not scored")


class LogAnomalyResponse(Served):
    threshold: float
    results: list[AnomalyRow]
    errors: int = Field(description="rows not scored")


class RcaRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"text": "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB", "threshold": 0.5}]})
    text: Any = Field(None, description="a failed job's text (its error lines); or `texts` for several")
    texts: list[Any] | None = Field(None, min_length=1, description="several failed jobs; a bad row gets its own error")
    threshold: float | None = Field(None, ge=0, le=1, description="one threshold for every label instead of the tuned ones")
    kb_min_similarity: float | None = Field(None, ge=0, le=1, description="the knowledge-base floor instead of the version's own")


class KbMatch(BaseModel):
    id: str | None = Field(description="the matched entry; null when the nearest is below the floor")
    title: str | None = None
    similarity: float = Field(description="TF-IDF cosine of the nearest entry, 0..1")
    min_similarity: float = Field(description="the floor below which no entry and no actions come back")
    nearest: str | None = Field(None, description="the nearest entry, even below the floor")


class RcaAnswer(BaseModel):
    labels: list[str] = []
    scores: dict[str, float] = {}
    actions: list[str] = []
    low_confidence: bool = False
    kb_match: KbMatch | None = Field(None, description="the knowledge-base fallback, when no label passed its threshold")
    error: str | None = None


class RcaResponse(Served, RcaAnswer):
    pass


class RcaManyResponse(Served):
    results: list[RcaAnswer]
    errors: int


class ForecastRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"series": [0.61, 0.63, 0.6, 0.64], "step": "15m"}]})
    series: list[float | None] | None = Field(None, description="one series' values, oldest first, one per step; null is a gap")
    step: str | None = Field(None, description="spacing of `series` (e.g. 15m); must be the version's step")
    end: str | float | None = Field(None, description="time of the last value of `series` (default: now, on the step grid)")
    name: str | None = Field(None, description="the series id of `series`, so a series the version knows keeps its own scaling")
    rows: list[Any] | None = Field(None, min_length=1, description='points {"timestamp", "value", "labels": {...}} or {"series": id, ...}')
    min_history: float | None = Field(None, ge=0, le=1, description="share of the lookback that must be observed (default: setting serve.min_history)")
    short_history: Literal["refuse", "flag"] | None = Field(None, description="below min_history: refuse, or forecast and flag")


class ForecastPoint(BaseModel):
    horizon: int = Field(description="steps ahead")
    lead: str = Field(description="time ahead, e.g. 30m")
    timestamp: str = Field(description="UTC, ISO-8601")
    p10: float
    p50: float
    p90: float


class SeriesForecast(BaseModel):
    series: str
    observed_fraction: float = Field(description="share of the lookback that held a value")
    short_history: bool = Field(description="observed_fraction is below min_history (answered only with short_history=flag)")
    points: list[ForecastPoint]


class ForecastError(BaseModel):
    row: int | None = None
    series: str | None = None
    field: str | None = None
    error: str


class ForecastResponse(Served):
    step: str
    lookback: int
    horizon: int
    min_history: float
    forecasts: list[SeriesForecast]
    errors: list[ForecastError] = []


class SeedTextRequest(BaseModel):
    """The seed's log-anomaly and RCA request: `{"text", "threshold"?, "save_dir"?}` (save_dir is ignored)."""

    model_config = ConfigDict(extra="forbid")
    text: str
    threshold: float | None = Field(None, ge=0, le=1)
    save_dir: str | None = Field(None, description="ignored: the registry's champion answers")


class SeedSeriesRequest(BaseModel):
    """The seed's metric request: `{"series": [floats], "save_dir"?}`."""

    model_config = ConfigDict(extra="forbid")
    series: list[float]
    save_dir: str | None = Field(None, description="ignored: the registry's champion answers")


@dataclass
class Server:
    """What the routes share: settings, champions, batchers, the worker thread and the metrics."""

    settings: Settings
    champions: Champions
    metrics: ServerMetrics
    executor: ThreadPoolExecutor
    batchers: dict[str, Batcher]

    async def run(self, fn, *args):
        """Run blocking model code on the worker thread."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    @asynccontextmanager
    async def observe(self, route: str, model: str):
        """Count and time one request; the handler sets `seen["version"]` once it knows which version answers."""
        seen = {"version": "none", "status": "200"}
        started = time.perf_counter()
        try:
            yield seen
        except HTTPException as exc:
            seen["status"] = str(exc.status_code)
            raise
        except NoChampion as exc:
            seen["status"] = "503"
            raise HTTPException(503, detail=str(exc)) from None
        except Exception:
            seen["status"] = "500"
            raise
        finally:
            self.metrics.requests.labels(route, model, seen["version"], seen["status"]).inc()
            self.metrics.latency.labels(route, model, seen["version"]).observe(time.perf_counter() - started)

    def check_rows(self, what: str, count: int) -> None:
        if count > self.settings.serve.max_rows:
            raise HTTPException(413, detail=f"{what}: {count} rows, more than the {self.settings.serve.max_rows} "
                                            "accepted per request (setting serve.max_rows)")

    # -- the answers, shared by the /v1 routes and the seed's -----------------------------------------------

    async def classify(self, name: str, values: list[Any], field_name: str,
                       context: dict[str, list[Any]] | None = None) -> tuple[Slot, list[str | None], np.ndarray, list[int]]:
        """Score the readable rows of `values` with `name`'s champion in a shared forward pass; `context`: per-row
        values of context columns (one per row of `values`).

        Returns (slot, per-row problem or None, probabilities of the readable rows, their positions).
        """
        from nightshift_models.text_classifier import text_problem

        self.check_rows(field_name, len(values))
        self.champions.get(name)  # 503 before any work when there is no champion
        for column, given in (context or {}).items():
            if len(given) != len(values):
                raise unprocessable([column], f"{len(given)} values for {len(values)} rows of '{field_name}'")
        problems = [text_problem(v, self.settings.serve.max_text_chars) for v in values]
        if field_name == "texts":  # many rows: each error names its row
            problems = [f"'texts[{i}]' {p}" if p else None for i, p in enumerate(problems)]
        good = [i for i, p in enumerate(problems) if p is None]
        if not good:
            slot = self.champions.get(name)
            return slot, problems, np.zeros((0, 1), dtype=np.float32), good
        slot, probs = await self.batchers[name].probabilities([values[i] for i in good],
                                                              {c: [given[i] for i in good] for c, given in (context or {}).items()})
        return slot, problems, probs, good

    async def rca_answers(self, values: list[Any], field_name: str, threshold: float | None,
                          kb_min_similarity: float | None) -> tuple[Slot, list[RcaAnswer]]:
        from nightshift_models.text_classifier import Options

        slot, problems, probs, good = await self.classify(FAILURE_RCA, values, field_name)
        head = slot.model.rca
        frame = slot.model.format(probs, [values[i] for i in good], Options(threshold=threshold, kb_min_similarity=kb_min_similarity)) \
            if good else None
        floor = head.knowledge_base.min_similarity if kb_min_similarity is None else kb_min_similarity
        entries = {e.id: e for e in head.knowledge_base.entries}
        answers = [RcaAnswer(error=p) if p else RcaAnswer() for p in problems]
        nearest = dict(zip(good, head.knowledge_base.match([values[i] for i in good], 0.0))) if good else {}
        for row, i in zip(frame.itertuples(index=False) if frame is not None else [], good):
            kb = None
            if row.low_confidence:
                entry = entries.get(row.kb_match) if row.kb_match else None
                near = nearest[i].nearest
                kb = KbMatch(id=entry.id if entry else None, title=entry.title if entry else None, similarity=float(nearest[i].similarity),
                             min_similarity=floor, nearest=near.id if near else None)
            answers[i] = RcaAnswer(labels=list(row.labels), scores=dict(row.scores), actions=list(row.actions),
                                   low_confidence=bool(row.low_confidence), kb_match=kb)
        return slot, answers

    async def forecast(self, body: ForecastRequest) -> ForecastResponse:
        """Forecasts for `series` (one list) or `rows` (points of any series); bad rows and short series become errors."""
        slot = self.champions.get(METRIC_FORECAST)
        cfg = slot.model.cfg
        if (body.series is None) == (body.rows is None):
            raise unprocessable(["series"], "send either 'series' (one series' values) or 'rows' (points with labels), not both or neither")
        min_history = self.settings.serve.min_history if body.min_history is None else body.min_history
        mode = body.short_history or self.settings.serve.short_history
        if body.rows is not None:
            frame, errors = self.rows_frame(body.rows)
        else:
            frame, errors = self.series_frame(body, cfg.step, parse_duration)
        if frame.empty:
            raise unprocessable(["rows" if body.rows is not None else "series"], "no point with a time and a finite value to forecast from"
                                + (f" ({len(errors)} rows refused: {errors[0].error})" if errors else ""))
        from mlflow.exceptions import MlflowException

        try:
            pred = await self.run(slot.model.predict, None, frame, {"min_history": min_history, "short_history": "flag", "with_history": True})
        except MlflowException as exc:  # the pyfunc's own input checks (e.g. points closer than the step)
            raise unprocessable(["rows" if body.rows is not None else "series"], exc.message) from None
        forecasts = []
        for sid, rows in pred.groupby("series", sort=False):
            observed, short = float(rows["observed_fraction"].iloc[0]), bool(rows["short_history"].iloc[0])
            if short and mode == "refuse":
                message = (f"{observed:.0%} of the {cfg.lookback}-step lookback ({format_duration(cfg.step * cfg.lookback)}) observed, "
                           f"less than min_history {min_history:.0%}; send more history, or short_history='flag' to forecast anyway")
                if body.series is not None:
                    raise unprocessable(["series"], message)
                errors.append(ForecastError(series=str(sid), field="rows", error=message))
                continue
            if not np.isfinite(rows[["p10", "p50", "p90"]].to_numpy(dtype=np.float64)).all():  # JSON holds no NaN or infinity
                message = "the forecast is not a finite number: values of this magnitude overflow the model's scaling"
                if body.series is not None:
                    raise unprocessable(["series"], message)
                errors.append(ForecastError(series=str(sid), field="rows", error=message))
                continue
            points = [ForecastPoint(horizon=int(r.horizon), lead=format_duration(cfg.step * int(r.horizon)),
                                    timestamp=pd.Timestamp(r.timestamp).tz_localize("UTC").isoformat().replace("+00:00", "Z"),
                                    p10=float(r.p10), p50=float(r.p50), p90=float(r.p90)) for r in rows.itertuples(index=False)]
            forecasts.append(SeriesForecast(series=str(sid), observed_fraction=round(observed, 4), short_history=short, points=points))
        return ForecastResponse(model=slot.name, version=slot.version, family=slot.family, step=format_duration(cfg.step),
                                lookback=cfg.lookback, horizon=cfg.horizon, min_history=min_history, forecasts=forecasts, errors=errors)

    def series_frame(self, body: ForecastRequest, step: float, parse_duration) -> tuple[pd.DataFrame, list[ForecastError]]:
        """The seed's `{"series": [floats]}`: values one step apart, the last at `end` (default: now, on the step grid)."""
        series = body.series
        assert series is not None  # forecast() sends here only a body with `series`
        self.check_rows("series", len(series))
        if body.step is not None:
            try:
                given = parse_duration(body.step)
            except ValueError as exc:
                raise unprocessable(["step"], str(exc)) from None
            if abs(given - step) > 1e-9:
                raise unprocessable(["step"], f"{body.step} is not this version's step ({step:g}s): resample the series to one value "
                                              "per step first")
        if body.end is not None:
            try:
                end = parse_timestamp(body.end).timestamp()
            except ValueError as exc:
                raise unprocessable(["end"], str(exc)) from None
        else:
            end = np.floor(time.time() / step) * step
        times = end - step * np.arange(len(series) - 1, -1, -1)
        values = np.array([np.nan if v is None else v for v in series], dtype=np.float64)
        return pd.DataFrame({"timestamp": pd.to_datetime(np.rint(times * 1e9).astype("int64")),
                             "series": body.name or "series", "value": values}), []

    def rows_frame(self, rows: list[Any]) -> tuple[pd.DataFrame, list[ForecastError]]:
        """Points `{"timestamp", "value", "labels" | "series"}`; a row at fault is reported and left out."""
        self.check_rows("rows", len(rows))
        times, ids, values, errors = [], [], [], []
        for i, row in enumerate(rows):
            def bad(field_name: str, message: str) -> None:
                errors.append(ForecastError(row=i, field=field_name, error=message))

            if not isinstance(row, dict):
                bad("rows", f"is a {type(row).__name__}, not an object with timestamp, value and labels or series")
                continue
            labels, sid = row.get("labels"), row.get("series")
            if isinstance(labels, dict) and labels and all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
                sid = series_id(labels)
            elif labels is not None:
                bad("labels", "must be an object of string label values")
                continue
            if not isinstance(sid, str) or not sid:
                bad("series", "needs 'labels' or a 'series' id")
                continue
            value = row.get("value")
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                bad("value", f"{value!r} is not a number")
                continue
            try:
                ts = parse_timestamp(row.get("timestamp"))
            except (ValueError, TypeError) as exc:
                bad("timestamp", str(exc) if row.get("timestamp") is not None else "is missing")
                continue
            times.append(ts.timestamp())
            ids.append(sid)
            values.append(np.nan if value is None else float(value))
        frame = pd.DataFrame({"timestamp": pd.to_datetime(np.rint(np.asarray(times, dtype=np.float64) * 1e9).astype("int64")),
                              "series": pd.Series(ids, dtype=object), "value": np.asarray(values, dtype=np.float64)})
        return frame[np.isfinite(frame["value"])], errors


class ReloadResponse(BaseModel):
    keys: int = Field(description="API keys in the key file, read again")
    models: dict[str, dict[str, Any]] = Field(description="each model's served version (or why none is), after re-reading its alias")


PUBLIC_PATHS = {"/healthz", "/readyz"}  # answer without a key (probes); /metrics too with serve.metrics_public
DOCS_ASSETS = "/docs-assets"  # Swagger UI's and ReDoc's scripts, served from the fastapi-offline package
SCHEMA_PATHS = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", DOCS_ASSETS}  # the API's description, no data


def create_app(settings: Settings, client=None, start_refresh: bool = True) -> FastAPI:
    """The FastAPI application serving the configured models' `serve.alias` versions from the registry.

    `client`: an MlflowClient (default: `pipelines.registry.store.use_store(settings)`).

    Raises:
        ConfigError: a serve setting cannot be used (`serve.short_history`, `serve.rate_limit`).
        KeyFileError: there is no API key file (the message says how to make one), or it has a bad line.
    """
    cfg = settings.serve
    if cfg.short_history not in ("refuse", "flag"):
        raise ConfigError(f"setting serve.short_history: {cfg.short_history!r} is not refuse or flag")
    metrics = ServerMetrics()

    def refused(route: str, status: int) -> None:
        metrics.requests.labels(route, ROUTE_MODELS.get(route, "none"), "none", str(status)).inc()

    guard = Guard(load_keys(settings), cfg.rate_limit, on_refused=refused)  # before the store: a missing key file fails fast
    client = client or use_store(settings)
    names = [n.strip() for n in cfg.models.split(",") if n.strip()]
    champions = Champions(client, names, cfg.alias, settings.mlflow_uri, on_swap=metrics.swapped, runtime=settings.score.runtime)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nightshift-serve-model")
    batchers = {name: Batcher(name, champions, executor, cfg.max_batch, cfg.max_wait_ms / 1000, metrics.batch)
                for name in (LOG_ANOMALY, FAILURE_RCA)}
    server = Server(settings, champions, metrics, executor, batchers)
    alerts = AlertResponder(server, settings)  # before the app: a bad [alerts] setting stops the server at startup

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if cfg.threads > 0:
            import torch

            torch.set_num_threads(cfg.threads)
        if start_refresh:
            champions.start(cfg.refresh_seconds)
        yield
        champions.stop()
        for batcher in batchers.values():
            await batcher.close()
        alerts.close()
        executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPIOffline(title="nightshift serve", version="1", lifespan=lifespan, static_url=DOCS_ASSETS,
                  description="The champions of log-anomaly, failure-rca and metric-forecast, re-resolved by alias "
                              f"'{cfg.alias}' every {cfg.refresh_seconds:g}s.")
    app.state.server = server
    app.state.guard = guard
    app.add_middleware(BodyLimit, limit=cfg.max_body_bytes)
    app.add_middleware(AccessLog)  # outermost: it sees every answer, the 413s included
    # The scoring routes need a key with `score`, the admin routes one with `admin`: a route joins by its router.
    scoring = APIRouter(dependencies=[Depends(guard.require(SCORE))],
                        responses={**REFUSALS, 503: {"description": "the model has no champion to answer with (the reason is given)"}})
    admin = APIRouter(dependencies=[Depends(guard.require(ADMIN))], responses=REFUSALS)
    alerting = APIRouter(dependencies=[Depends(guard.require(ALERTS))],
                         responses={**REFUSALS, 503: {"description": "no failure-rca version to answer with, or a job could not be "
                                                                     "answered (Alertmanager delivers the message again)"}})

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        """FastAPI's own 422 (naming the field), counted like every other answer."""
        from fastapi.encoders import jsonable_encoder

        route = request.url.path
        metrics.requests.labels(route, ROUTE_MODELS.get(route, "none"), "none", "422").inc()
        return JSONResponse({"detail": json_safe(jsonable_encoder(exc.errors()))}, status_code=422)

    @app.get("/healthz", tags=["health"], summary="the process answers")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="200 once models are loaded; each model's state")
    async def readyz():
        ready = champions.refreshed.is_set() and any(champions.slots.values())
        return JSONResponse({"ready": ready, "models": champions.states()}, status_code=200 if ready else 503)

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics" + ("" if cfg.metrics_public else " (any API key)"),
             dependencies=[] if cfg.metrics_public else [Depends(guard.require(None))],
             responses={} if cfg.metrics_public else REFUSALS)
    async def prometheus_metrics() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @admin.post("/v1/admin/reload", tags=["admin"], response_model=ReloadResponse,
                summary="read the API key file and every model's alias again, now",
                responses={409: {"description": "the key file has a bad line: the keys in use stay, nothing was reloaded"}})
    async def reload() -> ReloadResponse:
        try:
            keys = guard.reload(settings)
        except KeyFileError as exc:
            raise HTTPException(409, detail=f"{exc}; the keys in use stay") from None
        await asyncio.to_thread(champions.refresh)
        log.info("reloaded", extra={"keys": keys})
        return ReloadResponse(keys=keys, models=champions.states())

    @scoring.post("/v1/log-anomaly", tags=["v1"], response_model=LogAnomalyResponse,
                  summary="anomaly score of each log line; a bad row gets its own error")
    async def log_anomaly(body: LogAnomalyRequest) -> LogAnomalyResponse:
        async with server.observe("/v1/log-anomaly", LOG_ANOMALY) as seen:
            slot, problems, probs, good = await server.classify(LOG_ANOMALY, body.texts, "texts",
                                                                {"level": body.level} if body.level is not None else None)
            seen["version"] = slot.version
            threshold = float(slot.model.thresholds[0]) if body.threshold is None else body.threshold
            results = [AnomalyRow(error=p) if p else AnomalyRow() for p in problems]
            for i, p in zip(good, probs[:, 0]):
                results[i] = AnomalyRow(score=float(p), is_anomaly=bool(p >= threshold))
            return LogAnomalyResponse(model=slot.name, version=slot.version, family=slot.family, threshold=threshold, results=results,
                                      errors=sum(p is not None for p in problems))

    @scoring.post("/v1/failure-rca", tags=["v1"], response_model=RcaResponse | RcaManyResponse,
                  summary="root causes, scores and actions of a failed job (`text`), or of several (`texts`)")
    async def failure_rca(body: RcaRequest):
        async with server.observe("/v1/failure-rca", FAILURE_RCA) as seen:
            if (body.text is None) == (body.texts is None):
                raise unprocessable(["text"], "send either 'text' (one failed job) or 'texts' (several), not both or neither")
            values, field_name = ([body.text], "text") if body.texts is None else (body.texts, "texts")
            slot, answers = await server.rca_answers(values, field_name, body.threshold, body.kb_min_similarity)
            seen["version"] = slot.version
            served = {"model": slot.name, "version": slot.version, "family": slot.family}
            if body.texts is None:
                if answers[0].error:
                    raise unprocessable(["text"], answers[0].error)
                return RcaResponse(**served, **answers[0].model_dump())
            return RcaManyResponse(**served, results=answers, errors=sum(a.error is not None for a in answers))

    @scoring.post("/v1/metric-forecast", tags=["v1"], response_model=ForecastResponse,
                  summary="p10/p50/p90 per lead time of one series (`series`) or of points with labels (`rows`)")
    async def metric_forecast(body: ForecastRequest) -> ForecastResponse:
        async with server.observe("/v1/metric-forecast", METRIC_FORECAST) as seen:
            out = await server.forecast(body)
            seen["version"] = out.version
            return out

    @alerting.post("/v1/alerts", tags=["alerts"], response_model=AlertsResponse,
                   summary="Alertmanager's webhook: root causes of each failed job, written back to its logs and posted "
                           "to setting alerts.notify_url (serving/alerts.py)")
    async def alertmanager_webhook(body: AlertmanagerMessage) -> JSONResponse:
        async with server.observe("/v1/alerts", FAILURE_RCA) as seen:
            status, answer = await alerts.answer(body)
            seen["version"], seen["status"] = answer.version or "none", str(status)
            return JSONResponse(answer.model_dump(mode="json"), status_code=status)

    # -- the seed's shapes: each of its three apps answered POST /predict --------------------------------------

    async def seed_log_anomaly(body: SeedTextRequest, route: str) -> dict:
        async with server.observe(route, LOG_ANOMALY) as seen:
            slot, problems, probs, _ = await server.classify(LOG_ANOMALY, [body.text], "text")
            seen["version"] = slot.version
            if problems[0]:
                raise unprocessable(["text"], problems[0])
            threshold = float(slot.model.thresholds[0]) if body.threshold is None else body.threshold
            score = float(probs[0, 0])
            return {"text": body.text, "result": "abnormal" if score >= threshold else "normal", "score": score,
                    "model": slot.name, "version": slot.version}

    async def seed_rca(body: SeedTextRequest, route: str) -> dict:
        async with server.observe(route, FAILURE_RCA) as seen:
            slot, answers = await server.rca_answers([body.text], "text", body.threshold, None)
            seen["version"] = slot.version
            answer = answers[0]
            if answer.error:
                raise unprocessable(["text"], answer.error)
            actions = slot.model.rca.label_space.actions
            return {"probabilities": {label: answer.scores[label] for label in answer.labels},
                    "actions": {label: " / ".join(actions.get(label, [])) for label in answer.labels},
                    "low_confidence": answer.low_confidence, "suggested_actions": answer.actions,
                    "kb_match": answer.kb_match.model_dump() if answer.kb_match else None, "model": slot.name, "version": slot.version}

    async def seed_forecast(body: SeedSeriesRequest, route: str) -> dict:
        async with server.observe(route, METRIC_FORECAST) as seen:
            out = await server.forecast(ForecastRequest(series=body.series))
            seen["version"] = out.version
            first = out.forecasts[0]
            return {"next_value": first.points[0].p50, "p10": first.points[0].p10, "p90": first.points[0].p90,
                    "observed_fraction": first.observed_fraction, "short_history": first.short_history,
                    "model": out.model, "version": out.version}

    @scoring.post("/log-anomaly/predict", tags=["seed"], summary='the seed\'s {"text"} -> {"text", "result": normal|abnormal}')
    async def seed_log_anomaly_route(body: SeedTextRequest) -> dict:
        return await seed_log_anomaly(body, "/log-anomaly/predict")

    @scoring.post("/failure-rca/predict", tags=["seed"], summary='the seed\'s {"text", "threshold"} -> {"probabilities", "actions"}')
    async def seed_rca_route(body: SeedTextRequest) -> dict:
        return await seed_rca(body, "/failure-rca/predict")

    @scoring.post("/metric-forecast/predict", tags=["seed"], summary='the seed\'s {"series": [floats]} -> {"next_value"}')
    async def seed_forecast_route(body: SeedSeriesRequest) -> dict:
        return await seed_forecast(body, "/metric-forecast/predict")

    @scoring.post("/predict", tags=["seed"], summary="any of the seed's three shapes, told apart by their fields",
                  description='`{"series": [...]}`: metric-forecast; `{"text", "threshold"}`: failure-rca; `{"text"}`: log-anomaly.',
                  openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {"anyOf": [
                      {"$ref": "#/components/schemas/SeedTextRequest"}, {"$ref": "#/components/schemas/SeedSeriesRequest"}]}}}}})
    async def seed_predict(request: Request) -> dict:
        from pydantic import ValidationError

        try:
            body = await request.json()
        except ValueError:
            raise unprocessable([], "the body is not JSON") from None
        if not isinstance(body, dict):
            raise unprocessable([], "expected an object with 'text' or 'series'")
        try:
            if "series" in body:
                return await seed_forecast(SeedSeriesRequest.model_validate(body), "/predict")
            if "text" in body:
                parsed = SeedTextRequest.model_validate(body)
                return await (seed_rca if "threshold" in body else seed_log_anomaly)(parsed, "/predict")
        except ValidationError as exc:
            raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None
        raise unprocessable(["text"], "expected 'text' (log-anomaly, or failure-rca with 'threshold') or 'series' (metric-forecast)")

    app.include_router(scoring)
    app.include_router(admin)
    app.include_router(alerting)
    # Fail closed: a route added beside the routers, without a key check, stops the server from starting.
    guarded = {r.path for r in app.routes if isinstance(r, APIRoute) and any(d.call in guard.checks for d in r.dependant.dependencies)}
    unguarded = {getattr(r, "path", repr(r)) for r in app.routes} - guarded - PUBLIC_PATHS - SCHEMA_PATHS - (
        {"/metrics"} if cfg.metrics_public else set())
    if unguarded:
        raise RuntimeError(f"routes without an API key check: {', '.join(sorted(unguarded))}: put each on the scoring or admin router "
                           "(a probe: in PUBLIC_PATHS)")
    return app


ROUTE_MODELS = {"/v1/log-anomaly": LOG_ANOMALY, "/v1/failure-rca": FAILURE_RCA, "/v1/metric-forecast": METRIC_FORECAST, "/v1/alerts": FAILURE_RCA,
                "/log-anomaly/predict": LOG_ANOMALY, "/failure-rca/predict": FAILURE_RCA, "/metric-forecast/predict": METRIC_FORECAST}


class BodyLimit:
    """ASGI middleware: a body over `limit` bytes gets 413 (by its Content-Length, or while it streams in)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        message = f"request body over the limit of {self.limit} bytes (setting serve.max_body_bytes)"
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await JSONResponse({"detail": message}, status_code=413)(scope, receive, send)
        received = 0

        async def limited():
            nonlocal received
            event = await receive()
            if event["type"] == "http.request":
                received += len(event.get("body", b""))
                if received > self.limit:
                    raise HTTPException(413, detail=message)
            return event

        return await self.app(scope, limited, send)


class AccessLog:
    """ASGI middleware: one log line per request, with the name of the API key that sent it (never the key); it
    replaces uvicorn's access log."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), 500

        async def sending(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            client = scope.get("client")
            access_log.info(f"{scope['method']} {scope['path']} {status}",
                            extra={"status": status, "api_key": (scope.get("state") or {}).get("api_key"),
                                   "client": client[0] if client else None, "seconds": round(time.perf_counter() - started, 4)})


def tls_files(settings: Settings) -> tuple[str, str] | None:
    """(certificate, private key) when settings serve.tls_certfile and serve.tls_keyfile are set, else None.

    Raises:
        ConfigError: only one of them is set, a file is missing, or the pair does not load (the message says why).
    """
    cfg = settings.serve
    if not cfg.tls_certfile and not cfg.tls_keyfile:
        return None
    if not cfg.tls_certfile or not cfg.tls_keyfile:
        missing = "tls_certfile" if not cfg.tls_certfile else "tls_keyfile"
        raise ConfigError(f"setting serve.{missing} is empty: HTTPS needs both serve.tls_certfile and serve.tls_keyfile")
    for name, value in (("tls_certfile", cfg.tls_certfile), ("tls_keyfile", cfg.tls_keyfile)):
        if not Path(value).expanduser().is_file():
            raise ConfigError(f"setting serve.{name}: no such file {value}")
    cert, key = str(Path(cfg.tls_certfile).expanduser()), str(Path(cfg.tls_keyfile).expanduser())
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"settings serve.tls_certfile and serve.tls_keyfile: {cert} and {key} do not load as a PEM certificate "
                          f"chain and its private key ({exc})") from None
    return cert, key


def serve(settings: Settings, host: str | None = None, port: int | None = None, log_level: str = "info",
          on_listen=None) -> None:
    """Run the server until interrupted: bind `host:port` (port 0: a free one), call `on_listen(url)`, serve
    (HTTPS when serve.tls_certfile and serve.tls_keyfile are set).

    Raises:
        KeyFileError: no API key file, or a bad line in it.
        ConfigError: a serve setting cannot be used (TLS files, rate limit).
        StoreUnreachable: the tracking URI is a server that does not answer.
    """
    import socket

    import uvicorn

    host, port = host or settings.serve.host, settings.serve.port if port is None else port
    tls = tls_files(settings)
    app = create_app(settings)
    access_log.setLevel(log_level.upper())  # --log-level warning quiets the request lines, as it did uvicorn's
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)  # connections wait in the backlog while uvicorn starts, instead of being refused
    url = f"{'https' if tls else 'http'}://{host}:{sock.getsockname()[1]}"
    if on_listen:
        on_listen(url)
    keys = app.state.guard.keys
    log.info("API keys read", extra={"file": str(keys.source), "keys": len(keys), "names": [k.name for k in keys.keys]})
    uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=10, access_log=False,
                                  ssl_certfile=tls[0] if tls else None, ssl_keyfile=tls[1] if tls else None)).run(sockets=[sock])

