"""The drift report a person reads: one self-contained HTML page, a matplotlib PNG per check drawn from the report
alone."""

from __future__ import annotations

import numpy as np

from pipelines.pages import CURRENT_COLOUR, REFERENCE_COLOUR, badge, esc, figure, fmt, page, png, table

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

