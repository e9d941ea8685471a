"""`nightshift serve`: the champions answer over HTTP, in one process (FastAPI on uvicorn). This module builds the
app (`create_app`) and runs it (`serve`); the parts it joins are modules of their own.

Reading order:
1. `serving/champions.py`: `Slot` and `Champions`, the version each model serves, loaded with
   `pipelines.registry.store.load_model` (the same pyfunc `mlflow models serve` runs) and re-resolved by alias every
   `serve.refresh_seconds` on a background thread. A moved alias is loaded first and then swapped in by one
   assignment; a request keeps the slot it started with, so a swap drops none.
2. `serving/batching.py`: `Batcher`, concurrent texts for one BERT model share a forward pass, on one worker thread.
3. `serving/metrics.py`: `ServerMetrics`, Prometheus counters and histograms by route, model and version.
4. `serving/schemas.py`: the request and answer schemas (OpenAPI at `/docs`); `serving/state.py`: `Server`, what the
   routes share (on `app.state.server`, reached through the dependency `CurrentServer`).
5. `serving/routes/`: one router per concern: `health` (`/healthz`, `/readyz`, `/metrics`), the `/v1/...` route of
   each model (`log_anomaly`, `failure_rca`, `metric_forecast`), the PyTorch_pro demos' `/predict` shapes (`predict`), `admin`
   (`/v1/admin/reload`), Alertmanager's webhook `/v1/alerts` (`alerts`, doing what `serving/alerts.py` says). The
   errors: 422 naming the field, per-row errors where a route takes many rows, 413 for oversized bodies
   (`serving/middleware.py`), 503 with the reason when a model has no champion.
6. `create_app`: the settings, the API keys (`serving/auth.py`), the routers, the 422 handler and the middleware.
   Every route but the health checks (and `/metrics` with `serve.metrics_public`) needs an API key with its scope:
   the scoring routers are included requiring `score`, the admin router `admin`, the webhook's `alerts`, and the
   app refuses to start with a route that has no key check.
7. `serve`: uvicorn on a bound socket, HTTPS with `serve.tls_certfile` and `serve.tls_keyfile`.
"""

from __future__ import annotations

import ssl
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline

from pipelines.config import ConfigError, Settings
from pipelines.registry.store import use_store
from pipelines.telemetry import adopt_logger, get_logger
from serving.alerts import AlertResponder
from serving.auth import ADMIN, ALERTS, REFUSALS, SCORE, Guard, load_keys
from serving.batching import Batcher
from serving.champions import FAILURE_RCA, LOG_ANOMALY, METRIC_FORECAST, Champions
from serving.metrics import ServerMetrics
from serving.middleware import AccessLog, BodyLimit, access_log
from serving.routes import admin, failure_rca, health, log_anomaly, metric_forecast, predict
from serving.routes import alerts as webhook
from serving.schemas import error_items
from serving.state import Server

log = get_logger("serve")


# The model each route answers with, to count a request that is refused before its handler runs (a key check, a 422).
ROUTE_MODELS = {"/v1/log-anomaly": LOG_ANOMALY, "/v1/failure-rca": FAILURE_RCA, "/v1/metric-forecast": METRIC_FORECAST, "/v1/alerts": FAILURE_RCA,
                "/log-anomaly/predict": LOG_ANOMALY, "/failure-rca/predict": FAILURE_RCA, "/metric-forecast/predict": METRIC_FORECAST}
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

    # validatorUrl None: Swagger UI would otherwise send the schema's URL to validator.swagger.io for a badge
    app = FastAPIOffline(title="nightshift serve", version="1", lifespan=lifespan, static_url=DOCS_ASSETS,
                         swagger_ui_parameters={"validatorUrl": None},
                         description="The champions of log-anomaly, failure-rca and metric-forecast, re-resolved by alias "
                                     f"'{cfg.alias}' every {cfg.refresh_seconds:g}s.")
    app.state.server = server  # what the routes share (serving/state.py)
    app.state.guard = guard
    app.state.alerts = alerts
    app.add_middleware(BodyLimit, limit=cfg.max_body_bytes)
    app.add_middleware(AccessLog)  # outermost: it sees every answer, the 413s included

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        """FastAPI's own 422 (naming the field), counted like every other answer, in the shape of every route's
        refusals (`serving.schemas.error_items`)."""
        route = request.url.path
        metrics.requests.labels(route, ROUTE_MODELS.get(route, "none"), "none", "422").inc()
        return JSONResponse({"detail": error_items(exc.errors())}, status_code=422)

    # A route's key check comes with its router: the scoring routes need a key with `score`, the admin's one with
    # `admin`, the webhook one with `alerts`; /metrics any key, unless it is public.
    scoring = [Depends(guard.require(SCORE))]
    no_champion = {**REFUSALS, 503: {"description": "the model has no champion to answer with (the reason is given)"}}
    app.include_router(health.probes)
    app.include_router(health.metrics_router(cfg.metrics_public), dependencies=None if cfg.metrics_public else [Depends(guard.require(None))],
                       responses=None if cfg.metrics_public else REFUSALS)
    for router in (log_anomaly.router, failure_rca.router, metric_forecast.router, predict.router):
        app.include_router(router, dependencies=scoring, responses=no_champion)
    app.include_router(admin.router, dependencies=[Depends(guard.require(ADMIN))], responses=REFUSALS)
    app.include_router(webhook.router, dependencies=[Depends(guard.require(ALERTS))],
                       responses={**REFUSALS, 503: {"description": "no failure-rca version to answer with, or a job could not be "
                                                                   "answered (Alertmanager delivers the message again)"}})
    # Fail closed: a route added without a key check stops the server from starting.
    guarded = {r.path for r in app.routes if isinstance(r, APIRoute) and any(d.call in guard.checks for d in r.dependant.dependencies)}
    unguarded = {getattr(r, "path", repr(r)) for r in app.routes} - guarded - PUBLIC_PATHS - SCHEMA_PATHS - (
        {"/metrics"} if cfg.metrics_public else set())
    if unguarded:
        raise RuntimeError(f"routes without an API key check: {', '.join(sorted(unguarded))}: include each router with its scope "
                           "(a probe: in PUBLIC_PATHS)")
    return app


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
    adopt_logger("uvicorn")  # its start, stop and error lines in nightshift's format (log_config=None: uvicorn adds no handler)
    uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=10, access_log=False, log_config=None,
                                  ssl_certfile=tls[0] if tls else None, ssl_keyfile=tls[1] if tls else None)).run(sockets=[sock])

