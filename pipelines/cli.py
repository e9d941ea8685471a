"""`nightshift`: one command per stage. Each prints a short summary, or one JSON object with `--json`.

Heavy libraries are imported inside the commands, so `nightshift --help` is instant.
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

from pipelines.config import ConfigError, Settings, load_settings
from pipelines.telemetry import configure_logging, get_logger, log_context

log = get_logger("cli")
COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], dict[str, Any]]] = {}


def command(name: str):
    """Register a handler for `nightshift NAME ...`; it returns the JSON summary."""
    def wrap(fn):
        COMMANDS[name] = fn
        return fn
    return wrap


def parse_time(value: str) -> datetime:
    """ISO-8601 date or date-time; naive values are UTC."""
    try:
        ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 time: {value!r}") from None
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts.astimezone(timezone.utc)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nightshift", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="a nightshift.toml (default: ./nightshift.toml or NIGHTSHIFT_CONFIG)")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo-data", parents=[common], help="write the embedded demo corpus")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--days", type=int, default=6)
    p.add_argument("--per-day", type=int, default=1500)
    p.add_argument("--seed", type=int, default=7)

    ingest = sub.add_parser("ingest", help="snapshot one window of a source").add_subparsers(dest="kind", required=True)
    p = ingest.add_parser("logs", parents=[common], help="logs from file://…ndjson|parquet or http(s)://host:port/INDEX")
    p.add_argument("--source", required=True)
    p.add_argument("--start", type=parse_time, required=True)
    p.add_argument("--end", type=parse_time, required=True)
    p.add_argument("--out", type=Path, required=True, help="the snapshot folder to create")

    p = sub.add_parser("train", parents=[common], help="train and register a candidate")
    p.add_argument("model", choices=["log-anomaly", "failure-rca", "metric-forecast"])
    p.add_argument("--snapshot", type=Path, required=True)
    p.add_argument("--base-model", help="a local Hugging Face checkpoint (default: packaged MiniLM-L6)")

    p = sub.add_parser("evaluate", parents=[common], help="evaluate a registered version on a snapshot")
    p.add_argument("model", metavar="NAME@ALIAS|NAME/VERSION")
    p.add_argument("--snapshot", type=Path, required=True)

    score = sub.add_parser("score", help="batch scoring").add_subparsers(dest="kind", required=True)
    p = score.add_parser("logs", parents=[common], help="score log documents and write ml.* fields")
    p.add_argument("--model", default="log-anomaly@champion")
    p.add_argument("--source", required=True)
    p.add_argument("--sink", help="file://…ndjson (default for Elasticsearch: the documents' own index)")
    p.add_argument("--start", type=parse_time)
    p.add_argument("--end", type=parse_time)

    p = sub.add_parser("retrain", parents=[common], help="run the nightly flow once, through Airflow")
    p.add_argument("--logical-date", help="the night to run (default: the day after the source's newest record)")
    p.add_argument("--source", help="log source URI (default: settings, else the embedded demo corpus)")
    p.add_argument("--base-model", help="checkpoint for the BERT models")
    p.add_argument("--in-process", action="store_true", help="run the same tasks in this process, without Airflow")

    p = sub.add_parser("info", parents=[common], help="where the state lives, and each model's aliases")
    return parser


@command("demo-data")
def _demo_data(args, settings):
    from pipelines.demo_data import write_demo_logs

    path = write_demo_logs(args.out, days=args.days, per_day=args.per_day, seed=args.seed)
    return {"logs": str(path), "summary": f"demo corpus written to {path}"}


@command("ingest logs")
def _ingest_logs(args, settings):
    from pipelines.ingest import ingest_logs

    snap = ingest_logs(args.source, args.start, args.end, args.out, settings)
    m = snap.manifest
    return {"snapshot": str(snap.path), "rows": m["row_count"], "content_hash": m["content_hash"], "window": m["window"],
            "summary": f"snapshot {snap.path}: {m['row_count']} rows, {m['content_hash'][:19]}…"}


@command("train")
def _train(args, settings):
    if args.model == "log-anomaly":
        from pipelines.train import train_log_anomaly

        out = train_log_anomaly(args.snapshot, settings, args.base_model)
    else:
        raise SystemExit(f"nightshift train {args.model}: not available in this version")
    return {**out, "summary": f"{out['model']} v{out['version']} ({out['decision']}): F1 {out['metrics'].get('f1')} "
                              f"(TF-IDF baseline {out['baseline'].get('f1')})"}


@command("evaluate")
def _evaluate(args, settings):
    from pipelines.evaluate import evaluate

    out = evaluate(args.model, args.snapshot, settings)
    lines = [f"{out['model']} v{out['version']} on {out['rows']} rows of {args.snapshot}"]
    for name in ("model", "baseline"):
        m = out[name + "_metrics"]
        lines.append(f"  {name:<9} " + "  ".join(f"{k} {v:.4f}" for k, v in m.items()))
    return {**out, "summary": "\n".join(lines)}


@command("score logs")
def _score_logs(args, settings):
    from serving.score_logs import score_logs

    out = score_logs(args.model, args.source, args.sink, settings, start=args.start, end=args.end)
    return {**out, "summary": f"scored {out['scored']} of {out['read']} documents with {out['model']} v{out['version']} "
                              f"({out['docs_per_s']:.0f} docs/s) -> {out['sink']}"}


@command("retrain")
def _retrain(args, settings):
    from pipelines.flow import run_retrain

    out = run_retrain(settings, logical_date=args.logical_date, source=args.source, base_model=args.base_model,
                      in_process=args.in_process)
    return {**out, "summary": out.get("summary", "retrain finished")}


@command("info")
def _info(args, settings):
    from pipelines.registry import CHALLENGER, CHAMPION, MODEL_NAMES, PREVIOUS, alias_version, use_store

    client = use_store(settings)
    models = {name: {alias: alias_version(client, name, alias) for alias in (CHAMPION, CHALLENGER, PREVIOUS)} for name in MODEL_NAMES}
    return {"home": str(settings.home), "tracking_uri": settings.mlflow_uri, "models": models,
            "summary": "\n".join([f"home {settings.home}", f"mlflow {settings.mlflow_uri}"] +
                                 [f"  {n}: " + ", ".join(f"{a}=v{v}" for a, v in m.items() if v) for n, m in models.items()])}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging()
    name = f"{args.command} {args.kind}" if getattr(args, "kind", None) else args.command
    try:
        settings = load_settings(args.config)
        with log_context(run_id=os.environ.get("AIRFLOW_CTX_DAG_RUN_ID") or uuid.uuid4().hex[:12], task=name):
            out = COMMANDS[name](args, settings)
    except (ConfigError, ValueError, LookupError, FileNotFoundError, RuntimeError) as exc:
        # Errors from bad input carry the record, field or setting at fault; no traceback needed.
        if getattr(args, "json", False):
            print(json.dumps({"error": str(exc), "type": exc.__class__.__name__}))
        print(f"nightshift {name}: error: {exc}", file=sys.stderr)
        return 2
    summary = out.pop("summary", "")
    print(json.dumps(out, default=str) if args.json else summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
