"""Metrics from Prometheus into snapshots.

`PrometheusSource.query_range` pulls one PromQL query over a window through `/api/v1/query_range`,
split into chunks under Prometheus's limit of 11,000 points per series and fetched a few at a
time, with basic or bearer auth, TLS, retries and timeouts. `FileMetricSource` evaluates series
selectors on an OpenMetrics file with the same step semantics: it is the embedded demo default.
`ingest_metrics` snapshots named queries as metric rows (timestamp, series, labels, value).

Gaps: Prometheus returns no point where a series is absent or stale (a stale marker ends it), and
NaN or ±Inf where the data or the expression holds them. All of these are gaps here: left out of
the rows and counted. A series with more than `prometheus.max_gap_fraction` of its window in gaps
is refused, naming the series.
"""

from __future__ import annotations

import math
import re
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator, Protocol
from urllib.parse import unquote, urlsplit, urlunsplit

import numpy as np
import pyarrow as pa

from pipelines.config import InputSettings, PrometheusSettings, Settings
from pipelines.data.formats import iter_lines, metric_csv_samples, sniff_metric_format
from pipelines.data.records import epoch_divisor, format_duration, parse_duration, quoted
from pipelines.data.snapshots import Snapshot, write_snapshot
from pipelines.errors import InputError, MissingInput, NightshiftError
from pipelines.sources.logs import file_path, public_uri
from pipelines.storage import StoragePath
from pipelines.telemetry import get_logger

log = get_logger("prometheus")

METRIC_SCHEMA = pa.schema([
    ("timestamp", pa.timestamp("ms", tz="UTC")),
    ("series", pa.string()),
    ("labels", pa.map_(pa.string(), pa.string())),
    ("value", pa.float64()),
])
LOOKBACK_DELTA = 300.0  # Prometheus's default: a sample answers queries for 5 minutes after it
POINTS_LIMIT = 11_000  # Prometheus refuses query_range requests with more points per series


class PrometheusError(NightshiftError, RuntimeError):
    """Prometheus is unreachable, refused the credentials, or rejected a query (message says which)."""


class MetricDataError(NightshiftError, ValueError):
    """The metrics cannot be used: no series, too many gaps, a bad line in a file (names which)."""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def series_id(labels: dict[str, str]) -> str:
    """A stable id from the label set, in PromQL's own spelling: `name{a="1",b="2"}`."""
    body = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()) if k != "__name__")
    return f"{labels.get('__name__', '')}{{{body}}}"


@dataclass
class Series:
    """One series over a window: its labels and the points Prometheus returned (on the step grid)."""

    labels: dict[str, str]
    timestamps: np.ndarray  # float64 epoch seconds
    values: np.ndarray  # float64, NaN and ±Inf as returned

    @property
    def id(self) -> str:
        return series_id(self.labels)


class MetricSource(Protocol):
    uri: str  # for manifests and messages: credentials stripped

    def query_range(self, query: str, start: datetime, end: datetime, step: float) -> list[Series]: ...


def step_grid(start: datetime, end: datetime, step: float) -> np.ndarray:
    """The evaluation times of a window: start, start + step, … while < end (epoch seconds)."""
    s, e = start.timestamp(), end.timestamp()
    if not e > s:
        raise InputError(f"window [{start.isoformat()}, {end.isoformat()}): the end must be after the start")
    return s + step * np.arange(int(math.ceil((e - s) / step)))


def chunk_ranges(grid: np.ndarray, max_points: int) -> list[tuple[float, float]]:
    """Inclusive (start, end) pairs of at most `max_points` steps each, covering the grid in order."""
    if not 1 <= max_points <= POINTS_LIMIT:
        raise InputError(f"setting prometheus.max_points: {max_points} must be between 1 and {POINTS_LIMIT}")
    return [(float(grid[i]), float(grid[min(i + max_points, len(grid)) - 1])) for i in range(0, len(grid), max_points)]


def _merge(parts: list[list[Series]]) -> list[Series]:
    """Chunks of one query into whole series, matched by label set; chunks arrive in time order."""
    merged: dict[str, tuple[dict, list, list]] = {}
    for part in parts:
        for s in part:
            entry = merged.setdefault(s.id, (s.labels, [], []))
            entry[1].append(s.timestamps)
            entry[2].append(s.values)
    return [Series(labels, np.concatenate(ts), np.concatenate(vs)) for labels, ts, vs in merged.values()]


