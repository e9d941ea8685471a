"""`report.html`, the report a person reads: each measured value against its bound, and the failed rows."""

from __future__ import annotations

import json
import math
from typing import Any

from pipelines.data.validation.results import FAILED, PASSED, RESULT_FILE, WARN
from pipelines.pages import badge, esc, fmt, gauge, number, page, truncate

# What a whole-snapshot ratio is a share of, so the page says `0 anomalous rows of 1,516 labelled rows`.
RATIO_PARTS = {"anomaly_ratio": ("anomalous_rows", "labelled_rows"), "duplicate_ratio": ("duplicate_rows", "rows")}


def _interval(kwargs: dict) -> str:
    """The bound of a `…_between` expectation: `[a, b]`, `>= a` or `<= b` (`)` for a strict maximum)."""
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    if low is not None and high is not None:
        return f"[{fmt(low)}, {fmt(high)}{')' if kwargs.get('strict_max') else ']'}"
    if low is not None:
        return f"{'>' if kwargs.get('strict_min') else '>='} {fmt(low)}"
    return f"{'<' if kwargs.get('strict_max') else '<='} {fmt(high)}" if high is not None else "any"


def _rule(kind: str, kwargs: dict) -> str:
    """What one row must satisfy, in words: `length in [1, 20000]`, `matches /\\S/`, `one of 12 labels`…"""
    if kind == "expect_column_values_to_not_be_null":
        return "is present"
    if kind == "expect_column_values_to_match_regex":
        return f"matches /{kwargs.get('regex')}/"
    if kind == "expect_column_value_lengths_to_be_between":
        return f"length in {_interval(kwargs)}"
    if kind == "expect_column_values_to_be_between":
        return f"in {_interval(kwargs)}"
    if kind == "expect_column_values_to_be_in_set":
        values = list(kwargs.get("value_set") or [])
        return f"one of {', '.join(map(str, values))}" if len(values) <= 4 else f"one of the {len(values)} allowed values"
    if kind == "expect_column_pair_values_a_to_be_greater_than_b":
        return f"{kwargs.get('column_A')} {'>=' if kwargs.get('or_equal') else '>'} {kwargs.get('column_B')}"
    return kind.removeprefix("expect_").replace("_", " ")


def _worst(values: list[float], low: float | None, high: float | None) -> int:
    """Index of the value farthest outside [low, high] (or nearest its edge when all are inside)."""
    def outside(v: float) -> float:
        return max((low - v) if low is not None else -math.inf, (v - high) if high is not None else -math.inf)
    return max(range(len(values)), key=lambda i: outside(values[i]))


def measurement(result: dict, report: dict) -> dict:
    """One expectation as a person reads it: what was measured, against which bound, and the verdict.

    Returns {check, description, view, measured, bound, success, value, low, high}; `value`, `low` and
    `high` are set for a single measured number (a ratio of the whole snapshot), which gets a gauge.
    Row-level checks (`rows`, `labels`) measure how many rows break the rule; aggregate checks
    (`summary`, `classes`, `series`) measure the aggregate itself (the anomaly ratio, rows per class,
    each series' NaN ratio), read from the report's `aggregates`.
    """
    cfg = result["expectation_config"]
    kind, kwargs, meta = cfg["type"], cfg.get("kwargs") or {}, cfg.get("meta") or {}
    r, view = result.get("result") or {}, meta.get("view")
    column = kwargs.get("column") or kwargs.get("column_A")
    out = {"check": meta.get("check"), "description": cfg.get("description"), "view": view, "success": bool(result["success"]),
           "measured": "", "bound": "", "value": None, "low": None, "high": None}
    info = result.get("exception_info") or {}
    if info.get("raised_exception"):
        return {**out, "measured": f"error: {info.get('exception_message')}", "bound": _rule(kind, kwargs)}
    if kind == "expect_table_columns_to_match_set":
        observed = r.get("observed_value") or list((report.get("schema") or {}))
        return {**out, "measured": f"{len(observed)} columns: {', '.join(map(str, observed))}",
                "bound": f"{'exactly' if kwargs.get('exact_match') else 'includes'} {', '.join(kwargs.get('column_set') or [])}"}
    if view == "schema":
        schema = report.get("schema")
        seen = schema.get(column, "absent") if schema is not None else ", ".join(map(str, r.get("partial_unexpected_list") or []))
        return {**out, "measured": f"{column}: {seen or ('as required' if out['success'] else 'unknown')}",
                "bound": " | ".join(map(str, kwargs.get("value_set") or []))}
    table = (report.get("aggregates") or {}).get(view)
    if view in ("rows", "labels") or table is None:
        n, bad = int(r.get("element_count") or 0), int(r.get("unexpected_count") or 0)
        unit = "labels" if view == "labels" else "rows"
        mostly = kwargs.get("mostly") or 1.0
        allowed = "none allowed" if mostly >= 1.0 else f"up to {100 * (1 - mostly):.2g}% allowed"
        share = f" ({100.0 * bad / n:.2f}%)" if n else ""
        return {**out, "measured": f"{fmt(bad)} of {fmt(n)} {unit} break it{share}",
                "bound": f"{column} {_rule(kind, kwargs)}; {allowed}"}
    # An aggregate: the measured value(s) themselves against the bound.
    low, high = number(kwargs.get("min_value")), number(kwargs.get("max_value"))
    values = [row.get(column) for row in table]
    key = meta.get("index")
    bound = f"{column} {_interval(kwargs)}"
    if not key:  # one value for the whole snapshot (`summary`): the anomaly ratio, the duplicate ratio
        value = number(values[0]) if values else None
        row = table[0] if table else {}
        part, whole = RATIO_PARTS.get(column or "", ("", ""))  # "" is no row's key: no context
        context = (f"{fmt(row[part])} {part.replace('_', ' ')} of {fmt(row[whole])} {whole.replace('_', ' ')}"
                   if part in row and whole in row else "")
        return {**out, "measured": f"{column} {fmt(value)}" + (f" ({context})" if context else ""), "bound": bound,
                "value": value, "low": low, "high": high}
    numbers = [number(v) for v in values]
    keys = [row.get(key) for row in table]
    if len(table) <= 4:
        measured = ", ".join(f"{k}: {fmt(v)}" for k, v in zip(keys, values))
    else:
        finite = [i for i, v in enumerate(numbers) if v is not None]
        worst = finite[_worst([v for v in numbers if v is not None], low, high)] if finite else 0
        measured = (f"{fmt(int(r.get('unexpected_count') or 0))} of {fmt(int(r.get('element_count') or len(table)))} {key} outside; "
                    f"worst {keys[worst]}: {fmt(values[worst])}")
    return {**out, "measured": measured, "bound": bound}


