"""The checks of two log snapshots (labels, templates, tokens, length, embeddings) or two metric snapshots (values
and hour-of-day profiles per series), and `compare_snapshots`, the report of one snapshot against another."""

from __future__ import annotations

import re
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from nightshift_models.normalize import normalize
from pipelines.config import ConfigError, DriftSettings, Settings
from pipelines.data.drift.statistics import Check, categorical_test, grade, histogram, js_divergence, mmd2, projection, psi, template, worst
from pipelines.data.snapshots import Snapshot, window_tag
from pipelines.errors import InputError
from pipelines.telemetry import get_logger

log = get_logger("drift")

PLOTTED_SERIES = 3  # series drawn per metric check (the worst ones); the table lists five
Embedder = Callable[[Sequence[str]], np.ndarray]
_TOKEN = re.compile(r"<[A-Z]+>|[A-Za-z_]+")


# ---- log snapshots ---------------------------------------------------------------------------

def _sample(frame: pd.DataFrame, limit: int, rng: np.random.Generator) -> pd.DataFrame:
    return frame if len(frame) <= limit else frame.iloc[np.sort(rng.choice(len(frame), size=limit, replace=False))]


def job_causes(frame: pd.DataFrame) -> list[list[str]]:
    """Root-cause label sets, one per failed job (its lines share one label set), or per row without a job id."""
    rows = frame[frame["root_cause"].map(lambda c: c is not None and len(c) > 0)]
    if "job_id" in rows.columns:
        rows = rows[rows["job_id"].isna() | ~rows["job_id"].duplicated()]
    return [list(c) for c in rows["root_cause"]]


def log_checks(ref: pd.DataFrame, cur: pd.DataFrame, cfg: DriftSettings, embed: Embedder | None) -> list[Check]:
    """Label, template, token, length and embedding checks of two log frames."""
    rng = np.random.default_rng(cfg.seed)
    ref, cur = _sample(ref, cfg.max_rows, rng), _sample(cur, cfg.max_rows, rng)
    perms = cfg.permutations
    checks: list[Check] = []

    ref_labelled, cur_labelled = ref[ref["anomaly"].notna()], cur[cur["anomaly"].notna()]
    if len(ref_labelled) and len(cur_labelled):
        rows = lambda f: [["anomalous" if a else "normal"] for a in f["anomaly"].astype(bool)]  # noqa: E731
        value, p, detail = categorical_test(rows(ref_labelled), rows(cur_labelled), psi, perms, rng)
        detail["anomaly_rate"] = {"reference": round(float(ref_labelled["anomaly"].astype(bool).mean()), 4),
                                  "current": round(float(cur_labelled["anomaly"].astype(bool).mean()), 4)}
        checks.append(grade(cfg, "label.anomaly", "psi", value, "label_psi", p, label=True, detail=detail))
    ref_causes, cur_causes = job_causes(ref), job_causes(cur)
    if ref_causes and cur_causes:
        value, p, detail = categorical_test(ref_causes, cur_causes, psi, perms, rng)
        checks.append(grade(cfg, "label.root_cause", "psi", value, "label_psi", p, label=True, detail=detail))

    ref_templates, cur_templates = ref["message"].map(template).tolist(), cur["message"].map(template).tolist()
    value, p, detail = categorical_test([[t] for t in ref_templates], [[t] for t in cur_templates], js_divergence, perms, rng)
    checks.append(grade(cfg, "message.template", "js", value, "template_js", p, detail=detail))
    tokens = lambda ts: [_TOKEN.findall(t.lower().replace("<*>", "<ID>")) for t in ts]  # noqa: E731
    value, p, detail = categorical_test(tokens(ref_templates), tokens(cur_templates), js_divergence, perms, rng)
    checks.append(grade(cfg, "message.token", "js", value, "token_js", p, detail=detail))

    from scipy.stats import ks_2samp

    ref_len, cur_len = ref["message"].str.len().to_numpy(), cur["message"].str.len().to_numpy()
    ks = ks_2samp(ref_len, cur_len)
    checks.append(grade(cfg, "message.length", "ks", ks.statistic, "length_ks", float(ks.pvalue),
                        detail={"median_reference": float(np.median(ref_len)), "median_current": float(np.median(cur_len)),
                                "histogram": histogram(ref_len, cur_len)}))

    if embed is not None and cfg.embedding_sample > 1:
        n = cfg.embedding_sample
        x = embed([normalize(m) for m in _sample(ref, n, rng)["message"]])
        y = embed([normalize(m) for m in _sample(cur, n, rng)["message"]])
        value, p, bandwidth = mmd2(x, y, perms, rng)
        checks.append(grade(cfg, "message.embedding", "mmd2", value, "embedding_mmd", p,
                            detail={"sample": [len(x), len(y)], "dimensions": int(x.shape[1]), "bandwidth": bandwidth,
                                    "projection": projection(x, y)}))
    return checks


# ---- metric snapshots ------------------------------------------------------------------------

def hour_profile(frame: pd.DataFrame) -> pd.Series:
    """Mean value per UTC hour of day, centred on the frame's own mean (index: hour 0..23)."""
    by_hour = frame.groupby(pd.to_datetime(frame["timestamp"], utc=True).dt.hour)["value"].mean()
    return by_hour - frame["value"].mean()


