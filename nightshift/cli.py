"""`nightshift`: one command per stage, over both the pipelines and the server. Each prints a short summary, or one JSON
object with `--json`.

torch, transformers, mlflow and Great Expectations are imported only by the commands that use them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from pipelines import storage
from pipelines.config import INPUT_FORMATS, Settings, config_path, load_settings, settings_in_effect
from pipelines.data.demo_logs import write_demo_logs
from pipelines.data.demo_metrics import write_demo_metrics
from pipelines.data.ingest import ingest_logs
from pipelines.data.records import parse_duration, parse_timestamp
from pipelines.data.validation import FAILED, validate_snapshot, verdict
from pipelines.errors import InputError, NightshiftError
from pipelines.flow import embedded_metric_source, run_retrain, shadow_line
from pipelines.night_report import latest_night, write_night_report
from pipelines.platform_logs import ship_logs
from pipelines.registry.gate import promote, rollback
from pipelines.registry.store import CHALLENGER, CHAMPION, PREVIOUS, access_error, alias_version, credentials_in_use, display_uri, use_store
from pipelines.scoring.forecasts import forecast
from pipelines.scoring.score_logs import score_logs
from pipelines.sources.elastic.roles import install_roles, load_roles, roles_yaml
from pipelines.sources.elastic.templates import install_templates
from pipelines.sources.prometheus import CsvMetricSource, ingest_metrics, open_metric_source, parse_queries
from pipelines.tasks import TASKS, evaluate, task
from pipelines.telemetry import configure_logging, get_logger, log_context
from pipelines.training.register import reregister
from serving.auth import key_file_path, make_key
from serving.server import serve

log = get_logger("cli")
COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], dict[str, Any]]] = {}


def command(name: str):
    """Register a handler for `nightshift NAME ...`; it returns the JSON summary."""
    def wrap(fn):
        COMMANDS[name] = fn
        return fn
    return wrap


def parse_time(value: str) -> datetime:
    """ISO-8601 date or date-time (naive values are UTC) or epoch seconds/ms/ns: `pipelines.data.records.parse_timestamp`."""
    try:
        return parse_timestamp(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a time: {exc}") from None


def with_format(settings: Settings, fmt: str | None) -> Settings:
    """The settings with `inputs.format` replaced by a command's `--format`, when given."""
    import dataclasses

    return dataclasses.replace(settings, inputs=dataclasses.replace(settings.inputs, format=fmt)) if fmt else settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nightshift", description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--config", help="a nightshift.toml (default: NIGHTSHIFT_CONFIG, else $NIGHTSHIFT_HOME/nightshift.toml)")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo-data", parents=[common], help="write the embedded demo corpus")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--days", type=int, default=6)
    p.add_argument("--per-day", type=int, default=1500)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--hard", action="store_true", help="the hard variant: unseen vocabulary on the last day, Chinese lines, mislabelled lines")

    ingest = sub.add_parser("ingest", help="snapshot one window of a source").add_subparsers(dest="kind", required=True)
    p = ingest.add_parser("logs", parents=[common], help="logs from file://FILE|DIR|GLOB (read by content) or http(s)://host:port/INDEX")
    p.add_argument("--source", required=True)
    p.add_argument("--format", choices=INPUT_FORMATS, help="how to read file sources (default: setting inputs.format, auto: by content)")
    p.add_argument("--start", type=parse_time, help="required for Elasticsearch; for files default: the first timestamp")
    p.add_argument("--end", type=parse_time, help="required for Elasticsearch; for files default: just after the last timestamp")
    p.add_argument("--out", type=storage.path, required=True, help="the snapshot folder (or s3://… prefix) to create")
    p = ingest.add_parser("metrics", parents=[common], help="metrics from http(s)://prometheus:9090 (query_range) or file://…om|csv[.gz]")
    p.add_argument("--source", help="default: setting prometheus.url, else the embedded demo metrics")
    p.add_argument("--query", action="append", metavar="[NAME=]PROMQL",
                   help="repeatable; default: the named queries of settings prometheus.queries (for a CSV: each metric in it)")
    p.add_argument("--start", type=parse_time, help="required for Prometheus; for files default: the first sample")
    p.add_argument("--end", type=parse_time, help="required for Prometheus; for files default: one step after the last sample")
    p.add_argument("--step", help="resolution, e.g. 15m (default: setting forecast.step)")
    p.add_argument("--out", type=storage.path, required=True, help="the snapshot folder (or s3://… prefix) to create")

    p = sub.add_parser("reregister", parents=[common],
                       help="re-register versions that hold a pickled pyfunc as versions logged from code; aliases follow")
    p.add_argument("model", metavar="NAME", choices=list(TASKS))
    p.add_argument("--version", help="only this version (default: every such version of NAME)")

    p = sub.add_parser("validate", parents=[common], help="run a Great Expectations suite over a snapshot (exit 1 when it fails)")
    p.add_argument("snapshot", type=storage.path, metavar="DIR")
    p.add_argument("--suite", choices=["logs", "metrics"], help="default: from the snapshot's dataset")
    p.add_argument("--warn-only", action="store_true", help="report failures as 'warn' and exit 0 (exploration)")

    p = sub.add_parser("train", parents=[common], help="train and register a candidate")
    p.add_argument("model", choices=list(TASKS))
    p.add_argument("--snapshot", type=storage.path, required=True)
    p.add_argument("--base-model", help="a local Hugging Face checkpoint (default: packaged MiniLM-L6)")

    p = sub.add_parser("evaluate", parents=[common], help="evaluate a registered version on a snapshot")
    p.add_argument("model", metavar="NAME@ALIAS|NAME/VERSION")
    p.add_argument("--snapshot", type=storage.path, required=True)

    p = sub.add_parser("promote", parents=[common], help="run the promotion gate: challenger vs champion on a fresh holdout")
    p.add_argument("model", metavar="NAME")
    p.add_argument("--holdout", type=storage.path, metavar="SNAPSHOT_DIR", help="default: the newest fresh snapshot after both training windows")
    p.add_argument("--version", help="gate this version instead of the challenger alias")

    p = sub.add_parser("rollback", parents=[common], help="move champion back to the previous champion")
    p.add_argument("model", metavar="NAME")
    p.add_argument("--reason", default="manual rollback", help="why (recorded with who and when)")

    score = sub.add_parser("score", help="batch scoring").add_subparsers(dest="kind", required=True)
    p = score.add_parser("logs", parents=[common], help="score log documents and write ml.* fields")
    p.add_argument("--model", default="log-anomaly@champion", help="the log-anomaly version: NAME@ALIAS or NAME/VERSION (default: %(default)s)")
    p.add_argument("--rca-model", help="root-cause model for ml.rca.* (default: failure-rca@champion when one exists; none: off)")
    p.add_argument("--shadow-model", help="a second log-anomaly version scored in the same pass into ml.shadow.* (or setting "
                                          "score.shadow_sink), with its agreement with --model (default: none)")
    p.add_argument("--source", required=True)
    p.add_argument("--format", choices=INPUT_FORMATS, help="how to read a file source (default: setting inputs.format, auto: by content)")
    p.add_argument("--sink", help="file://…ndjson (default for Elasticsearch: the documents' own index)")
    p.add_argument("--start", type=parse_time)
    p.add_argument("--end", type=parse_time)

    p = sub.add_parser("forecast", parents=[common], help="forecast the latest metrics and push ai_forecast_* to the Pushgateway")
    p.add_argument("--model", default="metric-forecast@champion", help="NAME@ALIAS or NAME/VERSION (default: %(default)s)")
    p.add_argument("--prometheus", help="http(s)://host:port (default: setting prometheus.url)")
    p.add_argument("--pushgateway", help="http://host:port (default: setting prometheus.pushgateway)")
    p.add_argument("--at", type=parse_time, help="forecast from this time instead of now (backtests)")

    es = sub.add_parser("es", help="Elasticsearch housekeeping").add_subparsers(dest="kind", required=True)
    p = es.add_parser("install-template", parents=[common], help="install the ml.* index templates (infra/elasticsearch/)")
    p.add_argument("--url", help="http(s)://host:port (default: setting elasticsearch.url / cloud_id / conn_id)")
    p.add_argument("--index-pattern", action="append", help="log indices the template applies to (repeatable; default logs-*)")
    p.add_argument("--update-existing", action="store_true", help="also add the ml.* mapping to indices that already exist")
    p = es.add_parser("install-roles", parents=[common], help="create or update the roles nightshift-nightly and nightshift-analyst "
                                                              "(infra/elasticsearch/roles/) through the security API")
    p.add_argument("--url", help="http(s)://host:port (default: setting elasticsearch.url / cloud_id / conn_id)")
    p.add_argument("--index-pattern", action="append", help="log indices the roles cover (repeatable; default logs-*)")
    p.add_argument("--results-pattern", action="append", help="results indices the roles cover (repeatable; default nightshift-ml-results*)")
    p.add_argument("--print-yaml", action="store_true", help="print the roles as roles.yml entries (file realm) instead of installing them")
    p = es.add_parser("ship-logs", parents=[common], help="send a night's own log lines (ECS JSON) to the data stream of setting "
                                                          "elasticsearch.platform_logs; a line already there is not sent again")
    p.add_argument("target", nargs="?", metavar="NIGHT|FILE|DIR",
                   help="a night's logical date YYYY-MM-DD (its runs/D/logs/*.ndjson), a log file or a folder of them "
                        "(default: the latest night)")
    p.add_argument("--url", help="http(s)://host:port (default: setting elasticsearch.url / cloud_id / conn_id)")

    p = sub.add_parser("retrain", parents=[common], help="run the nightly flow once, through Airflow")
    p.add_argument("--logical-date", help="the night to run (default: the day after the source's newest record)")
    p.add_argument("--source", help="log source URI (default: settings, else the embedded demo corpus)")
    p.add_argument("--base-model", help="checkpoint for the BERT models")
    p.add_argument("--in-process", action="store_true", help="run the same tasks in this process, without Airflow")

    p = sub.add_parser("info", parents=[common], help="where the state lives, and each model's aliases")

    p = sub.add_parser("report", parents=[common], help="write the night's HTML report (decisions, numbers, validation, drift, MLflow links)")
    p.add_argument("--night", metavar="D", help="the night's logical date, e.g. 2026-11-22 (default: the latest night)")
    p.add_argument("--out", type=Path, help="where to write it (default: NIGHTSHIFT_HOME/runs/D/report.html)")
    p.add_argument("--ui-url", help="the MLflow UI the links open (default: setting ui_url, http://127.0.0.1:5000)")

    p = sub.add_parser("serve", parents=[common], help="answer online: the champions over HTTP (FastAPI + uvicorn) until Ctrl-C")
    p.add_argument("--host", help="default: setting serve.host (127.0.0.1)")
    p.add_argument("--port", type=int, help="default: setting serve.port (8000); 0: a free port, printed")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])

    p = sub.add_parser("config", parents=[common], help="print the settings in effect and where each came from (default, file, "
                                                       "environment); secrets masked")
    p.add_argument("--changed", action="store_true", help="only the settings the file or the environment set")

    p = sub.add_parser("serve-key", parents=[common], help="make an API key for nightshift serve: its hash goes to the key file, "
                                                           "the key is printed once")
    p.add_argument("name", metavar="NAME", help="who uses the key (logged with each request; the rate limit's bucket)")
    p.add_argument("--scope", default="score", help="score (the scoring routes), admin (reload), alerts (Alertmanager's webhook /v1/alerts), "
                                                        "or several: score,admin (default: %(default)s)")
    p.add_argument("--file", type=Path, help="the key file (default: setting serve.api_keys_file, else $NIGHTSHIFT_HOME/api-keys); "
                                             "created with mode 0600")
    return parser