def _examples_table(examples: list) -> str:
    """Failed rows as a table (one column per field), their texts as `_shown` cut them."""
    if not examples:
        return "<p class='muted'>no examples kept</p>"

    def cell(value: Any) -> str:
        return esc(value if isinstance(value, str) else json.dumps(value, default=str))

    if all(isinstance(e, dict) for e in examples):
        columns = list(dict.fromkeys(k for e in examples for k in e))
        head = "".join(f"<th>{esc(c)}</th>" for c in columns)
        rows = "".join("<tr>" + "".join(f"<td class='mono'>{cell(e.get(c, ''))}</td>" for c in columns) + "</tr>" for e in examples)
        return f"<table class='examples'><tr>{head}</tr>{rows}</table>"
    return "<ul>" + "".join(f"<li class='mono'>{cell(e)}</li>" for e in examples) + "</ul>"


def render_html(report: dict, show_chars: int) -> str:
    """The validation report as one self-contained HTML page (inline CSS, no scripts, no CDN):
    the verdict, a table of every expectation (measured value, bound, verdict; a gauge for a
    single ratio), the failed rows with their examples, and what was not evaluated. Measured values
    and aggregate cells (series ids hold data) are cut to `show_chars`."""
    results = (report.get("great_expectations") or {}).get("results") or []
    rows = []
    for m in map(lambda d: measurement(d, report), results):
        verdict_ = PASSED if m["success"] else (WARN if report.get("warn_only") else FAILED)
        picture = gauge(m["value"], m["low"], m["high"]) if m["value"] is not None else ""
        rows.append(f"<tr class='check-{'ok' if m['success'] else 'bad'}'><td><b>{esc(m['check'])}</b><br>"
                    f"<span class='small muted'>{esc(m['description'])}</span></td><td>{esc(truncate(m['measured'], show_chars))}<br>{picture}</td>"
                    f"<td>{esc(m['bound'])}</td><td>{badge(verdict_)}</td></tr>")
    failed = []
    for f in report.get("failed", []):
        count = f"{fmt(f['rows'])} of {fmt(f['of'])} rows" if f.get("rows") is not None else "error"
        failed.append(f"<h3>{esc(f['check'])} <span class='small muted'>{esc(f['expectation'])}"
                      f"{' on ' + esc(f['column']) if f.get('column') else ''}</span></h3>"
                      f"<p>{esc(f.get('description'))} <b>{esc(count)}</b></p>{_examples_table(f.get('examples') or [])}")
    skipped = "".join(f"<li><b>{esc(s['check'])}</b>: {esc(s['reason'])}</li>" for s in report.get("not_evaluated", []))
    window = report.get("window") or {}
    s = report.get("statistics") or {}
    aggregates = "".join(
        f"<h3>{esc(view)}</h3><table><tr>{''.join(f'<th>{esc(k)}</th>' for k in table_[0])}</tr>"
        + "".join("<tr>" + "".join(f"<td class='num'>{esc(truncate(fmt(v), show_chars))}</td>" for v in row.values()) + "</tr>"
                  for row in table_[:20])
        + "</table>" + (f"<p class='small muted'>first 20 of {len(table_)} rows</p>" if len(table_) > 20 else "")
        for view, table_ in (report.get("aggregates") or {}).items() if table_)
    docs = report.get("data_docs_page") or report.get("data_docs")
    body = (f"<h1>Validation: {esc(report.get('suite'))} suite {badge(report.get('status'))}</h1>"
            f"<p>{fmt(s.get('successful'))} of {fmt(s.get('evaluated'))} expectations met on {fmt(report.get('rows'))} rows "
            f"of <span class='mono'>{esc(report.get('snapshot'))}</span><br>"
            f"window {esc(window.get('start'))} – {esc(window.get('end'))}; content hash <span class='mono'>{esc(report.get('content_hash'))}</span>; "
            f"validated {esc(report.get('validated_at'))}</p>"
            "<h2>Expectations: measured against their bounds</h2>"
            f"<table class='expectations'><tr><th>check</th><th>measured</th><th>bound</th><th>verdict</th></tr>{''.join(rows)}</table>"
            + (f"<h2>Failed: the rows behind each failure</h2>{''.join(failed)}" if failed else "")
            + (f"<h2>Not evaluated</h2><ul>{skipped}</ul>" if skipped else "")
            + (f"<h2>Aggregates</h2>{aggregates}" if aggregates else "")
            + (f"<p class='small muted'>Great Expectations' own result: <a href='{esc(docs)}'>Data Docs</a> and "
               f"<span class='mono'>{RESULT_FILE}</span> in this folder.</p>" if docs else ""))
    return page(f"validation {report.get('suite')} {report.get('status')}", body)

