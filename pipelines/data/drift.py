"""Drift checks: a new snapshot against its reference, the champion's training snapshot.

Log snapshots get four kinds of check: the label distribution (PSI, with a permutation p-value),
message templates and tokens (Jensen–Shannon divergence on normalised text), message length (KS)
and embeddings (MMD on a sample of the champion's own sentence embeddings). Metric snapshots get
the value distribution (KS) and the hour-of-day seasonal profile, per series.

Each check has warn and severe thresholds from the `[drift]` settings. A difference that is not
significant at `drift.alpha` never raises a status, so small windows do not cry wolf. The report's
status is the worst of its checks; `label_shift` says whether a label check moved, which the
promotion gate reads together with a severe status as a sign of a labelling fault.

Each check keeps in its `detail` the small tables its picture is drawn from (shares of the most
moved categories, length histograms on shared bins, a 2-D projection of the embeddings, the worst
series' value histograms and hour-of-day profiles), so `render_html` draws the report from the
report alone: one HTML page with a matplotlib PNG per check, embedded as base64.
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from nightshift_models.normalize import normalize
from pipelines.config import ConfigError, DriftSettings, Settings
from pipelines.data.snapshots import Snapshot, load_snapshot, window_tag
from pipelines.errors import InputError, NightshiftError
from pipelines.pages import CURRENT_COLOUR, REFERENCE_COLOUR, badge, esc, figure, fmt, page, png, table
from pipelines.registry.store import CHAMPION, ModelRef, alias_version, load_model, set_version_tags, snapshot_lineage
from pipelines.telemetry import get_logger

log = get_logger("drift")

STATUSES = ("none", "warn", "severe")
HISTOGRAM_BINS = 30
PLOTTED_SERIES = 3  # series drawn per metric check (the worst ones); the table lists five
PROJECTED_POINTS = 200  # embeddings per side kept in the report's 2-D projection
Embedder = Callable[[Sequence[str]], np.ndarray]
_TOKEN = re.compile(r"<[A-Z]+>|[A-Za-z_]+")


@dataclass
class Check:
    """One drift statistic, its thresholds and what it says about the snapshot."""

    name: str
    statistic: str
    value: float
    warn: float
    severe: float
    p_value: float | None = None
    status: str = "none"
    label: bool = False  # a label check: moved labels with severe drift suggest a labelling fault
    detail: dict = field(default_factory=dict)


def grade(cfg: DriftSettings, name: str, statistic: str, value: float, thresholds: str, p_value: float | None = None,
          **extra) -> Check:
    """A check graded against `drift.<thresholds>_warn` / `_severe`; never above none when not significant."""
    warn, severe = getattr(cfg, f"{thresholds}_warn"), getattr(cfg, f"{thresholds}_severe")
    status = "none"
    if np.isfinite(value) and (p_value is None or p_value < cfg.alpha):
        status = "severe" if value >= severe else "warn" if value >= warn else "none"
    return Check(name, statistic, float(value), warn, severe, p_value, status, **extra)


def worst(statuses: Sequence[str]) -> str:
    return max(statuses, key=STATUSES.index, default="none")


# ---- statistics ------------------------------------------------------------------------------

def psi(ref: np.ndarray, cur: np.ndarray, eps: float = 1e-4) -> float:
    """Population stability index of two count vectors over the same categories."""
    p = np.maximum(ref / max(ref.sum(), 1), eps)
    q = np.maximum(cur / max(cur.sum(), 1), eps)
    return float(np.sum((q - p) * np.log(q / p)))


def js_divergence(ref: np.ndarray, cur: np.ndarray) -> float:
    """Jensen–Shannon divergence (base 2, in [0, 1]) of two count vectors."""
    p = ref / max(ref.sum(), 1)
    q = cur / max(cur.sum(), 1)
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return max(0.5 * kl(p) + 0.5 * kl(q), 0.0)


def categorical_test(ref_rows: list[list[str]], cur_rows: list[list[str]], stat: Callable[[np.ndarray, np.ndarray], float],
                     permutations: int, rng: np.random.Generator) -> tuple[float, float, dict]:
    """`stat` of the category counts of two row sets, and its permutation p-value.

    Rows, not categories, are shuffled between the sides, so categories that come together in
    one row (the tokens of a message) are not counted as independent evidence.
    """
    from scipy.sparse import csr_matrix

    vocab: dict[str, int] = {}
    indptr: list[int] = [0]
    indices: list[int] = []
    for row in [*ref_rows, *cur_rows]:
        indices.extend(vocab.setdefault(c, len(vocab)) for c in row)
        indptr.append(len(indices))
    matrix = csr_matrix((np.ones(len(indices)), indices, indptr), shape=(len(indptr) - 1, max(len(vocab), 1)))
    side = np.zeros(matrix.shape[0], dtype=bool)
    side[len(ref_rows):] = True
    total = np.asarray(matrix.sum(axis=0)).ravel()

    def value(mask: np.ndarray) -> float:
        cur = matrix.T @ mask.astype(np.float64)
        return stat(total - cur, cur)

    observed = value(side)
    exceed = sum(value(rng.permutation(side)) >= observed for _ in range(permutations))
    names = list(vocab)
    cur_counts = matrix.T @ side.astype(np.float64)
    ref_share, cur_share = (total - cur_counts) / max((total - cur_counts).sum(), 1), cur_counts / max(cur_counts.sum(), 1)
    moved = np.argsort(-np.abs(cur_share - ref_share))[:8]
    detail = {"categories": len(names),
              "top_moves": [{"category": names[i], "reference": round(float(ref_share[i]), 4), "current": round(float(cur_share[i]), 4)} for i in moved]}
    return observed, (1 + exceed) / (1 + permutations), detail


def mmd2(x: np.ndarray, y: np.ndarray, permutations: int, rng: np.random.Generator) -> tuple[float, float, float]:
    """Unbiased squared MMD with an RBF kernel (median-distance bandwidth), its permutation p-value, the bandwidth."""
    z = np.concatenate([x, y]).astype(np.float64)
    sq = np.sum(z * z, axis=1)
    d = np.maximum(sq[:, None] + sq[None, :] - 2 * z @ z.T, 0.0)
    off = d[np.triu_indices(len(z), 1)]
    bandwidth = float(np.median(off[off > 0])) if np.any(off > 0) else 1.0
    k = np.exp(-d / bandwidth)
    n = len(x)

    def stat(idx: np.ndarray) -> float:
        a, b = idx[:n], idx[n:]
        kxx, kyy, kxy = k[np.ix_(a, a)], k[np.ix_(b, b)], k[np.ix_(a, b)]
        m = len(b)
        return float((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean())

    base = np.arange(len(z))
    observed = stat(base)
    exceed = sum(stat(rng.permutation(base)) >= observed for _ in range(permutations))
    return observed, (1 + exceed) / (1 + permutations), bandwidth


def template(text: str) -> str:
    """A message's template: normalised text with every remaining token that holds a digit masked."""
    return " ".join("<*>" if any(ch.isdigit() for ch in tok) else tok for tok in normalize(text).split())