@command("demo-data")
def _demo_data(args, settings):
    path = write_demo_logs(args.out, days=args.days, per_day=args.per_day, seed=args.seed, variant="hard" if args.hard else "default")
    metrics = write_demo_metrics(args.out, seed=args.seed)
    return {"logs": str(path), "metrics": str(metrics), "summary": f"demo corpus written to {path}, metric history to {metrics}"}


@command("ingest logs")
def _ingest_logs(args, settings):
    snap = ingest_logs(args.source, args.start, args.end, args.out, with_format(settings, args.format))
    m = snap.manifest
    stats = m.get("source_stats") or {}
    return {"snapshot": str(snap.path), "rows": m["row_count"], "content_hash": m["content_hash"], "window": m["window"],
            "source_stats": stats,
            "summary": f"snapshot {snap.path}: {m['row_count']} rows, {m['content_hash'][:19]}…"
                       + (f" ({stats['unlabelled']} without a label, {stats['dropped']} of them dropped)" if stats.get("unlabelled") else "")}


@command("validate")
def _validate(args, settings):
    report = validate_snapshot(args.snapshot, args.suite, settings, warn_only=args.warn_only or None)
    return {**verdict(report), "summary": report["message"], "exit_code": 1 if report["status"] == FAILED else 0}


@command("train")
def _train(args, settings):
    spec = task(args.model)
    outcome = spec.train(args.snapshot, settings, args.base_model)
    return {**outcome.to_dict(), "summary": spec.summary(outcome)}


