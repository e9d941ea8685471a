"""Forecasts to the Pushgateway: read each series' latest lookback from Prometheus, forecast the
horizon with a registered `metric-forecast` version, and push
`ai_forecast_<metric>{horizon="15m",quantile="0.9",…source labels}` for Prometheus to scrape.

Each source series is its own Pushgateway group (grouping key: the job, the deployment and a
short id of the series) pushed with PUT, which replaces the whole group, so a new forecast never
leaves an old value behind; groups of this job and deployment whose series got no forecast this
time (gone from Prometheus, or too gappy) are deleted, so stale forecasts do not linger. Another
deployment's groups on the same Pushgateway (another `nightshift_deployment`) are never touched. Source labels that would clash with the
group's or the forecast's own (`job`, `instance`, `horizon`, `quantile`, `series`) are kept as
`exported_<name>`, as Prometheus itself does.
"""

from __future__ import annotations

import hashlib
import re
import time
from datetime import datetime, timedelta, timezone

from pipelines.config import Settings
from pipelines.data.records import format_duration
from pipelines.errors import InputError
from pipelines.registry.store import load_model, use_store
from pipelines.sources.prometheus import PrometheusError, Series, named_queries, open_metric_source
from pipelines.telemetry import get_logger

log = get_logger("forecast")
DEPLOYMENT_LABEL = "nightshift_deployment"
RESERVED = ("job", "instance", "horizon", "quantile", "series", DEPLOYMENT_LABEL)
QUANTILE_COLUMNS = {"0.1": "p10", "0.5": "p50", "0.9": "p90"}


def forecast_metric_name(source_name: str) -> str:
    """`ai_forecast_<metric>`, with characters Prometheus does not allow in a name replaced by `_`."""
    return "ai_forecast_" + re.sub(r"[^a-zA-Z0-9_:]", "_", source_name)


def forecast_labels(labels: dict[str, str]) -> dict[str, str]:
    """The source series' labels as carried by its forecast (no `__name__`, clashing names renamed)."""
    return {(f"exported_{k}" if k in RESERVED else k): v for k, v in labels.items() if k != "__name__"}


def group_id(sid: str) -> str:
    """The Pushgateway grouping value of a series: short and stable."""
    return hashlib.sha1(sid.encode()).hexdigest()[:16]


def read_latest(source, queries: dict[str, str], at: datetime, step: float, lookback: int,
                max_gap_fraction: float) -> tuple[list[Series], list[str]]:
    """The `lookback` points ending at `at` of every series of the queries; too-gappy series are set aside by id."""
    import numpy as np

    start = at - timedelta(seconds=step * (lookback - 1))
    kept, skipped = [], []
    for name, query in queries.items():
        for s in source.query_range(query, start, at + timedelta(seconds=step / 2), step):
            s.labels.setdefault("__name__", name)
            if np.isfinite(s.values).sum() < (1 - max_gap_fraction) * lookback:
                skipped.append(s.id)
            else:
                kept.append(s)
    return kept, skipped


def push_forecasts(pushgateway: str, job: str, series: list[Series], predictions, timeout: float, deployment: str) -> list[str]:
    """PUT one group per series (grouping key: series id and `deployment`) holding its forecast gauges;
    returns the group ids pushed.

    Raises:
        PrometheusError: the Pushgateway refused or did not answer.
    """
    from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

    by_series = {sid: rows for sid, rows in predictions.groupby("series", sort=False)}
    pushed = []
    for s in series:
        rows = by_series.get(s.id)
        if rows is None:
            continue
        labels = forecast_labels(s.labels)
        registry = CollectorRegistry()
        gauge = Gauge(forecast_metric_name(s.labels["__name__"]), f"nightshift forecast of {s.labels['__name__']}",
                      sorted(labels) + ["horizon", "quantile"], registry=registry)
        for row in rows.itertuples(index=False):
            for quantile, column in QUANTILE_COLUMNS.items():
                gauge.labels(**labels, horizon=row.horizon_label, quantile=quantile).set(float(getattr(row, column)))
        gid = group_id(s.id)
        try:
            push_to_gateway(pushgateway, job=job, grouping_key={"series": gid, DEPLOYMENT_LABEL: deployment}, registry=registry, timeout=timeout)
        except OSError as exc:
            raise PrometheusError(f"Pushgateway at {pushgateway} did not take the forecast of {s.id}: {exc}") from None
        pushed.append(gid)
    return pushed