def seasonal_distance(ref: pd.DataFrame, cur: pd.DataFrame) -> float:
    """Mean absolute difference of the two hour-of-day profiles (each centred on its own mean), in reference std units."""
    a, b = hour_profile(ref), hour_profile(cur)
    hours = a.index.intersection(b.index)
    scale = float(ref["value"].std()) or abs(float(ref["value"].mean())) or 1.0
    return float(np.mean(np.abs(a[hours] - b[hours]))) / scale if len(hours) else float("nan")


def profiles(ref: pd.DataFrame, cur: pd.DataFrame) -> dict:
    """Both hour-of-day profiles of one series, for the picture: {"hours", "reference", "current"} (None where a side has no sample)."""
    a, b = hour_profile(ref), hour_profile(cur)
    hours = sorted(set(a.index) | set(b.index))
    side = lambda p: [round(float(p[h]), 6) if h in p.index else None for h in hours]  # noqa: E731
    return {"hours": [int(h) for h in hours], "reference": side(a), "current": side(b)}


def metric_checks(ref: pd.DataFrame, cur: pd.DataFrame, cfg: DriftSettings) -> list[Check]:
    """Value distribution (KS) and seasonal profile per series; each check reports its worst series."""
    from scipy.stats import ks_2samp

    ref, cur = ref.dropna(subset=["value"]), cur.dropna(subset=["value"])
    shared = sorted(set(ref["series"]) & set(cur["series"]))
    detail = {"series": len(shared), "only_in_reference": sorted(set(ref["series"]) - set(cur["series"]))[:20],
              "only_in_current": sorted(set(cur["series"]) - set(ref["series"]))[:20]}
    per_series = []
    for series in shared:
        a, b = ref[ref["series"] == series], cur[cur["series"] == series]
        ks = ks_2samp(a["value"].to_numpy(), b["value"].to_numpy())
        per_series.append((series, float(ks.statistic), float(ks.pvalue), seasonal_distance(a, b)))
    if not per_series:
        return [grade(cfg, "metric.value", "ks", float("nan"), "metric_value_ks", detail=detail)]
    by_ks = sorted(per_series, key=lambda s: -s[1])
    by_season = sorted(per_series, key=lambda s: 1 if np.isnan(s[3]) else -s[3])
    side = lambda f, series: f[f["series"] == series]  # noqa: E731
    return [
        grade(cfg, "metric.value", "ks", by_ks[0][1], "metric_value_ks", by_ks[0][2],
              detail={**detail, "worst_series": [{"series": s[0], "ks": round(s[1], 4), "p_value": s[2]} for s in by_ks[:5]],
                      "histograms": [{"series": s[0], **histogram(side(ref, s[0])["value"].to_numpy(), side(cur, s[0])["value"].to_numpy())}
                                     for s in by_ks[:PLOTTED_SERIES]]}),
        grade(cfg, "metric.seasonal", "profile", by_season[0][3], "seasonal",
              detail={"worst_series": [{"series": s[0], "distance": round(s[3], 4)} for s in by_season[:5]],
                      "profiles": [{"series": s[0], **profiles(side(ref, s[0]), side(cur, s[0]))} for s in by_season[:PLOTTED_SERIES]]}),
    ]


# ---- report ----------------------------------------------------------------------------------

def _describe(snapshot: Snapshot) -> dict:
    return {"snapshot": str(snapshot.path), "content_hash": snapshot.content_hash, "window": window_tag(snapshot.window),
            "rows": snapshot.manifest.get("row_count")}


def check_settings(cfg: DriftSettings) -> None:
    """Refuse thresholds that cannot grade anything, naming the setting."""
    for name in ("label_psi", "template_js", "token_js", "length_ks", "embedding_mmd", "metric_value_ks", "seasonal"):
        warn, severe = getattr(cfg, f"{name}_warn"), getattr(cfg, f"{name}_severe")
        if not 0 <= warn <= severe:
            raise ConfigError(f"setting drift.{name}_warn ({warn}) must be >= 0 and <= drift.{name}_severe ({severe})")
    if not 0 < cfg.alpha <= 1 or cfg.permutations < 1 or cfg.max_rows < 1:
        raise ConfigError("settings drift.alpha must be in (0, 1], drift.permutations and drift.max_rows at least 1")


def compare_snapshots(reference: Snapshot, current: Snapshot, settings: Settings, embed: Embedder | None = None) -> dict:
    """The drift report of `current` against `reference` (both log snapshots, or both metric snapshots)."""
    check_settings(settings.drift)
    ref, cur = reference.read(), current.read()
    kinds = {("message" in f.columns, {"series", "value"} <= set(f.columns)) for f in (ref, cur)}
    if kinds == {(True, False)}:
        kind, checks = "logs", log_checks(ref, cur, settings.drift, embed)
    elif kinds == {(False, True)}:
        kind, checks = "metrics", metric_checks(ref, cur, settings.drift)
    else:
        raise InputError(f"drift: snapshots {reference.path} and {current.path} are not both log snapshots (field 'message') "
                         "or both metric snapshots (fields 'series', 'value')")
    status = worst([c.status for c in checks])
    report = {"status": status, "label_shift": any(c.label and c.status != "none" for c in checks), "kind": kind,
              "reference": _describe(reference), "current": _describe(current),
              "checks": [asdict(c) for c in checks],
              "thresholds": asdict(settings.drift), "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    log.info("drift checked", extra={"status": status, "label_shift": report["label_shift"],
                                     **{c.name: round(c.value, 4) for c in checks if np.isfinite(c.value)}})
    return report