class PrometheusSource:
    """The HTTP API of a Prometheus server (or anything speaking it: Thanos, Mimir, VictoriaMetrics)."""

    def __init__(self, url: str, settings: PrometheusSettings):
        import requests
        from requests.adapters import HTTPAdapter

        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InputError(f"metric source {public_uri(url)}: expected http(s)://host:port")
        netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
        self.base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        self.uri = public_uri(url)
        self.settings = settings
        self.session = requests.Session()
        self.session.mount(f"{parts.scheme}://", HTTPAdapter(pool_maxsize=max(settings.concurrency, 1)))
        user = unquote(parts.username or "") or settings.username
        password = unquote(parts.password or "") or settings.password.reveal() or ""
        if settings.bearer_token:
            self.session.headers["Authorization"] = f"Bearer {settings.bearer_token.reveal()}"
        elif user:
            self.session.auth = (user, password)
        self.verify = settings.ca_file or settings.tls_verify  # passed per request: REQUESTS_CA_BUNDLE would override a session's
        if settings.cert_file:
            self.session.cert = (settings.cert_file, settings.key_file) if settings.key_file else settings.cert_file

    def _get(self, path: str, params: dict, what: str) -> dict:
        """GET an API path; retry connection errors, timeouts, 429 and 5xx with backoff; raise PrometheusError."""
        import requests

        attempts, last = max(self.settings.retries, 1), ""
        for attempt in range(1, attempts + 1):
            try:
                resp = self.session.get(self.base + path, params=params, verify=self.verify,
                                        timeout=(min(self.settings.timeout, 10.0), self.settings.timeout))
            except requests.exceptions.SSLError as exc:
                raise PrometheusError(f"Prometheus at {self.uri}: TLS handshake failed ({_reason(exc)}); "
                                      "check settings prometheus.ca_file, cert_file, tls_verify") from None
            except (requests.ConnectionError, requests.Timeout) as exc:
                last = exc.__class__.__name__
            else:
                if resp.status_code in (401, 403):
                    raise PrometheusError(f"Prometheus at {self.uri} refused the credentials (HTTP {resp.status_code}); "
                                          "check settings prometheus.username/password or bearer_token")
                body = _json(resp)
                if body is not None and body.get("status") == "success":
                    return body["data"]
                if resp.status_code == 429 or resp.status_code >= 500:
                    last = f"HTTP {resp.status_code}" + (f" {body.get('error')}" if body else "")
                elif body is None:
                    raise PrometheusError(f"{self.uri}{path} answered HTTP {resp.status_code} without a Prometheus API body; is it Prometheus?")
                else:
                    kind, error = body.get("errorType", "error"), body.get("error", "")
                    if "parse error" in error:
                        raise PrometheusError(f"{what} is not valid PromQL: {error}")
                    raise PrometheusError(f"{what}: Prometheus at {self.uri} refused it ({kind}): {error}")
            if attempt < attempts:
                time.sleep(min(0.25 * 2 ** (attempt - 1), 4.0))
        raise PrometheusError(f"Prometheus at {self.uri} did not answer {what} after {attempts} attempt(s) (last: {last}); is it up?")

    def _range(self, query: str, start: float, end: float, step: float) -> list[Series]:
        data = self._get("/api/v1/query_range",
                         {"query": query, "start": start, "end": end, "step": step, "timeout": str(self.settings.timeout)},
                         f"query {query!r}")
        if data.get("resultType") != "matrix":
            raise PrometheusError(f"query {query!r}: expected a range vector result, got {data.get('resultType')}")
        out = []
        for r in data["result"]:
            values = r.get("values") or []
            out.append(Series(dict(r["metric"]), np.array([p[0] for p in values], dtype=np.float64),
                              np.array([float(p[1]) for p in values], dtype=np.float64)))
        return out

    def query_range(self, query: str, start: datetime, end: datetime, step: float) -> list[Series]:
        """All series of `query` at `step` over [start, end), chunked and fetched `concurrency` at a time."""
        chunks = chunk_ranges(step_grid(start, end, step), self.settings.max_points)
        if len(chunks) == 1 or self.settings.concurrency <= 1:
            return _merge([self._range(query, s, e, step) for s, e in chunks])
        with ThreadPoolExecutor(min(self.settings.concurrency, len(chunks))) as pool:
            return _merge(list(pool.map(lambda c: self._range(query, c[0], c[1], step), chunks)))


def _json(resp) -> dict | None:
    try:
        body = resp.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) and "status" in body else None


def _reason(exc: Exception) -> str:
    text = str(exc)
    m = re.search(r"\[SSL[^\]]*\][^')\"]*", text)
    return m.group(0) if m else exc.__class__.__name__


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)(?:\s+(\S+))?\s*$")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')
_SELECTOR = re.compile(r"^\s*([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*(?:\{(.*)\})?\s*$", re.S)
_MATCHER = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)')


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m[1] == "n" else m[1], value)


