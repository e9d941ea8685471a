"""A night at scale, on a real Elasticsearch node (infra/scripts/start_elasticsearch.sh, 2 GB heap, security off):
100k and 1M log documents (`--quick`: 5k and 50k) of the demo corpus's shape (templates with variable ids, IPs,
numbers and paths, which `nightshift_models.normalize.normalize` collapses), and an all-distinct variant (a random
word on every message) at the smaller size.

Each step runs through the project's own functions, in a fresh subprocess (its peak RSS is its own), in the night's
order:

- pull: `ElasticsearchLogSource.iter_docs` over the whole index (point-in-time, `search_after`, time order);
- ingest: `pipelines.data.ingest.ingest_logs` into a snapshot (the pull and the snapshot's Parquet);
- validation: `pipelines.data.validation.validate_snapshot` (the Great Expectations suite `logs`);
- the scoring half: `pipelines.scoring.score_logs.score_logs` from the index back into it (pull, score, bulk partial
  updates of `ml.*`), with where its seconds went: waiting for the pull, the model call, the bulk requests (on
  their own threads, overlapping the rest).

Training is not among the steps: its inputs are capped (`train.max_train_examples` distinct texts, the nightly
default) whatever the night's size, and a capped TF-IDF training took 160 s at 5k documents on the shared 2 cores,
more than every other step together.

The scoring model is `log-anomaly/1` as `train_log_anomaly` registers it on a 6-day demo snapshot (9k rows) with
the TF-IDF family. Loading the documents (parallel bulk, refresh off, then a force-merge to one segment: an index at
rest, as yesterday's daily index is) is not timed, nor are the partial updates that warm the node's update path
first (`warm_up_writes`). Rows: seconds per 100k documents at the larger size against the
smaller (each step; ratio 1: linear), peak RSS likewise, the distinct variant's scoring half against the repetitive
one's, and the scoring half of the larger repetitive index in seconds against the five-minute goal.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.support: the Elasticsearch node the tests start, when run on its own

GOAL_S = 300.0  # the scoring half of 1M repetitive documents, on 2 cores
STEPS = ("pull", "ingest", "validate", "score")
NAMES = {"pull": "pull", "ingest": "ingest into a snapshot", "validate": "validation", "score": "scoring half (pull, score, write back)"}

MEASURE = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
mode, url, index, work = sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
from pathlib import Path
from pipelines.config import load_settings
from pipelines.telemetry import configure_logging
configure_logging(level="WARNING")
settings = load_settings()
extra = {}
work = Path(work)
snapshot = work / f"snap-{index}"
# imports before the clock: a night imports them once, whatever its size
import elasticsearch  # noqa: F401
from datetime import datetime
from pipelines.data.ingest import ingest_logs
from pipelines.sources.elastic.reader import ElasticsearchLogSource
if mode == "validate":
    import great_expectations  # noqa: F401 - its import (~4 s) is not validation time
    from pipelines.data.validation import validate_snapshot
if mode == "score":
    import pipelines.scoring.score_logs as scoring
    from pipelines.sources.elastic.writer import ElasticsearchLogSink
    spent = {"pull_wait_s": 0.0, "model_s": 0.0, "bulk_s": 0.0}

    def timed_iter(inner):
        def wrapper(*args, **kwargs):
            it = inner(*args, **kwargs)
            while True:
                t = time.perf_counter()
                try:
                    item = next(it)
                except StopIteration:
                    spent["pull_wait_s"] += time.perf_counter() - t
                    return
                spent["pull_wait_s"] += time.perf_counter() - t
                yield item
        return wrapper

    def timed(inner, key):
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                spent[key] += time.perf_counter() - t
        return wrapper

    ElasticsearchLogSource.iter_unscored = timed_iter(ElasticsearchLogSource.iter_unscored)
    scoring.TextCache.probabilities = timed(scoring.TextCache.probabilities, "model_s")
    ElasticsearchLogSink._flush = timed(ElasticsearchLogSink._flush, "bulk_s")
    from pipelines.registry.store import load_model, use_store
    load_model(use_store(settings), "log-anomaly/1")  # the model's first load (MLflow, scikit-learn) is not the night's
started = time.perf_counter()
if mode == "pull":
    count = sum(1 for _ in ElasticsearchLogSource(f"{url}/{index}", settings).iter_docs())
elif mode == "ingest":
    start, end = (datetime.fromisoformat(t) for t in sys.argv[6:8])
    count = ingest_logs(f"{url}/{index}", start, end, snapshot, settings).manifest["row_count"]
elif mode == "validate":
    report = validate_snapshot(snapshot, "logs", settings, warn_only=True)
    count = json.loads((snapshot / "manifest.json").read_text())["row_count"]
elif mode == "score":
    out = scoring.score_logs("log-anomaly/1", f"{url}/{index}", None, settings, rca_model="none", shadow_model="none")
    assert out["failed"] == 0 and out["written"] == out["read"], out
    count = out["written"]
    extra = {k: round(v, 2) for k, v in spent.items()}
seconds = time.perf_counter() - started
peak_kib = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"docs": count, "seconds": seconds, "peak_rss_mib": peak_kib / 1024, **extra}))
"""

