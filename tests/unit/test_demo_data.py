from collections import Counter

from pipelines.data.demo_logs import DEMO_START, generate_logs


def test_corpus_shape_and_determinism():
    docs = list(generate_logs(DEMO_START, days=6, per_day=400, seed=3))
    assert docs == list(generate_logs(DEMO_START, days=6, per_day=400, seed=3))
    assert docs != list(generate_logs(DEMO_START, days=6, per_day=400, seed=4))
    ratio = sum(d["labels"]["anomaly"] for d in docs) / len(docs)
    assert 0.02 < ratio < 0.15
    assert {d["service"]["name"] for d in docs} == {"nginx", "kubernetes", "pytorch", "ceph"}
    days = Counter(d["@timestamp"][:10] for d in docs)
    assert len(days) == 6
    causes = Counter(c for d in docs for c in d["labels"]["root_cause"])
    assert {"OOM", "CUDA_OutOfMemory", "Disk_Full", "Network_Timeout"} <= set(causes)
    assert any(len(d["labels"]["root_cause"]) > 1 for d in docs)


def test_held_back_templates_only_on_last_day():
    from nightshift_models.normalize import normalize

    docs = list(generate_logs(DEMO_START, days=6, per_day=400, seed=3))
    last = docs[-1]["@timestamp"][:10]
    seen = {normalize(d["message"]) for d in docs if d["@timestamp"][:10] != last and d["labels"]["anomaly"]}
    fresh = {normalize(d["message"]) for d in docs if d["@timestamp"][:10] == last and d["labels"]["anomaly"]}
    assert len(fresh - seen) >= len(fresh) // 2
