"""Elasticsearch, against a real node (infra/scripts/start_elasticsearch.sh: Elastic's minimal distribution, one
node on loopback, 512 MB heap, security off):

- pull docs/s: `ElasticsearchLogSource` (point-in-time + search_after, sorted by @timestamp) against
  `elasticsearch.helpers.scan` (scroll, unsorted; the client's defaults) on the same index, page size and `_source`
  fields, the best of three runs taken in turn after a first read, each in a fresh process that has imported the
  client before its clock starts;
- scoring write-back docs/s: `nightshift score logs` into the index (pull, score, bulk partial updates; the model is
  called once `score.sort_window` new texts have gathered, and a group's bulk requests are written while the next
  group is pulled and scored) against the pure forward pass
  of the same model on all the same texts at once (each distinct normalised text once, in length-sorted batches);
  the packaged MiniLM-L6 (the default base checkpoint, untrained head: speed does not depend on the weights),
  batch 256, anomaly scores only (no root-cause model). Both share the machine's cores with the node, which
  serves the pull and applies the updates during the write-back. The indices are created through nightshift's
  `logs-*` template (`infra/elasticsearch/nightshift-logs.json`: its mappings, documents kept in time order on disk)
  and force-merged after loading. Before
  either side is measured, 50k partial updates of the write-back's shape onto an index of their own warm the node's
  update path: a node that indexes logs all day has it compiled, a node started a minute ago does not (its first
  four write-backs of 10k spent 2.5, 2.4, 1.9 and 1.4 s outside the model). Each side is the best of three runs,
  taken in turn (forward pass, write-back, ...) so that a slow spell of the shared host meets both sides; each
  write-back runs on its own copy of the index (a second pass over one writes nothing);
- peak RSS of a pull at 200k documents against 20k, and of a scoring write-back over the same two indices, after
  the pull rows (flat memory: ratio near 1; documents waiting for their model call are at most `score.max_pending`,
  bulk requests not yet acknowledged at most `bulk_max_bytes`).
  Each measurement runs in a fresh subprocess, so peak RSS is that run's alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.support: the Elasticsearch node the tests start, when run on its own

MEASURE = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
mode, url, index = sys.argv[2], sys.argv[3], sys.argv[4]
from pipelines.config import load_settings
from pipelines.telemetry import configure_logging
configure_logging(level="WARNING")
settings = load_settings()

def classifier(path):
    import numpy as np
    from nightshift_models.bert import load_classifier
    from nightshift_models.text_classifier import TextClassifier
    clf = TextClassifier()
    clf.meta = {"task": "log-anomaly", "max_length": 64, "thresholds": [0.5]}
    clf.device, clf.thresholds = "cpu", np.array([0.5], dtype=np.float32)
    clf.tokenizer, clf.model = load_classifier(path, 1)
    clf.model.eval()
    return clf

count = 0
if mode == "pull":
    import elasticsearch  # imported before the clock starts, as the scan side does (seconds where nothing is compiled yet)
    from pipelines.sources.elastic.reader import ElasticsearchLogSource
    source = ElasticsearchLogSource(f"{url}/{index}", settings)
    started = time.perf_counter()
    for _ in source.iter_docs():
        count += 1
elif mode == "scan":
    from elasticsearch import Elasticsearch, helpers
    from pipelines.sources.elastic.reader import ElasticsearchLogSource
    fields = ElasticsearchLogSource(f"{url}/{index}", settings).source_fields()
    started = time.perf_counter()
    for _ in helpers.scan(Elasticsearch(url), index=index, size=settings.elasticsearch.page_size, query={"_source": {"includes": fields}}):
        count += 1
elif mode == "forward":
    from elasticsearch import Elasticsearch, helpers
    clf = classifier(sys.argv[5])
    texts = [h["_source"]["message"] for h in helpers.scan(Elasticsearch(url), index=index, size=1000, query={"_source": ["message"]})]
    started = time.perf_counter()
    count = len(clf.probabilities(texts, settings.score.batch_size))
elif mode == "score":
    import pipelines.scoring.score_logs as scoring
    from pipelines.registry.store import ModelRef
    clf = classifier(sys.argv[5])
    class Model:
        def unwrap_python_model(self):
            return clf
    # no registry: the model is the packaged checkpoint, patched in where score_logs looks it up
    scoring.use_store = lambda settings: None
    scoring.load_model = lambda client, ref: (ModelRef("log-anomaly", "1"), Model())
    import elasticsearch  # imported before the clock starts, as the forward pass's side does (0.2 s)
    started = time.perf_counter()
    out = scoring.score_logs("log-anomaly@champion", f"{url}/{index}", None, settings, rca_model="none")  # anomaly scores only
    assert out["failed"] == 0, out
    count = out["written"]
seconds = time.perf_counter() - started
try:  # VmHWM is this process's own peak; ru_maxrss can carry the parent's over fork + exec
    peak_kib = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
except (OSError, StopIteration):
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"docs": count, "seconds": seconds, "peak_rss_mib": peak_kib / 1024}))
"""