def _parse_labels(text: str, where: str) -> dict[str, str]:
    labels, pos, body = {}, 0, text[1:-1]
    while pos < len(body):
        m = _LABEL.match(body, pos)
        if not m or m.end() == pos:
            raise MetricDataError(f"{where}: cannot read the label set {quoted(text)}")
        labels[m[1]] = _unescape(m[2])
        pos = m.end()
    return labels


def _matchers(query: str, uri: str) -> list[tuple[str, str, str]]:
    """A series selector as (label, op, value) matchers; anything else is refused for a file source."""
    refused = MetricDataError(f"query {query!r}: a file source ({uri}) evaluates series selectors only, like "
                              'name{label="value"}; PromQL functions and operators need a Prometheus URL')
    m = _SELECTOR.match(query)
    if not m:
        raise refused
    matchers = [("__name__", "=", m[1])] if m[1] else []
    body, pos = (m[2] or "").strip(), 0
    while pos < len(body):
        mm = _MATCHER.match(body, pos)
        if not mm or mm.end() == pos:
            raise refused
        matchers.append((mm[1], mm[2], _unescape(mm[3])))
        pos = mm.end()
    if not matchers:
        raise refused
    return matchers


def _matches(labels: dict[str, str], matchers: list[tuple[str, str, str]]) -> bool:
    for name, op, want in matchers:
        have = labels.get(name, "")
        ok = {"=": have == want, "!=": have != want, "=~": re.fullmatch(want, have) is not None,
              "!~": re.fullmatch(want, have) is None}[op]
        if not ok:
            return False
    return True


class FileMetricSource:
    """An OpenMetrics text file of timestamped samples (plain or gzip), queried like Prometheus would query it."""

    def __init__(self, uri: str):
        self.path = file_path(uri)
        self.uri = f"file://{self.path.resolve()}"
        if not self.path.is_file():
            raise MissingInput(f"metric source {uri}: no such file {self.path}")
        self._series: list[tuple[dict[str, str], np.ndarray, np.ndarray]] | None = None

    def _load(self) -> list[tuple[dict[str, str], np.ndarray, np.ndarray]]:
        """Every series of the file, parsed once: (labels with __name__, times in seconds, values)."""
        if self._series is not None:
            return self._series
        ids: dict[str, str] = {}  # the line's `name{...}` text -> series id
        found: dict[str, tuple[dict[str, str], list[float], list[float]]] = {}
        # gzip, a BOM and CRLF line ends are handled by `iter_lines`
        for lineno, line in iter_lines(self.path):
            if not line.strip() or line.startswith("#"):
                continue
            m = _SAMPLE.match(line)
            where = f"{self.path.name}:{lineno}"
            if not m:
                raise MetricDataError(f"{where}: not an OpenMetrics sample line")
            if m[4] is None:
                raise MetricDataError(f"{where}: sample without a timestamp; a history file needs one on every sample")
            value, ts = _number(m[3], "value", where), _number(m[4], "timestamp", where)
            if not math.isfinite(ts):
                raise MetricDataError(f"{where}: the timestamp {quoted(m[4])} is not a time")
            key = m[1] + (m[2] or "")
            sid = ids.get(key)
            if sid is None:
                labels = {**(_parse_labels(m[2], where) if m[2] else {}), "__name__": m[1]}
                sid = ids[key] = series_id(labels)
                found.setdefault(sid, (labels, [], []))
            found[sid][1].append(ts)
            found[sid][2].append(value)
        self._series = []
        for labels, ts_list, value_list in found.values():
            times, values = np.asarray(ts_list), np.asarray(value_list)
            times = times / epoch_divisor(times.max())  # OpenMetrics counts seconds, the Prometheus text format milliseconds
            order = np.argsort(times, kind="stable")
            self._series.append((labels, times[order], values[order]))
        return self._series

    def query_range(self, query: str, start: datetime, end: datetime, step: float) -> list[Series]:
        """Each matching series at the grid times, from its newest sample at most 5 minutes old."""
        matchers = _matchers(query, self.uri)
        grid = step_grid(start, end, step)
        out = []
        for labels, ts, values in self._load():
            if not _matches(labels, matchers):
                continue
            idx = np.searchsorted(ts, grid, side="right") - 1
            seen = idx >= 0
            seen[seen] &= grid[seen] - ts[idx[seen]] <= LOOKBACK_DELTA
            if seen.any():
                out.append(Series(dict(labels), grid[seen], values[idx[seen]]))
        return out

    def span(self, queries: Iterable[str]) -> tuple[float, float]:
        """(first, last) sample time in epoch seconds over the series the queries select.
        Raises MetricDataError when they select nothing."""
        chosen = [_matchers(q, self.uri) for q in queries]
        times = [(ts[0], ts[-1]) for labels, ts, _ in self._load() if len(ts) and any(_matches(labels, m) for m in chosen)]
        if not times:
            raise MetricDataError(f"metric source {self.uri}: no series matches {', '.join(map(repr, queries))}")
        return min(t[0] for t in times), max(t[1] for t in times)

    def metric_names(self) -> list[str]:
        """The metric names the file holds, in order of first appearance."""
        return list(dict.fromkeys(labels["__name__"] for labels, _, _ in self._load()))