def delete_stale_groups(pushgateway: str, job: str, keep: set[str], timeout: float, deployment: str) -> list[str]:
    """Delete this job's and deployment's groups whose series got no forecast this time, and the job's
    groups without a deployment (pushed before forecasts carried one); returns their group ids.

    Raises:
        PrometheusError: the Pushgateway's group list cannot be read.
    """
    import requests
    from prometheus_client import delete_from_gateway

    base = pushgateway if "://" in pushgateway else f"http://{pushgateway}"
    try:
        groups = requests.get(f"{base.rstrip('/')}/api/v1/metrics", timeout=timeout).json().get("data", [])
    except (requests.RequestException, ValueError) as exc:
        raise PrometheusError(f"Pushgateway at {pushgateway}: cannot list its groups ({exc.__class__.__name__})") from None
    mine = [g["labels"] for g in groups if g.get("labels", {}).get("job") == job and g["labels"].get("series")]
    stale = [gid for labels in mine if labels.get(DEPLOYMENT_LABEL) == deployment and (gid := labels["series"]) not in keep]
    # Groups pushed before forecasts carried a deployment are nobody's now: stale, whatever their series.
    legacy = [labels["series"] for labels in mine if not labels.get(DEPLOYMENT_LABEL)]
    for gid in stale:
        delete_from_gateway(pushgateway, job=job, grouping_key={"series": gid, DEPLOYMENT_LABEL: deployment}, timeout=timeout)
    for gid in legacy:
        delete_from_gateway(pushgateway, job=job, grouping_key={"series": gid}, timeout=timeout)
    return sorted(stale + legacy)


def forecast(model_ref: str, prometheus_url: str | None, pushgateway_url: str | None, settings: Settings,
             at: datetime | None = None) -> dict:
    """Forecast every series the model's queries return at `at` (default: now) and push the forecasts."""
    import numpy as np
    import pandas as pd

    prometheus_url = prometheus_url or settings.prometheus.url
    pushgateway_url = pushgateway_url or settings.prometheus.pushgateway
    if not prometheus_url:
        raise InputError("no Prometheus to read from: pass --prometheus URL or set prometheus.url")
    if not pushgateway_url:
        raise InputError("no Pushgateway to push to: pass --pushgateway URL or set prometheus.pushgateway")
    source = open_metric_source(prometheus_url, settings)
    ref, model = load_model(use_store(settings), model_ref)
    forecaster = model.unwrap_python_model()
    cfg = forecaster.cfg
    at = (at or datetime.now(timezone.utc)).astimezone(timezone.utc)
    queries = forecaster.queries or named_queries(settings)

    started = time.perf_counter()
    series, skipped = read_latest(source, queries, at, cfg.step, cfg.lookback, settings.prometheus.max_gap_fraction)
    if not series:
        raise PrometheusError(f"nothing to forecast: queries {', '.join(queries)} returned no series with enough points "
                              f"in the {format_duration(cfg.step * cfg.lookback)} before {at.isoformat()} from {source.uri}")
    frame = pd.DataFrame({
        "timestamp": pd.to_datetime(np.rint(np.concatenate([s.timestamps for s in series]) * 1e9).astype("int64")),  # naive UTC
        "series": np.concatenate([[s.id] * len(s.values) for s in series]),
        "value": np.concatenate([s.values for s in series]),
    })
    predictions = model.predict(frame)
    predictions["horizon_label"] = [format_duration(h * cfg.step) for h in predictions["horizon"]]
    job, deployment = settings.prometheus.forecast_job, settings.deployment_id
    pushed = push_forecasts(pushgateway_url, job, series, predictions, settings.prometheus.timeout, deployment)
    deleted = delete_stale_groups(pushgateway_url, job, set(pushed), settings.prometheus.timeout, deployment)
    out = {"model": ref.name, "version": ref.version, "at": at.isoformat(), "series": len(pushed), "skipped": skipped,
           "deleted_stale_groups": deleted, "horizon": format_duration(cfg.step * cfg.horizon), "step": format_duration(cfg.step),
           "metrics": sorted({forecast_metric_name(s.labels["__name__"]) for s in series}),
           "pushgateway": pushgateway_url, "deployment": deployment, "seconds": round(time.perf_counter() - started, 3)}
    log.info("forecasts pushed", extra={k: v for k, v in out.items() if k != "skipped"})
    return out