REGISTER = r"""
import sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from pipelines.config import load_settings
from pipelines.data.demo_logs import write_demo_logs
from pipelines.data.ingest import ingest_logs
from pipelines.tasks.log_anomaly import train_log_anomaly
settings = load_settings()
work = Path(sys.argv[2])
corpus = write_demo_logs(work / "demo")
snap = ingest_logs(f"file://{corpus}", None, None, work / "demo-snapshot", settings)
print(train_log_anomaly(snap.path, settings).version)
"""


def night_docs(count: int, distinct: bool = False, seed: int = 7):
    """`count` demo documents, 100k a day (the last day shorter); with `distinct`, a random word on every message."""
    import itertools

    from pipelines.data.demo_logs import DEMO_START, generate_logs

    per_day = min(count, 100_000)
    docs = itertools.islice(generate_logs(DEMO_START, days=-(-count // per_day), per_day=per_day, seed=seed), count)
    if not distinct:
        return docs
    rng = random.Random(seed)

    def unique(doc: dict) -> dict:
        doc["message"] += " trace " + "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=8))
        return doc

    return map(unique, docs)


def load(url: str, index: str, docs) -> tuple[str, str]:
    """Index `docs` into a new `index` with parallel bulk (refresh off, no replica), then refresh and force-merge it to
    one segment. Returns the first and the last timestamp + 1 ms (the window that holds them all)."""
    from datetime import datetime, timedelta

    from elasticsearch import Elasticsearch, helpers

    first = last = ""

    def actions():
        nonlocal first, last
        for doc in docs:
            ts = doc["@timestamp"]
            first, last = min(first or ts, ts), max(last, ts)
            yield {"_op_type": "create", "_index": index, "_source": doc}

    with Elasticsearch(url, request_timeout=600) as client:
        client.indices.create(index=index, settings={"number_of_shards": 1, "number_of_replicas": 0, "refresh_interval": "-1",
                                                     "translog.durability": "async"})
        for ok, info in helpers.parallel_bulk(client, actions(), thread_count=2, chunk_size=2000, raise_on_error=True):
            pass
        client.indices.put_settings(index=index, settings={"refresh_interval": None, "translog.durability": None})
        client.indices.refresh(index=index)
        client.indices.forcemerge(index=index, max_num_segments=1)
        client.indices.refresh(index=index)
    end = datetime.fromisoformat(last.replace("Z", "+00:00")) + timedelta(milliseconds=1)
    return first.replace("Z", "+00:00"), end.isoformat()


def warm_up_writes(url: str, count: int) -> None:
    """Partial updates of the write-back's shape onto `count` documents of an index of their own, then deleted: the
    node compiles its update path before the first scoring half is timed, as a node indexing logs all day has (a
    cold node's first 100k took 150 s here, the same node's 1M afterwards 47 s per 100k)."""
    from elasticsearch import Elasticsearch, helpers

    load(url, "night-warm-up", night_docs(count, seed=11))
    ml = {"anomaly": {"score": 0.5, "is_anomaly": False}, "model": {"name": "warm-up", "version": "0", "family": "tfidf"},
          "scored_at": "2026-11-30T00:00:00Z"}
    with Elasticsearch(url, request_timeout=600) as client:
        ids = [hit["_id"] for hit in helpers.scan(client, index="night-warm-up", size=5000, query={"_source": False})]
        helpers.bulk(client, ({"_op_type": "update", "_index": "night-warm-up", "_id": i, "doc": {"ml": ml}} for i in ids), chunk_size=2000)
        client.indices.delete(index="night-warm-up")


def measure(mode: str, url: str, index: str, work: Path, env: dict, *extra: str) -> dict:
    out = subprocess.run([sys.executable, "-c", MEASURE, str(ROOT), mode, url, index, str(work), *extra], env=env, cwd=ROOT,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"bench_night_scale {mode} {index} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"   {index} {mode}: {json.dumps(result)}", file=sys.stderr, flush=True)
    return result


def per_100k(m: dict) -> float:
    return m["seconds"] / m["docs"] * 100_000


def run(quick: bool = False) -> list[dict]:
    from elasticsearch import Elasticsearch

    from pipelines.config import load_settings
    from pipelines.sources.elastic.templates import install_templates
    from tests.support.es_cluster import EsNode

    small, large = (5_000, 50_000) if quick else (100_000, 1_000_000)
    label = {small: f"{small // 1000}k", large: f"{large // 1000}k" if large < 1_000_000 else f"{large // 1_000_000}M"}
    corpora = {"night-small": (small, False), "night-large": (large, False), "night-distinct": (small, True)}
    results: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = {**os.environ, "NIGHTSHIFT_HOME": str(work / "home"), "NIGHTSHIFT_LOG_LEVEL": "WARNING", "NIGHTSHIFT_LOG_FORMAT": "json",
               "NIGHTSHIFT_CANDIDATES_FAMILIES": "tfidf", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        registered = subprocess.run([sys.executable, "-c", REGISTER, str(ROOT), str(work)], env=env, cwd=ROOT, capture_output=True, text=True)
        if registered.returncode != 0 or registered.stdout.strip().splitlines()[-1] != "1":
            raise RuntimeError(f"bench_night_scale: the scoring model was not registered:\n{registered.stderr[-3000:]}")
        node = EsNode(heap="2g").start()
        try:
            install_templates(node.url, load_settings(), index_patterns=["night-*"])  # mappings; indices in time order
            warm_up_writes(node.url, small // 2)
            for index, (count, distinct) in corpora.items():
                started = time.perf_counter()
                window = load(node.url, index, night_docs(count, distinct))
                print(f"   loaded {count} docs into {index} in {time.perf_counter() - started:.0f} s (not timed)", file=sys.stderr, flush=True)
                steps = ("score",) if distinct else STEPS
                results[index] = {step: measure(step, node.url, index, work, env, *window) for step in steps}
                with Elasticsearch(node.url) as client:  # the disk and the node's memory go to the next corpus
                    client.indices.delete(index=index)
                for m in results[index].values():
                    assert m["docs"] == count, (index, m)
        finally:
            node.stop()

    small_runs, large_runs = results["night-small"], results["night-large"]
    section = "A night at scale"
    rows = []
    for step in STEPS:
        a, b = large_runs[step], small_runs[step]
        rows.append({"name": f"{NAMES[step]}, s per 100k docs at {label[large]}", "value": per_100k(a), "unit": "s",
                     "baseline": f"at {label[small]}", "baseline_value": per_100k(b), "ratio": per_100k(a) / per_100k(b), "section": section})
    for step in STEPS:
        a, b = large_runs[step], small_runs[step]
        rows.append({"name": f"{NAMES[step]}, peak RSS at {label[large]}", "value": a["peak_rss_mib"], "unit": "MiB",
                     "baseline": f"at {label[small]}", "baseline_value": b["peak_rss_mib"], "ratio": a["peak_rss_mib"] / b["peak_rss_mib"],
                     "section": section})
    unique = results["night-distinct"]["score"]
    rows.append({"name": f"scoring half, all-distinct logs, s per 100k docs at {label[small]}", "value": per_100k(unique), "unit": "s",
                 "baseline": "repetitive logs, same size", "baseline_value": per_100k(small_runs["score"]),
                 "ratio": per_100k(unique) / per_100k(small_runs["score"]), "section": section,
                 "extra": {k: unique[k] for k in ("pull_wait_s", "model_s", "bulk_s")}})
    scored = large_runs["score"]
    goal = GOAL_S * large / 1_000_000
    rows.append({"name": f"scoring half of {label[large]} repetitive docs", "value": scored["seconds"], "unit": "s",
                 "baseline": "goal (5 minutes per 1M on 2 cores)", "baseline_value": goal, "ratio": scored["seconds"] / goal, "section": section,
                 "extra": {k: scored[k] for k in ("pull_wait_s", "model_s", "bulk_s")}})
    return rows


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(json.dumps(row))