def histogram(reference: np.ndarray, current: np.ndarray, bins: int = HISTOGRAM_BINS) -> dict:
    """Both samples' shares on one set of bins (from the pooled 1st to 99th percentile; values beyond
    fall in the end bins, so one huge outlier does not squash the picture).

    Returns {"edges": [bins + 1 floats], "reference": [bins shares], "current": [bins shares]}.
    """
    pooled = np.concatenate([reference, current]).astype(np.float64)
    pooled = pooled[np.isfinite(pooled)]
    if not len(pooled):
        return {"edges": [], "reference": [], "current": []}
    low, high = np.percentile(pooled, [1, 99])
    if high <= low:
        low, high = low - 0.5, high + 0.5
    edges = np.linspace(low, high, bins + 1)

    def shares(x: np.ndarray) -> list[float]:
        x = x[np.isfinite(x)]
        counts, _ = np.histogram(np.clip(x, low, high), bins=edges)
        return [round(float(c), 5) for c in counts / max(len(x), 1)]

    return {"edges": [round(float(e), 6) for e in edges], "reference": shares(np.asarray(reference, dtype=np.float64)),
            "current": shares(np.asarray(current, dtype=np.float64))}


def projection(x: np.ndarray, y: np.ndarray, limit: int = PROJECTED_POINTS) -> dict:
    """Both embedding samples on the first two principal axes of the pooled sample, up to `limit` points each.

    Returns {"reference": [[a, b], ...], "current": [[a, b], ...]}.
    """
    z = np.concatenate([x, y]).astype(np.float64)
    z -= z.mean(axis=0)
    _, _, vt = np.linalg.svd(z, full_matrices=False)
    flat = z @ vt[:2].T
    return {"reference": np.round(flat[:len(x)][:limit], 4).tolist(), "current": np.round(flat[len(x):][:limit], 4).tolist()}


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