@command("evaluate")
def _evaluate(args, settings):
    report = evaluate(args.model, args.snapshot, settings)
    lines = [f"{report.model} v{report.version} on {report.examples} {report.unit} of {args.snapshot}"]
    rows = {"model": report.metrics, **report.baselines}
    width = max(map(len, rows))
    for name, m in rows.items():
        lines.append(f"  {name:<{width}}  " + "  ".join(f"{k} {v:.4f}" for k, v in m.items() if isinstance(v, (int, float))))
    if "fallback" in report.details:  # failure-rca: per failed job
        f = report.details["fallback"]
        lines.append(f"  knowledge-base fallback for {f['jobs']} of {report.examples} failed jobs, {f['unlabelled_jobs_with_fallback']} "
                     f"of the {f['unlabelled_jobs']} jobs without a known cause ({f['unlabelled_jobs_with_a_label']} got a confident label)")
    if report.note:
        lines.append(f"  {report.note}")
    return {**report.to_dict(), "summary": "\n".join(lines)}


@command("reregister")
def _reregister(args, settings):
    moved = reregister(args.model, settings, args.version)
    lines = [f"{args.model} v{m['from']} -> v{m['to']}" + (f" (aliases {m['aliases']})" if m["aliases"] else "") for m in moved]
    return {"model": args.model, "reregistered": moved,
            "summary": "\n".join(lines) or f"{args.model}: every version is logged from code, none to move"}


