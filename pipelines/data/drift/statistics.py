"""The drift statistics (PSI, Jensen-Shannon divergence, MMD) with their permutation p-values, a check graded
against its `[drift]` thresholds, and the small tables a check's picture is drawn from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from nightshift_models.normalize import normalize
from pipelines.config import DriftSettings

STATUSES = ("none", "warn", "severe")
HISTOGRAM_BINS = 30
PROJECTED_POINTS = 200  # embeddings per side kept in the report's 2-D projection


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