# ---- the report a person reads -----------------------------------------------------------------

_PLOTTED = {"top_moves", "histogram", "histograms", "profiles", "projection", "worst_series"}  # drawn or tabled, not listed


def _short(text: str, limit: int = 48) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _shares_figure(moves: list[dict], title: str) -> str:
    """Horizontal bars: the most moved categories' shares, reference against current."""
    moves = moves[::-1]  # largest move on top
    fig = figure(7.5, 0.9 + 0.38 * len(moves))
    ax = fig.add_subplot()
    y = np.arange(len(moves))
    ax.barh(y + 0.2, [m["reference"] for m in moves], height=0.4, color=REFERENCE_COLOUR, label="reference")
    ax.barh(y - 0.2, [m["current"] for m in moves], height=0.4, color=CURRENT_COLOUR, label="current")
    ax.set_yticks(y, [_short(str(m["category"])) for m in moves], fontsize=8)
    ax.set_xlabel("share")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    return png(fig, f"{title}: shares of the most moved categories, reference against current")


def _histogram_axes(ax, hist: dict, title: str, xlabel: str) -> None:
    edges = hist["edges"]
    ax.stairs(hist["reference"], edges, fill=True, alpha=0.45, color=REFERENCE_COLOUR, label="reference")
    ax.stairs(hist["current"], edges, color=CURRENT_COLOUR, linewidth=1.8, label="current")
    ax.set_title(_short(title, 60), fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel("share", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=7)


def _histograms_figure(items: list[dict], xlabel: str, what: str) -> str:
    """Overlaid distributions (reference filled, current outlined), one panel per item."""
    items = [h for h in items if h.get("edges")]
    fig = figure(4.2 * max(len(items), 1) if len(items) > 1 else 7.0, 3.0)
    for i, h in enumerate(items):
        _histogram_axes(fig.add_subplot(1, len(items), i + 1), h, h.get("series") or what, xlabel)
    return png(fig, f"{what}: distributions overlaid, reference against current")


def _projection_figure(proj: dict) -> str:
    """Both embedding samples on their first two principal axes."""
    fig = figure(5.0, 4.0)
    ax = fig.add_subplot()
    for side, colour in (("reference", REFERENCE_COLOUR), ("current", CURRENT_COLOUR)):
        points = np.asarray(proj.get(side) or [], dtype=float).reshape(-1, 2)
        ax.scatter(points[:, 0], points[:, 1], s=9, alpha=0.6, color=colour, label=side)
    ax.set_xlabel("principal axis 1", fontsize=8)
    ax.set_ylabel("principal axis 2", fontsize=8)
    ax.set_title("sentence embeddings (champion's encoder)", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=8)
    return png(fig, "embeddings of sampled messages, reference against current, on two principal axes")


def _profiles_figure(items: list[dict]) -> str:
    """Hour-of-day profiles (centred means) of the worst series, reference against current."""
    fig = figure(4.2 * max(len(items), 1) if len(items) > 1 else 7.0, 3.0)
    for i, p in enumerate(items):
        ax = fig.add_subplot(1, len(items), i + 1)
        hours = p["hours"]
        for side, colour, style in (("reference", REFERENCE_COLOUR, "--"), ("current", CURRENT_COLOUR, "-")):
            ax.plot(hours, [np.nan if v is None else v for v in p[side]], style, color=colour, marker="o", markersize=3, label=side)
        ax.set_title(_short(p["series"], 60), fontsize=9)
        ax.set_xlabel("hour of day (UTC)", fontsize=8)
        ax.set_ylabel("mean minus series mean", fontsize=8)
        ax.set_xticks(range(0, 24, 3))
        ax.tick_params(labelsize=8)
        ax.legend(fontsize=7)
    return png(fig, "hour-of-day profiles of the worst series, reference against current")


def check_picture(check: dict) -> str:
    """The picture of one check as an `<img>` (inline PNG), or "" when its detail holds nothing to draw."""
    d, name = check.get("detail") or {}, check["name"]
    if d.get("top_moves"):
        return _shares_figure(d["top_moves"], {"label.anomaly": "anomaly label", "label.root_cause": "root-cause labels (per failed job)",
                                              "message.template": "message templates", "message.token": "tokens"}.get(name, name))
    if (d.get("histogram") or {}).get("edges"):
        return _histograms_figure([d["histogram"]], "characters per message" if name == "message.length" else "value", name)
    if d.get("projection"):
        return _projection_figure(d["projection"])
    if d.get("histograms"):
        return _histograms_figure(d["histograms"], "value", "metric values of the worst series")
    if d.get("profiles"):
        return _profiles_figure(d["profiles"])
    return ""


def _facts(detail: dict) -> str:
    """The detail's plain numbers as a line: `anomaly rate 0.15 → 0.31 · categories 2`."""
    parts = []
    for key, value in detail.items():
        if key in _PLOTTED or value in (None, [], {}):
            continue
        label = key.replace("_", " ")
        if isinstance(value, dict) and {"reference", "current"} <= set(value):
            parts.append(f"{label}: {fmt(value['reference'])} → {fmt(value['current'])}")
        elif isinstance(value, list):
            parts.append(f"{label}: {_short(', '.join(map(str, value)), 200)}")
        else:
            parts.append(f"{label}: {fmt(value)}")
    return f"<p class='small'>{esc(' · '.join(parts))}</p>" if parts else ""


def _worst_table(detail: dict) -> str:
    """The worst series of a metric check, as a table."""
    rows = detail.get("worst_series") or []
    if not rows:
        return ""
    columns = list(rows[0])
    return table(columns, [[r.get(c) for c in columns] for r in rows], numeric=range(1, len(columns)))


def render_html(report: dict) -> str:
    """The drift report as one self-contained HTML page: the verdict, a table of every check against
    its thresholds, then per check its picture (label bars, overlaid distributions, hour-of-day
    profiles, the embedding projection) and, for metrics, a table of the worst series."""
    checks = report.get("checks", [])
    ref, cur = report.get("reference") or {}, report.get("current") or {}
    overview = table(["check", "statistic", "value", "warn at", "severe at", "p-value", "status"],
                     [[c["name"], c["statistic"], c["value"], c["warn"], c["severe"], c["p_value"], badge(c["status"])] for c in checks],
                     numeric=(2, 3, 4, 5), raw=(6,))
    sections = []
    for c in checks:
        p = "" if c["p_value"] is None else f", p = {fmt(c['p_value'], 3)}"
        sections.append(f"<div class='card check' id='{esc(c['name'])}'><h3>{esc(c['name'])} {badge(c['status'])}</h3>"
                        f"<p>{esc(c['statistic'])} = <b>{esc(fmt(c['value']))}</b> (warn at {esc(fmt(c['warn']))}, severe at "
                        f"{esc(fmt(c['severe']))}{esc(p)})</p>{_facts(c.get('detail') or {})}"
                        f"<div class='figs'>{check_picture(c)}</div>{_worst_table(c.get('detail') or {})}</div>")
    model = f" of {report['model']} v{report['version']}" if report.get("model") else ""
    side = lambda s: (f"<span class='mono'>{esc(s.get('snapshot'))}</span> {esc(s.get('window'))} ({esc(fmt(s.get('rows')))} rows)"  # noqa: E731
                      if s else "—")
    body = (f"<h1>Drift{esc(model)}: {badge(report.get('status'))}{' <b>label shift</b>' if report.get('label_shift') else ''}</h1>"
            f"<p>{esc(report.get('reason', ''))}</p>"
            f"<p>reference: {side(ref)}<br>current: {side(cur)}</p>"
            + (f"<h2>Checks</h2>{overview}{''.join(sections)}<p class='small muted'>A check warns or is severe only when its "
               f"difference is also significant at alpha = {esc(fmt((report.get('thresholds') or {}).get('alpha')))}; the numbers "
               "behind every picture are in report.json.</p>" if checks else "<p class='muted'>No check ran.</p>"))
    return page(f"drift{model} {report.get('status')}", body)


# ---- the registry side -----------------------------------------------------------------------

def sentence_embedder(classifier, batch_size: int = 64) -> Embedder | None:
    """Mean-pooled encoder states of a BERT pyfunc's model (None for models without one)."""
    model, tokenizer = getattr(classifier, "model", None), getattr(classifier, "tokenizer", None)
    if model is None or tokenizer is None or not hasattr(model, "base_model"):
        return None
    max_length = int(getattr(classifier, "meta", {}).get("max_length", 64))
    device = getattr(classifier, "device", "cpu")

    def embed(texts: Sequence[str]) -> np.ndarray:
        import torch

        from nightshift_models.bert import length_sorted_batches

        out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
        model.eval()
        with torch.inference_mode():
            for idx, batch in length_sorted_batches(tokenizer, list(texts), batch_size, max_length):
                batch = {k: v.to(device) for k, v in batch.items()}
                hidden = model.base_model(**batch).last_hidden_state.float()
                mask = batch["attention_mask"].unsqueeze(-1).float()
                out[idx] = ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).cpu().numpy()
        return out

    return embed