def _number(token: str, part: str, where: str) -> float:
    """A sample's value or timestamp; MetricDataError `FILE:LINE: the PART …` when it is no number."""
    try:
        return float(token)
    except ValueError:
        raise MetricDataError(f"{where}: the {part} {quoted(token)} is not a number") from None


class CsvMetricSource(FileMetricSource):
    """A metric CSV/TSV (`timestamp,value[,label columns]`, `pipelines.data.formats.metric_csv_samples`),
    queried like an OpenMetrics file; the metric name is a `__name__` column, else the file name."""

    def __init__(self, uri: str, inputs: InputSettings):
        super().__init__(uri)
        self.inputs = inputs

    def _load(self) -> list[tuple[dict[str, str], np.ndarray, np.ndarray]]:
        if self._series is None:
            found: dict[str, tuple[dict[str, str], list[float], list[float]]] = {}
            for labels, ts, value in metric_csv_samples(self.path, self.inputs):
                entry = found.setdefault(series_id(labels), (labels, [], []))
                entry[1].append(ts)
                entry[2].append(value)
            self._series = []
            for labels, ts_list, value_list in found.values():
                times, values = np.asarray(ts_list), np.asarray(value_list)
                order = np.argsort(times, kind="stable")
                self._series.append((labels, times[order], values[order]))
        return self._series


def open_metric_source(uri: str, settings: Settings) -> MetricSource:
    """`http(s)://host:port[/prefix]` for Prometheus; `file://…` for a history file, OpenMetrics or CSV by
    its content (plain or gzip)."""
    if uri.startswith(("http://", "https://")):
        return PrometheusSource(uri, settings.prometheus)
    if uri.startswith("file://") or "://" not in uri:
        path = file_path(uri)
        if path.is_file() and sniff_metric_format(path, settings.inputs) == "csv":
            return CsvMetricSource(uri, settings.inputs)
        return FileMetricSource(uri)
    raise InputError(f"metric source {public_uri(uri)}: expected http(s)://host:port or file://…om")


def named_queries(settings: Settings) -> dict[str, str]:
    """The configured named queries (settings prometheus.queries.*), empty ones left out."""
    return {name: q for name, q in asdict(settings.prometheus.queries).items() if q.strip()}


def parse_queries(given: list[str] | None, settings: Settings) -> dict[str, str]:
    """`--query` values as named queries: `NAME=PROMQL`, or a bare PROMQL named after its metric
    (`query_N` for an expression); none given: the configured named queries."""
    if not given:
        return named_queries(settings)
    out: dict[str, str] = {}
    for i, text in enumerate(given, 1):
        named = re.match(r"^([a-zA-Z_][a-zA-Z0-9_]*)=(?![=~])(.+)$", text, re.S)
        plain = re.match(r"^\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(?:\{[^}]*\})?\s*$", text)
        name, query = (named[1], named[2]) if named else ((plain[1] if plain else f"query_{i}"), text)
        if name in out:
            raise InputError(f"--query: the name {name} is given twice; name them NAME=PROMQL")
        out[name] = query
    return out


@dataclass
class Fetched:
    """The series of a window, each with the named query it came from, and what was dropped."""

    series: list[tuple[str, Series]]
    grid_points: int
    non_finite: int