@command("promote")
def _promote(args, settings):
    out = promote(args.model, settings, holdout=args.holdout, version=args.version)
    lines = [f"{out['model']} v{out['challenger']} {out['decision']} (champion was v{out['champion']}, now v{out['champion_now']})"]
    lines += [f"  {r}" for r in out.get("reasons", [out["reason"]])]
    return {**out, "summary": "\n".join(lines)}


@command("rollback")
def _rollback(args, settings):
    out = rollback(args.model, settings, args.reason)
    return {**out, "summary": f"{out['model']}: champion v{out['rolled_back']} rolled back to v{out['champion']} by {out['by']} "
                              f"at {out['at']}: {out['reason']}"}


@command("score logs")
def _score_logs(args, settings):
    out = score_logs(args.model, args.source, args.sink, with_format(settings, args.format), start=args.start, end=args.end,
                     rca_model=args.rca_model, shadow_model=args.shadow_model)
    return {**out, "summary": f"scored {out['scored']} of {out['read']} documents with {out['model']} v{out['version']} "
                              f"({out['docs_per_s']:.0f} docs/s) -> {out['sink']}: written {out['written']}"
                              + (f" after {out['resumed_docs']} written by the interrupted run" if out.get("resumed_docs") else "")
                              + f", unscored {out['unscored']}, skipped {out['skipped']}, failed {out.get('failed', 0)}"
                              + "".join(f"\n  {n} {why}" for why, n in {**out['unscored_reasons'], **out['skipped_reasons'],
                                                                         **out.get('failed_reasons', {})}.items())
                              + (f"\n  root causes on {out['rca']['annotated']} documents of {out['rca']['jobs']} failed jobs with "
                                 f"{out['rca']['model']} v{out['rca']['version']} ({out['rca']['fallback']} from the knowledge base)" if out.get("rca") else "")
                              + (f"\n  shadow: {shadow_line(out['shadow'])}" if out.get("shadow") else "")}