class DriftNotChecked(NightshiftError, RuntimeError):
    """A version's training snapshot (its `data.snapshot` lineage) cannot be read: the gate must not promote unchecked."""


def _readable(location: str, ref: ModelRef) -> Snapshot:
    try:
        return load_snapshot(location)
    except Exception as exc:  # noqa: BLE001 - gone, never committed, or the store unreachable: all stop the gate
        raise DriftNotChecked(f"drift of {ref.name} v{ref.version}: its training snapshot {location} (tag data.snapshot) cannot be "
                              f"read: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc


def check_drift(client, ref, settings: Settings, champion=None) -> dict:
    """Drift of a version's training snapshot against the champion's; logged on the version's run.

    Writes `drift/report.json` and `drift/report.html` to the run, `drift_*` metrics, and the
    tags `drift.status` (none|warn|severe|not_run) and `drift.label_shift` on the version and run.

    Raises:
        DriftNotChecked: either version's training snapshot (`data.snapshot` tag) cannot be read from here.
    """
    if champion is None:
        version = alias_version(client, ref.name, CHAMPION)
        champion = ModelRef(ref.name, version) if version else None
    run_id = client.get_model_version(ref.name, ref.version).run_id
    current = snapshot_lineage(client, ref)
    reference = snapshot_lineage(client, champion) if champion else None
    if champion is None or champion.version == ref.version:
        report: dict[str, Any] = {"status": "not_run", "reason": "no other champion to compare with", "label_shift": False, "checks": []}
    elif current is None or reference is None:
        missing = f"v{ref.version}" if current is None else f"the champion v{champion.version}"
        report = {"status": "not_run", "reason": f"{missing} has no data.snapshot lineage tag", "label_shift": False, "checks": []}
    else:
        old, new = _readable(reference, ModelRef(champion.name, champion.version)), _readable(current, ModelRef(ref.name, ref.version))
        _, model = load_model(client, f"{champion.name}/{champion.version}")
        report = compare_snapshots(old, new, settings, sentence_embedder(model.unwrap_python_model()))
        report["reason"] = f"training snapshot of v{ref.version} against the training snapshot of champion v{champion.version}"
    report.update({"model": ref.name, "version": ref.version, "reference_version": champion.version if champion else None})

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "report.json").write_text(json.dumps(report, indent=2, default=str))
        (Path(tmp) / "report.html").write_text(render_html(report))
        client.log_artifacts(run_id, tmp, "drift")
    metrics = {f"drift_{c['name'].replace('.', '_')}": c["value"] for c in report["checks"] if np.isfinite(c["value"])}
    if metrics:
        from mlflow.entities import Metric

        now = int(datetime.now(timezone.utc).timestamp() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
    tags = {"drift.status": report["status"], "drift.label_shift": str(report["label_shift"]).lower(),
            "drift.reference_version": str(report["reference_version"] or "")}
    set_version_tags(client, ref, tags)
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    return report
