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


def _words(message: str) -> set[str]:
    import re

    return {w.lower() for w in re.findall(r"[^\W\d_]+", message)}


def test_the_hard_variant_adds_unseen_words_chinese_and_label_noise_and_leaves_the_default_alone():
    docs = list(generate_logs(DEMO_START, days=6, per_day=400, seed=3))
    hard = list(generate_logs(DEMO_START, days=6, per_day=400, seed=3, variant="hard"))
    assert hard == list(generate_logs(DEMO_START, days=6, per_day=400, seed=3, variant="hard"))
    assert docs == list(generate_logs(DEMO_START, days=6, per_day=400, seed=3, variant="default"))
    last = hard[-1]["@timestamp"][:10]
    earlier = [d for d in hard if d["@timestamp"][:10] != last]
    vocabulary = set().union(*(_words(d["message"]) for d in earlier))
    key = lambda d: (d["@timestamp"], d["message"])  # noqa: E731
    added = {key(d) for d in hard} - {key(d) for d in docs}
    novel = [d for d in hard if d["@timestamp"][:10] == last and d["labels"]["anomaly"] and key(d) in added
             and not any("\u4e00" <= c <= "\u9fff" for c in d["message"])]
    assert len(novel) >= 12 and all(not (_words(d["message"]) & vocabulary) for d in novel)  # no word seen before the last day

    chinese = [d for d in hard if any("\u4e00" <= c <= "\u9fff" for c in d["message"])]
    assert 0.07 < len(chinese) / len(hard) < 0.2 and {d["@timestamp"][:10] for d in chinese} == {d["@timestamp"][:10] for d in hard}
    assert any(d["labels"]["anomaly"] for d in chinese) and not all(d["labels"]["anomaly"] for d in chinese)

    truth = {key(d): d["labels"]["anomaly"] for d in docs}
    flipped = [d for d in hard if key(d) in truth and d["labels"]["anomaly"] != truth[key(d)]]
    assert 0.01 < len(flipped) / len(docs) < 0.05
    assert all(d["@timestamp"][:10] != last and "job_id" not in d["labels"] for d in flipped)  # the held-back day and the jobs stay true
    assert [d["labels"]["root_cause"] for d in hard if "job_id" in d["labels"]] == [d["labels"]["root_cause"] for d in docs if "job_id" in d["labels"]]


def test_an_unknown_variant_is_refused_by_name():
    import pytest

    with pytest.raises(ValueError, match="variant 'harder'"):
        list(generate_logs(DEMO_START, days=2, per_day=10, variant="harder"))


def test_demo_data_cli_writes_the_hard_variant(tmp_path, capsys):
    import json

    from nightshift.cli import main

    assert main(["demo-data", "--out", str(tmp_path), "--days", "3", "--per-day", "100", "--hard", "--json"]) == 0
    lines = [json.loads(line) for line in (tmp_path / "logs.ndjson").read_text().splitlines()]
    assert lines == list(generate_logs(DEMO_START, days=3, per_day=100, seed=7, variant="hard"))
