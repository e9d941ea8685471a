"""Drift checks: a new snapshot against its reference, the champion's training snapshot.

Log snapshots get four kinds of check: the label distribution (PSI, with a permutation p-value),
message templates and tokens (Jensen–Shannon divergence on normalised text), message length (KS)
and embeddings (MMD on a sample of the champion's own sentence embeddings). Metric snapshots get
the value distribution (KS) and the hour-of-day seasonal profile, per series.

Each check has warn and severe thresholds from the `[drift]` settings. A difference that is not
significant at `drift.alpha` never raises a status, so small windows do not cry wolf. The report's
status is the worst of its checks; `label_shift` says whether a label check moved, which the
promotion gate reads together with a severe status as a sign of a labelling fault.
"""

from __future__ import annotations

import html
import json
import re
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from pipelines.config import DriftSettings, Settings
from pipelines.snapshot import Snapshot, load_snapshot
from pipelines.telemetry import get_logger

log = get_logger("drift")

STATUSES = ("none", "warn", "severe")
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
    indptr, indices = [0], []
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
    from models.normalize import normalize

    return " ".join("<*>" if any(ch.isdigit() for ch in tok) else tok for tok in normalize(text).split())


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
                        detail={"median_reference": float(np.median(ref_len)), "median_current": float(np.median(cur_len))}))

    if embed is not None and cfg.embedding_sample > 1:
        from models.normalize import normalize

        n = cfg.embedding_sample
        x = embed([normalize(m) for m in _sample(ref, n, rng)["message"]])
        y = embed([normalize(m) for m in _sample(cur, n, rng)["message"]])
        value, p, bandwidth = mmd2(x, y, perms, rng)
        checks.append(grade(cfg, "message.embedding", "mmd2", value, "embedding_mmd", p,
                            detail={"sample": [len(x), len(y)], "dimensions": int(x.shape[1]), "bandwidth": bandwidth}))
    return checks


# ---- metric snapshots ------------------------------------------------------------------------

def seasonal_distance(ref: pd.DataFrame, cur: pd.DataFrame) -> float:
    """Mean absolute difference of the two hour-of-day profiles (each centred on its own mean), in reference std units."""
    def profile(f: pd.DataFrame) -> pd.Series:
        by_hour = f.groupby(pd.to_datetime(f["timestamp"], utc=True).dt.hour)["value"].mean()
        return by_hour - f["value"].mean()

    a, b = profile(ref), profile(cur)
    hours = a.index.intersection(b.index)
    scale = float(ref["value"].std()) or abs(float(ref["value"].mean())) or 1.0
    return float(np.mean(np.abs(a[hours] - b[hours]))) / scale if len(hours) else float("nan")


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
    return [
        grade(cfg, "metric.value", "ks", by_ks[0][1], "metric_value_ks", by_ks[0][2],
              detail={**detail, "worst_series": [{"series": s[0], "ks": round(s[1], 4), "p_value": s[2]} for s in by_ks[:5]]}),
        grade(cfg, "metric.seasonal", "profile", by_season[0][3], "seasonal",
              detail={"worst_series": [{"series": s[0], "distance": round(s[3], 4)} for s in by_season[:5]]}),
    ]


# ---- report ----------------------------------------------------------------------------------

def _describe(snapshot: Snapshot) -> dict:
    return {"snapshot": str(snapshot.path), "content_hash": snapshot.content_hash, "window": snapshot.window,
            "rows": snapshot.manifest.get("row_count")}


def check_settings(cfg: DriftSettings) -> None:
    """Refuse thresholds that cannot grade anything, naming the setting."""
    from pipelines.config import ConfigError

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
        raise ValueError(f"drift: snapshots {reference.path} and {current.path} are not both log snapshots (field 'message') "
                         "or both metric snapshots (fields 'series', 'value')")
    status = worst([c.status for c in checks])
    report = {"status": status, "label_shift": any(c.label and c.status != "none" for c in checks), "kind": kind,
              "reference": _describe(reference), "current": _describe(current),
              "checks": [asdict(c) for c in checks],
              "thresholds": asdict(settings.drift), "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    log.info("drift checked", extra={"status": status, "label_shift": report["label_shift"],
                                     **{c.name: round(c.value, 4) for c in checks if np.isfinite(c.value)}})
    return report


def render_html(report: dict) -> str:
    """A self-contained HTML page of the report, for the MLflow artifact viewer."""
    colour = {"none": "#2e7d32", "warn": "#ef6c00", "severe": "#c62828", "not_run": "#616161"}
    esc = lambda v: html.escape(str(v))  # noqa: E731
    rows = "".join(
        f"<tr><td>{esc(c['name'])}</td><td>{esc(c['statistic'])}</td><td>{c['value']:.4f}</td><td>{c['warn']}</td><td>{c['severe']}</td>"
        f"<td>{'' if c['p_value'] is None else format(c['p_value'], '.4f')}</td>"
        f"<td style='color:{colour[c['status']]};font-weight:bold'>{esc(c['status'])}</td>"
        f"<td><pre>{esc(json.dumps(c['detail'], indent=1, default=str))}</pre></td></tr>"
        for c in report.get("checks", []))
    ref, cur = report.get("reference") or {}, report.get("current") or {}
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>drift report</title>"
            "<style>body{font-family:sans-serif}td,th{border:1px solid #ccc;padding:4px;vertical-align:top}"
            "table{border-collapse:collapse}pre{margin:0;font-size:11px}</style></head><body>"
            f"<h2>Drift: <span style='color:{colour.get(report['status'], '#000')}'>{esc(report['status'])}</span>"
            f"{' (label shift)' if report.get('label_shift') else ''}</h2>"
            f"<p>{esc(report.get('reason', ''))}</p>"
            f"<p>reference: {esc(ref.get('snapshot'))} {esc(ref.get('window'))} ({esc(ref.get('rows'))} rows)<br>"
            f"current: {esc(cur.get('snapshot'))} {esc(cur.get('window'))} ({esc(cur.get('rows'))} rows)</p>"
            "<table><tr><th>check</th><th>statistic</th><th>value</th><th>warn</th><th>severe</th><th>p</th><th>status</th><th>detail</th></tr>"
            f"{rows}</table></body></html>")


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

        from models.bert import length_sorted_batches

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


def check_drift(client, ref, settings: Settings, champion=None) -> dict:
    """Drift of a version's training snapshot against the champion's; logged on the version's run.

    Writes `drift/report.json` and `drift/report.html` to the run, `drift_*` metrics, and the
    tags `drift.status` (none|warn|severe|not_run) and `drift.label_shift` on the version and run.
    """
    from pipelines.evaluate import training_snapshot
    from pipelines.registry import CHAMPION, ModelRef, alias_version, load_model, set_version_tags

    if champion is None:
        version = alias_version(client, ref.name, CHAMPION)
        champion = ModelRef(ref.name, version) if version else None
    run_id = client.get_model_version(ref.name, ref.version).run_id
    current = training_snapshot(client, ref)
    reference = training_snapshot(client, champion) if champion else None
    if champion is None or champion.version == ref.version:
        report = {"status": "not_run", "reason": "no other champion to compare with", "label_shift": False, "checks": []}
    elif current is None or reference is None:
        missing = "this version's" if current is None else f"the champion v{champion.version}'s"
        report = {"status": "not_run", "reason": f"{missing} training snapshot is not readable here", "label_shift": False, "checks": []}
    else:
        _, model = load_model(client, f"{champion.name}/{champion.version}")
        report = compare_snapshots(load_snapshot(reference), load_snapshot(current), settings,
                                   sentence_embedder(model.unwrap_python_model()))
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
