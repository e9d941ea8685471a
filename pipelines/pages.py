"""The page kit of every page a person reads (the night report, the validation and the drift reports).

Every page is one self-contained HTML file: the CSS is inline and pictures are PNGs embedded as
base64, so a page reads the same offline, from a copy, or inside the MLflow artifact viewer (which
shows HTML in a sandboxed frame that loads nothing from elsewhere).

Pictures are drawn on `matplotlib.figure.Figure` objects, never through pyplot: no global backend
or figure registry, so drawing is safe in Airflow workers and threads, and needs no display.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import numbers
from dataclasses import dataclass
from typing import Any, Iterable, Sequence
from urllib.parse import quote

# One colour per verdict, shared by every page, so "severe" or "failed" looks the same everywhere.
STATUS_COLOURS = {"passed": "#2e7d32", "none": "#2e7d32", "promoted": "#2e7d32", "kept": "#1565c0",
                  "warn": "#ef6c00", "stale": "#ef6c00", "pending": "#6d4c41", "skipped": "#616161", "not_run": "#616161",
                  "failed": "#c62828", "severe": "#c62828", "rejected": "#c62828", "abandoned": "#616161",
                  "rolled_back": "#6a1b9a"}
REFERENCE_COLOUR, CURRENT_COLOUR = "#90a4ae", "#1565c0"  # reference / champion side, current / candidate side

STYLE = """
body{font-family:-apple-system,'Segoe UI',Roboto,'Helvetica Neue',Arial,sans-serif;margin:24px auto;max-width:1100px;
     padding:0 16px;color:#212121;line-height:1.4}
h1{font-size:1.6em;margin-bottom:4px}h2{font-size:1.3em;margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:1.1em;margin-bottom:6px}
table{border-collapse:collapse;margin:8px 0 12px}th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f5f5f5;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff;font-weight:600;font-size:.9em}
.muted{color:#757575}.small{font-size:.85em}code,.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.9em}
.card{border:1px solid #ddd;border-radius:6px;padding:8px 16px;margin:12px 0}
.reason{margin:2px 0}img{max-width:100%}.figs{display:flex;flex-wrap:wrap;gap:12px}
"""


# ---- the page kit ----------------------------------------------------------------------------

def esc(value: Any) -> str:
    """`value` as HTML-escaped text (None as an empty string)."""
    return "" if value is None else html.escape(str(value))


def page(title: str, body: str) -> str:
    """A whole HTML document: `title`, the shared inline style, and `body` (already HTML)."""
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><style>{STYLE}</style></head>"
            f"<body>{body}</body></html>")


def badge(status: Any) -> str:
    """A coloured pill for a verdict (`passed`, `severe`, `promoted`, …); grey for an unknown one."""
    text = str(status) if status is not None else "n/a"
    shown = text.replace("_", " ")  # a stored status such as not_run, in words
    return f"<span class='badge status-{esc(text)}' style='background:{STATUS_COLOURS.get(text, '#616161')}'>{esc(shown)}</span>"


def number(value: Any) -> float | None:
    """`value` as a float when it is a finite real number (numpy scalars too, not a bool), else None (a cell shown
    empty, a bound left open)."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def fmt(value: Any, digits: int = 4) -> str:
    """A number for people: ints with thousands separators, floats to `digits` significant digits;
    anything else as its text."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:,.0f}" if value.is_integer() and abs(value) >= 1000 else f"{value:.{digits}g}"
    return str(value)


def truncate(value: Any, limit: int = 160) -> str:
    """`value` as text cut to `limit` characters, saying how long it was when cut."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} chars)"


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Sequence[int] = (), raw: Sequence[int] = ()) -> str:
    """An HTML table; cells are escaped except the columns in `raw` (already HTML); columns in `numeric`
    are right-aligned and formatted with `fmt`."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            if i in raw:
                cells.append(f"<td>{cell}</td>")
            elif i in numeric:
                cells.append(f"<td class='num'>{esc(fmt(cell))}</td>")
            else:
                cells.append(f"<td>{esc(cell)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def figure(width: float = 6.0, height: float = 3.0):
    """A matplotlib `Figure` (no pyplot: no global state, no display needed)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return fig


def png(fig, alt: str) -> str:
    """An `<img>` holding `fig` as an inline base64 PNG, described by `alt`."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f"<img alt='{esc(alt)}' src='data:image/png;base64,{data}'>"


def gauge(value: float, low: float | None, high: float | None, width: int = 220) -> str:
    """An inline SVG: the allowed range [low, high] shaded on a line, and a marker at `value`
    (green inside, red outside). Either bound may be None (open)."""
    finite = [v for v in (value, low, high) if v is not None and math.isfinite(v)]
    if not finite:
        return ""
    lo, hi = min(finite), max(finite)
    pad = (hi - lo) * 0.15 or (abs(hi) * 0.5 or 1.0)
    lo, hi = lo - pad, hi + pad

    def x(v: float) -> float:
        return 6 + (width - 12) * (v - lo) / (hi - lo)

    band_lo, band_hi = x(low if low is not None else lo), x(high if high is not None else hi)
    inside = (low is None or value >= low) and (high is None or value <= high)
    colour = STATUS_COLOURS["passed" if inside else "failed"]
    return (f"<svg width='{width}' height='18' role='img' aria-label='{esc(fmt(value))} against [{esc(fmt(low))}, {esc(fmt(high))}]'>"
            f"<line x1='6' y1='9' x2='{width - 6}' y2='9' stroke='#bdbdbd' stroke-width='2'/>"
            f"<rect x='{band_lo:.1f}' y='4' width='{max(band_hi - band_lo, 1):.1f}' height='10' fill='#c8e6c9'/>"
            f"<circle cx='{x(value):.1f}' cy='9' r='5' fill='{colour}'/></svg>")


# ---- links into the MLflow UI ----------------------------------------------------------------

@dataclass(frozen=True)
class UiLinks:
    """URLs of MLflow UI pages (the UI routes in its URL fragment) under `base`, e.g. http://127.0.0.1:5000."""

    base: str

    def _url(self, route: str) -> str:
        return f"{self.base.rstrip('/')}/#/{route}"

    def model(self, name: str) -> str:
        return self._url(f"models/{quote(name)}")

    def model_version(self, name: str, version: str | int) -> str:
        return self._url(f"models/{quote(name)}/versions/{quote(str(version))}")

    def run(self, experiment_id: str, run_id: str) -> str:
        return self._url(f"experiments/{quote(str(experiment_id))}/runs/{quote(run_id)}")

    def artifact(self, experiment_id: str, run_id: str, path: str) -> str:
        """The run page's artifact tab opened at `path` (e.g. `drift/report.html`)."""
        return self._url(f"experiments/{quote(str(experiment_id))}/runs/{quote(run_id)}/artifacts/{quote(path)}")


def link(url: str | None, text: str) -> str:
    """An `<a>` to `url` (plain text when there is none)."""
    return f"<a href='{esc(url)}'>{esc(text)}</a>" if url else esc(text)