def fetch_metrics(source: MetricSource, queries: dict[str, str], start: datetime, end: datetime, step: float,
                  max_gap_fraction: float) -> Fetched:
    """Run every named query over the window; refuse empty results and series with too many gaps."""
    if not queries:
        raise InputError("no queries: pass --query PROMQL or set prometheus.queries.*")
    grid_points = len(step_grid(start, end, step))
    window = f"[{start.isoformat()}, {end.isoformat()}) at step {format_duration(step)}"
    seen: dict[str, str] = {}
    out: list[tuple[str, Series]] = []
    non_finite = 0
    for name, query in queries.items():
        found = source.query_range(query, start, end, step)
        if not found:
            raise MetricDataError(f"query {name} ({query!r}) returned no series from {source.uri} in {window}")
        for s in sorted(found, key=lambda s: s.id):
            s.labels.setdefault("__name__", name)  # expressions lose the metric name; the query's name stands in
            if s.id in seen:
                raise MetricDataError(f"series {s.id} is returned by both query {seen[s.id]} and query {name}")
            seen[s.id] = name
            finite = np.isfinite(s.values)
            non_finite += int((~finite).sum())
            gaps = 1.0 - finite.sum() / grid_points
            if gaps > max_gap_fraction:
                raise MetricDataError(f"series {s.id} (query {name}): {gaps:.0%} of the {grid_points} steps in {window} are gaps "
                                      f"(missing, stale, NaN or ±Inf); the limit is {max_gap_fraction:.0%} "
                                      "(setting prometheus.max_gap_fraction)")
            out.append((name, Series(s.labels, s.timestamps[finite], s.values[finite])))
    return Fetched(out, grid_points, non_finite)


def metric_rows(series: list[tuple[str, Series]]) -> Iterator[dict]:
    """Snapshot rows, series by series in time order."""
    for _, s in series:
        sid, labels = s.id, dict(sorted(s.labels.items()))
        for ts, value in zip(s.timestamps.tolist(), s.values.tolist()):
            yield {"timestamp": datetime.fromtimestamp(ts, timezone.utc), "series": sid, "labels": labels, "value": value}


def ingest_metrics(source_uri: str, queries: dict[str, str], start: datetime, end: datetime, step: float | str, out: str | StoragePath,
                   settings: Settings, dataset: str = "metrics") -> Snapshot:
    """Snapshot the named queries of `source_uri` at `step` over [start, end) into `out` (a folder or a storage URI), all or nothing."""
    step_s = parse_duration(step)
    source = open_metric_source(source_uri, settings)
    started = time.perf_counter()
    fetched = fetch_metrics(source, queries, start, end, step_s, settings.prometheus.max_gap_fraction)
    fetch_seconds = time.perf_counter() - started
    points = sum(len(s.values) for _, s in fetched.series)
    snapshot = write_snapshot(
        out, metric_rows(fetched.series), dataset=dataset, source=source.uri,
        query={"queries": queries, "step": format_duration(step_s)}, start=start, end=end, schema=METRIC_SCHEMA,
        extra={"step_seconds": step_s, "series_count": len(fetched.series), "grid_points": fetched.grid_points,
               "dropped_non_finite": fetched.non_finite,
               "series": {s.id: {"query": name, "points": len(s.values)} for name, s in fetched.series}},
    )
    log.info("metric snapshot written", extra={"snapshot": str(snapshot.path), "series": len(fetched.series), "points": points,
                                               "points_per_s": round(points / max(fetch_seconds, 1e-9)),
                                               "content_hash": snapshot.content_hash})
    return snapshot


def backfill_openmetrics(path: Path, data_dir: Path, promtool: str = "promtool", chunk_hours: int = 24) -> int:
    """Load an OpenMetrics history into a Prometheus data folder with `promtool tsdb create-blocks-from
    openmetrics`, one day at a time: promtool re-reads its whole input for each 2-hour block it
    writes, so one long file takes quadratic time. Returns the number of samples loaded."""
    span = chunk_hours * 3600
    headers: dict[str, list[str]] = {}
    buckets: dict[int, dict[str, list[str]]] = {}
    family = ""
    with Path(path).open() as fh:
        for line in fh:
            if line.startswith("#"):
                if line.startswith(("# HELP ", "# TYPE ", "# UNIT ")):
                    family = line.split()[2]
                    headers.setdefault(family, []).append(line)
                continue
            if line.strip():
                bucket = int(float(line.rsplit(None, 1)[-1]) // span)
                buckets.setdefault(bucket, {}).setdefault(family, []).append(line)
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    samples = 0
    with tempfile.TemporaryDirectory() as tmp:
        for bucket, families in sorted(buckets.items()):
            part = Path(tmp) / f"part-{bucket}.om"
            with part.open("w") as out:
                for name, lines in families.items():
                    out.writelines(headers.get(name, []))
                    out.writelines(lines)
                    samples += len(lines)
                out.write("# EOF\n")
            done = subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", "-q", str(part), str(data_dir)],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                raise InputError(f"promtool could not load {path} (hours from {bucket * chunk_hours}): {done.stderr.strip()[-500:]}")
            part.unlink()
    return samples