class Server:
    """A real node, loaded with demo documents."""

    def __init__(self, indices: dict[str, int]):
        from pipelines.config import load_settings
        from pipelines.sources.elastic.templates import install_templates
        from tests.support.es_cluster import Cluster, EsNode

        self.node = EsNode().start()
        self.url = self.node.url
        try:
            cluster = Cluster(self.url)
            cluster.prefix = ""
            install_templates(self.url, load_settings())  # logs-*: the log mappings, kept on disk in time order
            for name, count in indices.items():
                cluster.load(demo_docs(count), name)
            # An index at rest, as yesterday's daily index is: merged, so no merge of the load runs under a measurement.
            cluster.client.indices.forcemerge(index=",".join(indices), max_num_segments=1)
            cluster.client.indices.refresh(index=",".join(indices))
            cluster.client.close()
        except BaseException:
            self.close()
            raise

    def warm_up_writes(self, index: str) -> None:
        """Partial updates of the write-back's shape onto every document of `index`, as a node indexing all day has
        run them: the node compiles its update path before any write-back is timed."""
        from elasticsearch import Elasticsearch, helpers

        ml = {"anomaly": {"score": 0.5, "is_anomaly": False}, "model": {"name": "warm-up", "version": "0", "family": "bert"},
              "scored_at": "2026-11-30T00:00:00Z"}
        with Elasticsearch(self.url, request_timeout=120) as client:
            ids = (hit["_id"] for hit in helpers.scan(client, index=index, size=5000, query={"_source": False}))
            helpers.bulk(client, ({"_op_type": "update", "_index": index, "_id": i, "doc": {"ml": ml}} for i in ids), chunk_size=2000)

    def close(self) -> None:
        self.node.stop()


def demo_docs(count: int, seed: int = 7):
    """`count` demo log documents, over as many days as it takes at 50,000 a day."""
    import itertools

    from pipelines.data.demo_logs import DEMO_START, generate_logs

    per_day = min(count, 50_000)
    return itertools.islice(generate_logs(DEMO_START, days=-(-count // per_day), per_day=per_day, seed=seed), count)


def measure(mode: str, server: Server, index: str, env: dict, *extra: str) -> dict:
    out = subprocess.run([sys.executable, "-c", MEASURE, str(ROOT), mode, server.url, index, *extra], env=env, cwd=ROOT,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"bench_elastic {mode} {index} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def rate(m: dict) -> float:
    return m["docs"] / m["seconds"]


def run(quick: bool = False) -> list[dict]:
    from nightshift_models.bert import default_checkpoint

    pull_large, pull_small = (20_000, 2_000) if quick else (200_000, 20_000)
    score_docs = 2_000 if quick else 10_000
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        minilm = default_checkpoint()
        env = {**os.environ, "NIGHTSHIFT_HOME": str(work / "home"), "NIGHTSHIFT_LOG_LEVEL": "WARNING", "NIGHTSHIFT_LOG_FORMAT": "json",
               "NIGHTSHIFT_SCORE_BATCH_SIZE": "256", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        copies = [f"logs-score-{i}" for i in range(3)]
        server = Server({"logs-pull": pull_large, "logs-pull-small": pull_small, "logs-warm-up": 5 * score_docs,
                         **{name: score_docs for name in copies}})
        try:
            measure("pull", server, "logs-pull", env)  # a first read warms the node's caches for both sides
            pulls = [(measure("pull", server, "logs-pull", env), measure("scan", server, "logs-pull", env)) for _ in range(3)]
            ours, scan = (max(side, key=rate) for side in zip(*pulls))
            ours_small = measure("pull", server, "logs-pull-small", env)
            server.warm_up_writes("logs-warm-up")
            runs = [(measure("forward", server, copies[0], env, minilm), measure("score", server, index, env, minilm)) for index in copies]
            forward, scored = (max(side, key=rate) for side in zip(*runs))
            scored_pull = measure("score", server, "logs-pull", env, minilm)  # after the pull rows: it writes to the index
            scored_pull_small = measure("score", server, "logs-pull-small", env, minilm)
        finally:
            server.close()
    assert ours["docs"] == scan["docs"] == pull_large and scored["docs"] == forward["docs"] == score_docs
    assert scored_pull["docs"] == pull_large and scored_pull_small["docs"] == pull_small
    return [
        {"name": f"Elasticsearch pull, {pull_large} docs (PIT + search_after)", "value": rate(ours), "unit": "docs/s",
         "baseline": "elasticsearch.helpers.scan, same node and docs", "baseline_value": rate(scan), "ratio": rate(ours) / rate(scan)},
        {"name": f"Elasticsearch scoring write-back, {score_docs} docs, packaged MiniLM", "value": rate(scored), "unit": "docs/s",
         "baseline": "pure forward pass, same texts", "baseline_value": rate(forward), "ratio": rate(scored) / rate(forward)},
        {"name": f"Elasticsearch pull peak RSS, {pull_large} docs", "value": ours["peak_rss_mib"], "unit": "MiB",
         "baseline": f"{pull_small} docs", "baseline_value": ours_small["peak_rss_mib"], "ratio": ours["peak_rss_mib"] / ours_small["peak_rss_mib"]},
        {"name": f"Elasticsearch scoring write-back peak RSS, {pull_large} docs", "value": scored_pull["peak_rss_mib"], "unit": "MiB",
         "baseline": f"{pull_small} docs", "baseline_value": scored_pull_small["peak_rss_mib"],
         "ratio": scored_pull["peak_rss_mib"] / scored_pull_small["peak_rss_mib"]},
    ]


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(json.dumps(row))