@command("ingest metrics")
def _ingest_metrics(args, settings):
    from datetime import timedelta

    uri = args.source or settings.prometheus.url or embedded_metric_source(settings)
    step = args.step or settings.forecast.step
    queries = parse_queries(args.query, settings)
    start, end = args.start, args.end
    if not args.query or start is None or end is None:
        source = open_metric_source(uri, settings)
        if not args.query and isinstance(source, CsvMetricSource):  # its own metrics, not the configured queries
            queries = {name: name for name in source.metric_names()}
        if start is None or end is None:
            if not hasattr(source, "span"):
                raise InputError(f"metric source {source.uri}: --start and --end are required (only a file is read whole)")
            first, last = source.span(queries.values())
            start = start or datetime.fromtimestamp(first, timezone.utc)
            end = end or datetime.fromtimestamp(last, timezone.utc) + timedelta(seconds=parse_duration(step))
    snap = ingest_metrics(uri, queries, start, end, step, args.out, settings)
    m = snap.manifest
    return {"snapshot": str(snap.path), "rows": m["row_count"], "series": m["series_count"], "content_hash": m["content_hash"],
            "window": m["window"], "summary": f"snapshot {snap.path}: {m['series_count']} series, {m['row_count']} points, {m['content_hash'][:19]}…"}


@command("forecast")
def _forecast(args, settings):
    out = forecast(args.model, args.prometheus, args.pushgateway, settings, at=args.at)
    return {**out, "summary": f"pushed {out['horizon']} forecasts of {out['series']} series with {out['model']} v{out['version']} "
                              f"to {out['pushgateway']} ({', '.join(out['metrics'])}); skipped {len(out['skipped'])}, "
                              f"deleted {len(out['deleted_stale_groups'])} stale groups"}


@command("es install-template")
def _es_install_template(args, settings):
    out = install_templates(args.url or "elasticsearch://", settings, args.index_pattern, args.update_existing)
    return {**out, "summary": f"installed {out['component_template']} and {', '.join(out['index_templates'])} on {out['cluster']} "
                              f"(log indices {', '.join(out['index_patterns'])})"
                              + (f"; ml.* mapping added to {len(out['updated_indices'])} existing indices" if args.update_existing else "")
                              + f"\n  platform logs: data stream {out['platform_logs']['data_stream']}, template "
                                f"{out['platform_logs']['index_template']}, lifecycle policy "
                              + (out['platform_logs']['ilm_policy'] or "none (the cluster has no ILM)")}


@command("es install-roles")
def _es_install_roles(args, settings):
    if args.print_yaml:
        text = roles_yaml(load_roles(args.index_pattern, args.results_pattern, settings.elasticsearch.platform_logs))
        return {"roles_yml": text, "summary": text.rstrip("\n")}
    out = install_roles(args.url or "elasticsearch://", settings, args.index_pattern, args.results_pattern)
    done = "; ".join(f"{verb} {', '.join(names)}" for verb, names in (("created", out["created"]), ("updated", out["updated"])) if names)
    return {**out, "summary": f"roles on {out['cluster']}: {done} (log indices {', '.join(out['index_patterns'])}, "
                              f"results {', '.join(out['results_patterns'])})"}


@command("es ship-logs")
def _es_ship_logs(args, settings):
    out = ship_logs(args.target, settings, args.url)
    return {**out, "summary": f"shipped {out['shipped']} of {out['lines']} log lines from {len(out['files'])} file(s) to "
                              f"{out['data_stream']} on {out['cluster']} ({out['already_shipped']} were there already)"}


@command("retrain")
def _retrain(args, settings):
    out = run_retrain(settings, logical_date=args.logical_date, source=args.source, base_model=args.base_model,
                      in_process=args.in_process)
    return {**out, "summary": out.get("summary", "retrain finished")}


@command("report")
def _report(args, settings):
    night = args.night or latest_night(settings)
    path = write_night_report(settings, night, out=args.out, ui_url=args.ui_url)
    return {"night": night, "report": str(path), "summary": f"night report {night}: {path}"}


