"""Shadow scoring: the log-anomaly version that lost its gate, or awaits it, is scored beside the champion
in the nightly pass, into `ml.shadow.*` or a sink of its own; the agreement goes into the night's summary, its page
and the version's MLflow run; a killed run resumes with the shadow's answers kept.

The champion is the stand-in classifier (0.9 for 'fail'/'error', else 0.1); the shadow a second stand-in (0.8 for
'fail'/'timeout', else 0.2), so every number below can be worked out by hand (`hand`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support.fakes import FakeRegistry, StandInClassifier
from tests.support.ndjson import hidden, read_ndjson, write_ndjson

ROOT = Path(__file__).resolve().parents[2]
NIGHT = "2026-11-17"  # its fresh window is 2026-11-16

# Per 10 documents: 3 'failed' (both anomaly, |diff| 0.1), 2 'error' (champion anomaly, shadow normal: 0.7),
# 1 'timeout' (champion normal, shadow anomaly: 0.7), 4 'ok' (both normal: 0.1).
PATTERN = ["worker failed", "disk error", "worker failed", "request timeout", "request ok",
           "worker failed", "request ok", "disk error", "request ok", "request ok"]
# agreement 7/10; champion anomaly share 0.5, shadow 0.4, chance agreement 0.5*0.4 + 0.5*0.6 = 0.5,
# kappa (0.7 - 0.5) / (1 - 0.5) = 0.4; mean |diff| (3*0.1 + 2*0.7 + 0.7 + 4*0.1) / 10 = 0.28.


def hand(n: int) -> dict:
    """The agreement of n documents of `PATTERN` (n a multiple of 10), worked out above."""
    return {"documents": n, "agreement": 0.7, "kappa": 0.4, "mean_abs_score_diff": 0.28, "flips_to_anomaly": n // 10,
            "flips_to_normal": 2 * n // 10, "champion_anomalies": 5 * n // 10, "shadow_anomalies": 4 * n // 10}


def docs(n: int) -> list[dict]:
    """n documents of `PATTERN` on 2026-11-16, and one without text after the 5th."""
    out = [{"@timestamp": f"2026-11-16T{i // 3600:02d}:{i // 60 % 60:02d}:{i % 60:02d}Z", "id": i, "message": f"{PATTERN[i % 10]} #{i}"}
           for i in range(n)]
    out.insert(5, {"@timestamp": "2026-11-16T00:00:05Z", "id": "no-text", "message": 404})
    return out


def shadow_model() -> StandInClassifier:
    return StandInClassifier(words=("fail", "timeout"), high=0.8, low=0.2)


@pytest.fixture
def night(stand_in) -> dict:
    """The registry after a night whose candidate lost: v1 champion, v2 rejected (each with its stand-in)."""
    registry: FakeRegistry = stand_in["registry"]
    registry.register("log-anomaly", 1, "promoted", alias="champion")
    registry.register("log-anomaly", 2, "rejected")
    stand_in["versions"]["2"] = shadow_model()
    return stand_in


def agreement_of(out: dict) -> dict:
    return {k: out["shadow"][k] for k in hand(10)}


# ---- which version shadows ---------------------------------------------------------------------------------

def test_the_shadow_is_the_newest_pending_version_or_rejected_one_newer_than_the_champion():
    from pipelines.scoring.shadow import shadow_candidate

    def registry(*versions, champion=None):
        r = FakeRegistry()
        for version, decision in versions:
            r.register("log-anomaly", version, decision)
        if champion:
            r.aliases[("log-anomaly", "champion")] = str(champion)
        return r

    def pick(r):
        c = shadow_candidate(r, "log-anomaly")
        return (c.ref.version, c.decision, c.champion) if c else None

    # rejected before the champion: obsolete; abandoned, stale, rolled back: never
    assert pick(registry((1, "rejected"), (2, "promoted"), (3, "abandoned"), (4, "stale"), (5, "rolled_back"), champion=2)) is None
    assert pick(registry((1, "promoted"), (2, "rejected"), (3, "rejected"), champion=1)) == ("3", "rejected", "1")
    # pending counts whenever it was registered (not gated yet); a version without the tag is pending
    assert pick(registry((1, "pending"), (2, "promoted"), champion=2)) == ("1", "pending", "2")
    assert pick(registry((1, "promoted"), (2, "rejected"), (3, None), champion=1)) == ("3", "pending", "1")
    assert pick(registry((1, "promoted"), (2, "pending"), (3, "rejected"), (4, "promoted"), champion=4)) == ("2", "pending", "4")
    # no champion: nothing to compare with; a promoted newest version: nothing to shadow
    assert pick(registry((1, "pending"))) is None
    assert pick(registry((1, "promoted"), (2, "promoted"), champion=2)) is None


# ---- agreement -----------------------------------------------------------------------------------------------

def test_agreement_matches_the_hand_count_and_sklearn():
    from sklearn.metrics import cohen_kappa_score

    from pipelines.scoring.shadow import Agreement

    champion = [("fail" in m or "error" in m) for m in PATTERN]  # T T T F F T F T F F
    shadow = [("fail" in m or "timeout" in m) for m in PATTERN]  # T F T T F T F F F F
    a = Agreement()
    for part in (slice(0, 4), slice(4, 10)):  # counted window by window
        a.add(champion[part], shadow[part], [0.9 if f else 0.1 for f in champion[part]], [0.8 if f else 0.2 for f in shadow[part]])
    s = a.summary()
    assert {k: s[k] for k in hand(10)} == hand(10)
    assert a.kappa() == pytest.approx(cohen_kappa_score(champion, shadow))
    same = Agreement()
    same.add([False] * 3, [False] * 3, [0.1] * 3, [0.1] * 3)
    assert same.summary()["agreement"] == 1.0 and same.kappa() is None  # sklearn: nan (both give one class throughout)
    assert Agreement().summary()["agreement"] is None


# ---- the nightly pass ------------------------------------------------------------------------------------------

def test_fields_mode_writes_ml_shadow_beside_the_champion_and_reports_the_agreement(home, night, capsys):
    from pipelines.config import load_settings
    from pipelines.flow import describe, plan_night, score_fresh, write_summary

    items = docs(40)
    src = write_ndjson(home.parent / "logs.ndjson", items)
    settings = load_settings()
    plan = plan_night(settings, NIGHT, source=src).to_dict()
    out = score_fresh(plan, settings)

    written = read_ndjson(Path(plan["scored_sink"].removeprefix("file://")))
    assert [d["id"] for d in written] == [d["id"] for d in items]
    for doc in written:
        if doc["id"] == "no-text":
            assert "ml" not in doc  # written unchanged, compared with nothing
            continue
        ml, text = doc["ml"], doc["message"]
        assert ml["model"] == {"name": "log-anomaly", "version": "1", "family": "bert"}  # a stand-in classifier: no family of its own
        assert ml["shadow"] == {"score": 0.8 if ("fail" in text or "timeout" in text) else 0.2,
                                "is_anomaly": "fail" in text or "timeout" in text, "model": {"name": "log-anomaly", "version": "2"}}
        assert ml["anomaly"]["is_anomaly"] == ("fail" in text or "error" in text)
    shadow = out["shadow"]
    assert agreement_of(out) == hand(40) and shadow["covers"] == "pass"
    assert (shadow["version"], shadow["decision"], shadow["champion_version"], shadow["mode"]) == ("2", "rejected", "1", "fields")

    # the challenger's run: metrics shadow.* at the window's day, and the champion it was compared with
    metrics = night["registry"].metrics["run-log-anomaly-2"]
    assert {k: v[-1] for k, v in metrics.items()} == {
        "shadow.documents": (40.0, 20261116), "shadow.agreement": (0.7, 20261116), "shadow.kappa": (0.4, 20261116),
        "shadow.mean_abs_score_diff": (0.28, 20261116), "shadow.flips_to_anomaly": (4.0, 20261116), "shadow.flips_to_normal": (8.0, 20261116)}
    assert night["registry"].run_tags["run-log-anomaly-2"] == {"shadow.champion_version": "1"}
    assert shadow["logged_to_run"] == "run-log-anomaly-2"

    # the night's summary, its one-line description and its page
    outcomes = {"log-anomaly": {"model": "log-anomaly", "version": "2", "decision": "rejected",
                                "promotion": {"reason": "f1 0.61 does not beat the champion's 0.64"}}}
    summary = write_summary(plan, outcomes, out, None, None, settings)
    saved = json.loads(Path(plan["summary_file"]).read_text())
    assert saved["scoring"]["shadow"]["agreement"] == 0.7 and saved["models"]["log-anomaly"]["shadow"]["kappa"] == 0.4
    text = describe(summary)
    assert ("shadow: log-anomaly v2 (rejected) beside champion v1 on 40 docs (the whole window): agreement 0.700, kappa 0.400, "
            "mean |score diff| 0.2800, flips 4 to anomaly / 8 to normal -> ml.shadow.* fields") in text
    page = Path(summary["report"]).read_text()
    assert "Shadow: log-anomaly v2" in page and "Cohen&#x27;s kappa" in page and ">0.4<" in page and ">0.28<" in page


def test_index_mode_writes_the_shadow_to_a_sink_of_its_own(home, night, monkeypatch, tmp_path):
    from pipelines.config import ConfigError, load_settings
    from pipelines.scoring.score_logs import score_logs

    monkeypatch.setenv("NIGHTSHIFT_SCORE_SHADOW", "index")
    items = docs(30)
    src = write_ndjson(tmp_path / "logs.ndjson", items)
    out = score_logs("log-anomaly@champion", src, None, load_settings(), shadow_model="log-anomaly/2")

    main, shadow = tmp_path / "logs.scored.ndjson", tmp_path / "logs.scored.shadow.ndjson"
    assert out["shadow"]["sink"] == {"uri": f"file://{shadow.resolve()}", "written": 31, "resumed_docs": 0}
    assert agreement_of(out) == hand(30) and out["shadow"]["mode"] == "index"
    main_docs, shadow_docs = read_ndjson(main), read_ndjson(shadow)
    assert [d["id"] for d in main_docs] == [d["id"] for d in shadow_docs] == [d["id"] for d in items]  # line N is document N in both
    for m, s in zip(main_docs, shadow_docs):
        if m["id"] == "no-text":
            assert m == s == items[5]
            continue
        assert "shadow" not in m["ml"] and m["ml"]["model"]["version"] == "1"
        assert set(s["ml"]) == {"shadow"} and s["ml"]["shadow"]["model"]["version"] == "2" and s["message"] == m["message"]
    assert hidden(tmp_path) == []

    monkeypatch.setenv("NIGHTSHIFT_SCORE_SHADOW_SINK", str(tmp_path / "elsewhere" / "shadow.ndjson"))
    again = score_logs("log-anomaly@champion", src, f"file://{tmp_path / 'again.ndjson'}", load_settings(), shadow_model="log-anomaly/2")
    assert again["shadow"]["sink"]["uri"] == f"file://{(tmp_path / 'elsewhere' / 'shadow.ndjson').resolve()}"
    assert len(read_ndjson(tmp_path / "elsewhere" / "shadow.ndjson")) == 31
    monkeypatch.setenv("NIGHTSHIFT_SCORE_SHADOW_SINK", str(tmp_path / "again.ndjson"))
    with pytest.raises(ConfigError, match="score.shadow_sink.*is the main sink"):
        score_logs("log-anomaly@champion", src, f"file://{tmp_path / 'again.ndjson'}", load_settings(), shadow_model="log-anomaly/2")


def test_shadow_sink_names():
    from pipelines.scoring.shadow import shadow_sink_uri

    assert shadow_sink_uri("file:///data/logs.scored.ndjson", "") == "file:///data/logs.scored.shadow.ndjson"
    assert shadow_sink_uri("https://u:p@es:9200/logs-*", "") == "https://u:p@es:9200/nightshift-ml-results-shadow"
    assert shadow_sink_uri("https://es:9200/prefix/logs-*", "shadow-idx") == "https://es:9200/prefix/shadow-idx"
    assert shadow_sink_uri("elasticsearch://logs-*", "") == "elasticsearch://nightshift-ml-results-shadow"
    assert shadow_sink_uri("file:///data/x.ndjson", "https://es:9200/s") == "https://es:9200/s"


def test_off_no_challenger_and_the_champion_itself_mean_no_shadow(home, night, monkeypatch, tmp_path):
    from pipelines.config import ConfigError, load_settings
    from pipelines.flow import describe, plan_night, score_fresh
    from pipelines.scoring.score_logs import score_logs

    src = write_ndjson(tmp_path / "logs.ndjson", docs(10))
    plan = plan_night(load_settings(), NIGHT, source=src).to_dict()
    sink = Path(plan["scored_sink"].removeprefix("file://"))

    def shadowed() -> bool:
        return any("shadow" in d.get("ml", {}) for d in read_ndjson(sink))

    monkeypatch.setenv("NIGHTSHIFT_SCORE_SHADOW", "off")
    out = score_fresh(plan, load_settings())
    assert "shadow" not in out and not shadowed() and out["scored"] == 10
    assert "shadow" not in score_logs("log-anomaly@champion", src, None, load_settings(), shadow_model="log-anomaly/2")
    monkeypatch.setenv("NIGHTSHIFT_SCORE_SHADOW", "sideways")
    with pytest.raises(ConfigError, match="score.shadow"):
        score_fresh(plan, load_settings())
    monkeypatch.delenv("NIGHTSHIFT_SCORE_SHADOW")

    del night["registry"].versions[("log-anomaly", "2")]  # no challenger: only the champion
    out = score_fresh(plan, load_settings())
    assert "shadow" not in out and not shadowed()
    assert "shadow" not in describe({"logical_date": NIGHT, "models": {}, "scoring": out})
    assert "shadow" not in score_logs("log-anomaly@champion", src, None, load_settings(), shadow_model="log-anomaly/1")


# ---- kill and resume ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("crash", ["champion", "shadow"])
def test_a_resumed_run_keeps_the_shadow_fields_and_counts_the_whole_window(home, night, monkeypatch, tmp_path, crash):
    from pipelines.config import load_settings
    from pipelines.scoring.score_logs import score_logs

    monkeypatch.setenv("NIGHTSHIFT_SCORE_SORT_WINDOW", "20")  # windows and checkpoints of 20 documents
    monkeypatch.setenv("NIGHTSHIFT_SCORE_MAX_PENDING", "20")  # a model call per window
    items = docs(130)
    src = write_ndjson(tmp_path / "logs.ndjson", items)
    sink = tmp_path / "out" / "scored.ndjson"
    if crash == "champion":
        night["classifier"] = StandInClassifier(crash_on_call=5)
    else:
        night["versions"]["2"] = StandInClassifier(crash_on_call=5, words=("fail", "timeout"), high=0.8, low=0.2)
    with pytest.raises(RuntimeError, match="killed mid-run"):
        score_logs("log-anomaly/1", src, f"file://{sink}", load_settings(), shadow_model="log-anomaly/2")
    assert not sink.exists()
    assert json.loads((sink.parent / ".scored.ndjson.partial.json").read_text())["docs"] == 80

    night["classifier"], night["versions"]["2"] = StandInClassifier(), shadow_model()
    resumed = score_logs("log-anomaly/1", src, f"file://{sink}", load_settings(), shadow_model="log-anomaly/2")
    assert (resumed["resumed_docs"], resumed["written"]) == (80, 51)
    first_80 = {d["message"] for d in items[:80]}
    assert not first_80 & set(night["versions"]["2"].texts)  # the shadow does not score them again either
    written = read_ndjson(sink)
    assert [d["id"] for d in written] == [d["id"] for d in items]
    assert all(d["ml"]["shadow"]["model"]["version"] == "2" for d in written if d["id"] != "no-text")
    # the agreement counts the whole window: the first 80 documents' read back from the partial file
    shadow = resumed["shadow"]
    assert (shadow["rebuilt_documents"], shadow["covers"]) == (79, "pass") and agreement_of(resumed) == hand(130)
    assert hidden(sink.parent) == []

    # another shadow version is another pass: it starts afresh
    night["registry"].register("log-anomaly", 3, "pending")
    night["classifier"] = StandInClassifier(crash_on_call=2)
    with pytest.raises(RuntimeError):
        score_logs("log-anomaly/1", src, f"file://{sink}", load_settings(), shadow_model="log-anomaly/2")
    night["classifier"] = StandInClassifier()
    other = score_logs("log-anomaly/1", src, f"file://{sink}", load_settings(), shadow_model="log-anomaly/3")
    assert other["resumed_docs"] == 0 and other["written"] == 131


@pytest.mark.parametrize("behind", ["shadow", "main"])
def test_index_mode_resumes_each_sink_from_its_own_checkpoint(home, night, monkeypatch, tmp_path, behind):
    """A kill can land between the two sinks' checkpoints: the rerun skips what both hold, and the sink that is ahead
    skips the rest on its own."""
    from pipelines.config import load_settings
    from pipelines.scoring.score_logs import score_logs

    monkeypatch.setenv("NIGHTSHIFT_SCORE_SORT_WINDOW", "20")
    monkeypatch.setenv("NIGHTSHIFT_SCORE_MAX_PENDING", "20")  # a model call per window
    monkeypatch.setenv("NIGHTSHIFT_SCORE_SHADOW", "index")
    items = docs(130)
    src = write_ndjson(tmp_path / "logs.ndjson", items)
    main, shadow = tmp_path / "scored.ndjson", tmp_path / "scored.shadow.ndjson"
    night["classifier"] = StandInClassifier(crash_on_call=5)
    with pytest.raises(RuntimeError, match="killed mid-run"):
        score_logs("log-anomaly/1", src, f"file://{main}", load_settings(), shadow_model="log-anomaly/2")
    for path in (main, shadow):
        assert not path.exists() and json.loads(path.with_name(f".{path.name}.partial.json").read_text())["docs"] == 80
    # as if killed after one sink's checkpoint at 80 documents and before the other's: that one recorded 60
    lagging = shadow if behind == "shadow" else main
    state_file, partial = lagging.with_name(f".{lagging.name}.partial.json"), lagging.with_name(f".{lagging.name}.partial")
    state = json.loads(state_file.read_text())
    state.update(docs=60, bytes=sum(len(line) for line in partial.read_bytes().splitlines(keepends=True)[:60]))
    state_file.write_text(json.dumps(state))

    night["classifier"] = StandInClassifier()
    resumed = score_logs("log-anomaly/1", src, f"file://{main}", load_settings(), shadow_model="log-anomaly/2")
    main_docs, shadow_docs = read_ndjson(main), read_ndjson(shadow)
    assert [d["id"] for d in main_docs] == [d["id"] for d in shadow_docs] == [d["id"] for d in items]
    assert all("shadow" not in d.get("ml", {}) for d in main_docs)
    assert all(d["ml"] == {"shadow": d["ml"]["shadow"]} for d in shadow_docs if d["id"] != "no-text")
    assert resumed["read"] == 71  # from the 60th document on: both sinks had those
    assert (resumed["resumed_docs"], resumed["written"]) == ((80, 51) if behind == "shadow" else (60, 71))
    assert resumed["shadow"]["sink"]["resumed_docs"] == (60 if behind == "shadow" else 80)
    assert resumed["shadow"]["covers"] == "pass" and agreement_of(resumed) == hand(130)
    assert hidden(tmp_path) == []


KILLED_RUN = textwrap.dedent('''
    import os, signal, sys
    import numpy as np
    import pipelines.registry.store as registry
    from pipelines.config import load_settings
    from tests.support.fakes import FakeRegistry, StandInClassifier

    class Killed(StandInClassifier):
        def probabilities(self, messages, batch_size=64):
            if self.calls == 3:
                os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no checkpoint on the way out, the shadow's thread mid-write
            return super().probabilities(messages, batch_size)

    class Model:
        def __init__(self, classifier):
            self.classifier = classifier
        def unwrap_python_model(self):
            return self.classifier

    import pipelines.scoring.root_causes as root_causes
    import pipelines.scoring.score_logs as scoring
    import pipelines.scoring.shadow as shadow

    fake = FakeRegistry()
    fake.register("log-anomaly", 2, "pending")
    scoring.use_store = lambda settings: fake
    scoring.load_model = lambda client, ref: (registry.ModelRef("log-anomaly", "1"), Model(Killed()))
    shadow.load_model = lambda client, ref: (registry.ModelRef("log-anomaly", "2"),
                                             Model(StandInClassifier(words=("fail", "timeout"), high=0.8, low=0.2)))
    root_causes.alias_version = lambda client, name, alias: None
    scoring.score_logs("log-anomaly/1", sys.argv[1], sys.argv[2], load_settings(), shadow_model="log-anomaly/2")
''')


@pytest.mark.slow  # a scoring process of its own, killed: `make test-fast` leaves it out
@pytest.mark.parametrize("mode", ["fields", "index"])
def test_a_killed_run_is_resumed_with_the_shadow_complete(home, night, monkeypatch, tmp_path, mode):
    from pipelines.config import load_settings
    from pipelines.scoring.score_logs import score_logs

    monkeypatch.setenv("NIGHTSHIFT_SCORE_SORT_WINDOW", "20")
    monkeypatch.setenv("NIGHTSHIFT_SCORE_MAX_PENDING", "20")  # a model call per window
    monkeypatch.setenv("NIGHTSHIFT_SCORE_SHADOW", mode)
    items = docs(100)
    src = write_ndjson(tmp_path / "logs.ndjson", items)
    main, shadow = tmp_path / "out" / "scored.ndjson", tmp_path / "out" / "scored.shadow.ndjson"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", KILLED_RUN, src, f"file://{main}"], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == -9, done.stderr[-2000:]
    assert json.loads((main.parent / ".scored.ndjson.partial.json").read_text())["docs"] == 60  # three windows before the kill

    resumed = score_logs("log-anomaly/1", src, f"file://{main}", load_settings(), shadow_model="log-anomaly/2")
    assert resumed["resumed_docs"] == 60 and resumed["shadow"]["covers"] == "pass" and agreement_of(resumed) == hand(100)
    main_docs = read_ndjson(main)
    assert [d["id"] for d in main_docs] == [d["id"] for d in items]
    shadow_docs = read_ndjson(shadow) if mode == "index" else main_docs
    assert [d["id"] for d in shadow_docs] == [d["id"] for d in items]
    assert all(d["ml"]["shadow"]["model"]["version"] == "2" for d in shadow_docs if d["id"] != "no-text")
    assert hidden(main.parent) == []


# ---- real versions -------------------------------------------------------------------------------------------------

@pytest.mark.slow  # trains two versions: `make test-fast` leaves it out
def test_real_versions_the_pending_candidate_is_shadowed_and_its_run_gets_the_agreement(settings, train_snapshot, tiny_bert, corpus, monkeypatch):
    """A tiny-BERT champion (v1) and a TF-IDF candidate awaiting its gate (v2) in a real MLflow store: the night's
    scoring finds v2, writes `ml.shadow.*`, and logs the agreement on v2's run."""
    from mlflow import MlflowClient

    from pipelines.config import load_settings
    from pipelines.flow import plan_night, score_fresh
    from pipelines.tasks.log_anomaly import train_log_anomaly

    train_log_anomaly(train_snapshot.path, settings, str(tiny_bert))
    monkeypatch.setenv("NIGHTSHIFT_CANDIDATES_FAMILIES", "tfidf")  # another family: answers that differ
    candidate = train_log_anomaly(train_snapshot.path, load_settings(), str(tiny_bert))
    assert (candidate.version, candidate.decision) == ("2", "pending")

    plan = plan_night(settings, "2026-11-22", source=f"file://{corpus}").to_dict()
    out = score_fresh(plan, settings)
    shadow = out["shadow"]
    assert (shadow["model"], shadow["version"], shadow["decision"], shadow["champion_version"]) == ("log-anomaly", "2", "pending", "1")
    assert shadow["documents"] == out["scored"] > 0 and 0.0 <= shadow["agreement"] <= 1.0
    flags = [(d["ml"]["anomaly"]["is_anomaly"], d["ml"]["shadow"]["is_anomaly"])
             for d in read_ndjson(Path(plan["scored_sink"].removeprefix("file://")))]
    assert len(flags) == out["scored"]
    assert shadow["agreement"] == round(sum(c == s for c, s in flags) / len(flags), 6)
    assert (shadow["flips_to_anomaly"], shadow["flips_to_normal"]) == (sum(s and not c for c, s in flags), sum(c and not s for c, s in flags))

    client = MlflowClient(settings.mlflow_uri)
    run = client.get_run(client.get_model_version("log-anomaly", "2").run_id)
    assert shadow["logged_to_run"] == run.info.run_id
    assert run.data.metrics["shadow.agreement"] == pytest.approx(shadow["agreement"])
    assert run.data.metrics["shadow.documents"] == shadow["documents"]
    assert run.data.metrics["shadow.flips_to_normal"] == shadow["flips_to_normal"]
    assert run.data.tags["shadow.champion_version"] == "1"
    history = client.get_metric_history(run.info.run_id, "shadow.agreement")
    assert [m.step for m in history] == [20261121]  # the fresh window's day