@command("info")
def _info(args, settings):
    client = use_store(settings, create=False)
    models = {name: {alias: alias_version(client, name, alias) for alias in (CHAMPION, CHALLENGER, PREVIOUS)} for name in TASKS}
    return {"home": str(settings.home), "tracking_uri": display_uri(settings.mlflow_uri), "models": models,
            "summary": "\n".join([f"home {settings.home}", f"mlflow {display_uri(settings.mlflow_uri)} (credentials: {credentials_in_use()})"] +
                                 [f"  {n}: " + ", ".join(f"{a}=v{v}" for a, v in m.items() if v) for n, m in models.items()])}


@command("serve")
def _serve(args, settings):
    def listening(url: str) -> None:
        print(f"nightshift serve: listening on {url} (models {settings.serve.models}, alias {settings.serve.alias}; "
              f"docs {url}/docs)", file=sys.stderr, flush=True)

    serve(settings, args.host, args.port, args.log_level, on_listen=listening)
    return {"summary": "nightshift serve stopped"}


@command("serve-key")
def _serve_key(args, settings):
    path = args.file or key_file_path(settings)
    scopes = {s.strip() for s in args.scope.split(",") if s.strip()}
    key = make_key(path, args.name, scopes)
    # stdout is the key alone (KEY=$(nightshift serve-key ...)); what it is goes to stderr
    print(f"nightshift serve-key: key {args.name!r} ({','.join(sorted(scopes))}) added to {path} as its SHA-256; the key, "
          "on the next line, is shown only now: send it as an 'Authorization: Bearer' header", file=sys.stderr)
    return {"name": args.name, "scopes": sorted(scopes), "file": str(path), "key": key, "summary": key}


EMPTY = "\"\""  # an empty setting, as the TOML file would spell it


@command("config")
def _config(args, settings):
    sources: dict[str, str] = {}
    settings = load_settings(args.config, sources)
    rows = [r for r in settings_in_effect(settings, sources) if not args.changed or r[2] != "default"]
    width = max((len(name) for name, _, _ in rows), default=0)
    lines = [f"settings file: {config_path(args.config)}{'' if config_path(args.config).is_file() else ' (none)'}",
             f"mlflow tracking URI in effect: {display_uri(settings.mlflow_uri)}",
             f"mlflow credentials: {credentials_in_use()}"]
    # an empty setting whose value is derived: say what it comes to
    derived = {"serve.api_keys_file": str(key_file_path(settings)), "tracking_uri": display_uri(settings.mlflow_uri)}
    lines += [f"{name:<{width}}  {value if value else EMPTY}  ({source}{': ' + derived[name] if not value and name in derived else ''})"
              for name, value, source in rows]
    if not rows:
        lines.append("every setting has its default (no settings file, no NIGHTSHIFT_* variable set)")
    return {"file": str(config_path(args.config)), "mlflow_uri": display_uri(settings.mlflow_uri), "mlflow_credentials": credentials_in_use(),
            "settings": [{"name": n, "value": v, "source": s} for n, v, s in rows], "summary": "\n".join(lines)}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging()
    name = f"{args.command} {args.kind}" if getattr(args, "kind", None) else args.command
    try:
        settings = load_settings(args.config)
        configure_logging(settings.service, environment=settings.environment)
        with log_context(run_id=os.environ.get("AIRFLOW_CTX_DAG_RUN_ID") or uuid.uuid4().hex[:12], task=name):
            try:
                out = COMMANDS[name](args, settings)
            except Exception as exc:  # a tracking server's 401/403 met after the store was opened: one line, too
                denied = access_error(exc, settings.mlflow_uri)
                if denied is None:
                    raise
                raise denied from None
    except NightshiftError as exc:
        # nightshift's own errors name the record, field or setting at fault: one line, no traceback. Anything
        # else is a bug or the machine (CUDA out of memory) and keeps its traceback.
        if getattr(args, "json", False):
            print(json.dumps({"error": str(exc), "type": exc.__class__.__name__}))
        print(f"nightshift {name}: error: {exc}", file=sys.stderr)
        return 2
    summary, code = out.pop("summary", ""), int(out.pop("exit_code", 0))
    try:
        print(json.dumps(out, default=str) if args.json else summary, flush=True)
    except BrokenPipeError:  # `nightshift config | head -1`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's own flush at exit would raise again
    return code


if __name__ == "__main__":
    sys.exit(main())
