"""Batch scoring of a file source, through the CLI, and evaluation."""

import json

import pytest


def test_score_logs_writes_ml_fields_for_every_record(settings, train_snapshot, tiny_bert, corpus, tmp_path, capsys):
    from nightshift.cli import main
    from pipelines.tasks.log_anomaly import train_log_anomaly

    train_log_anomaly(train_snapshot.path, settings, str(tiny_bert))
    sink = tmp_path / "out" / "scored.ndjson"
    code = main(["score", "logs", "--model", "log-anomaly@champion", "--source", f"file://{corpus}", "--sink", f"file://{sink}", "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    lines = sink.read_text().splitlines()
    assert summary["read"] == summary["scored"] == summary["written"] == len(lines) == len(corpus.read_text().splitlines())
    for line in lines:
        ml = json.loads(line)["ml"]
        assert 0.0 <= ml["anomaly"]["score"] <= 1.0 and isinstance(ml["anomaly"]["is_anomaly"], bool)
        assert ml["model"] == {"name": "log-anomaly", "version": "1", "family": "bert-cls", "runtime": summary["runtime"]} and ml["scored_at"]


@pytest.mark.slow  # trains, then evaluates on a second window: `make test-fast` leaves it out
def test_evaluate_reports_model_and_baseline(settings, train_snapshot, tiny_bert, corpus, tmp_path, capsys):
    from nightshift.cli import main, parse_time
    from pipelines.data.ingest import ingest_logs
    from pipelines.tasks.log_anomaly import train_log_anomaly

    train_log_anomaly(train_snapshot.path, settings, str(tiny_bert))
    fresh = ingest_logs(f"file://{corpus}", parse_time("2026-11-21"), parse_time("2026-11-22"), tmp_path / "fresh", settings)
    assert main(["evaluate", "log-anomaly/1", "--snapshot", str(fresh.path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for metrics in (out["metrics"], out["baselines"]["tfidf"]):
        assert set(metrics) == {"precision", "recall", "f1", "pr_auc"}
        assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert (out["unit"], out["examples"]) == ("lines", fresh.manifest["row_count"])
    assert out["baseline_trained_on"] == str(train_snapshot.path)


def test_unknown_model_reference_is_a_clear_error(settings, corpus, capsys):
    from nightshift.cli import main

    assert main(["score", "logs", "--model", "log-anomaly@champion", "--source", f"file://{corpus}"]) == 2
    assert "log-anomaly@champion" in capsys.readouterr().err


def test_texts_repeated_across_windows_are_scored_once_with_the_same_answer(home, monkeypatch):
    """The scoring cache: a text seen in an earlier window is not sent to the model again, and its
    probabilities are exactly what the model gives; an LRU of 2 forgets the oldest."""
    import numpy as np

    from pipelines.scoring.score_logs import TextCache
    from tests.support.fakes import StandInClassifier

    model = StandInClassifier()
    cache = TextCache(100)
    first = cache.probabilities(model, ["job failed", "ok", "ok"], 64)
    second = cache.probabilities(model, ["ok", "job failed", "new error"], 64)
    assert model.texts == ["job failed", "ok", "new error"]
    np.testing.assert_array_equal(second, StandInClassifier().probabilities(["ok", "job failed", "new error"]))
    np.testing.assert_array_equal(first, StandInClassifier().probabilities(["job failed", "ok", "ok"]))
    small = TextCache(2)
    small.probabilities(model, ["a", "b", "c"], 64)
    assert list(small.rows) == ["b", "c"]
    off = TextCache(0)
    off.probabilities(model, ["ok"], 64)
    assert model.texts[-1] == "ok" and not off.rows


def test_messages_the_model_reads_as_one_text_are_scored_once(home):
    """The cache is keyed by the text the model reads (the normalised message): messages that differ only in masked
    parts (numbers, addresses) go to the model once, and each gets exactly the model's answer for its own message."""
    import numpy as np

    from nightshift_models.text_classifier import TextClassifier, model_texts
    from pipelines.scoring.score_logs import TextCache

    class Recording(TextClassifier):
        def __init__(self):
            super().__init__()
            self.meta, self.sent = {"context_fields": ["level"]}, []

        def probabilities(self, messages, batch_size=64, context=None):
            self.sent.append(list(messages))
            return np.array([[len(t) / 100] for t in model_texts(messages, ["level"])], dtype=np.float32)

    model = Recording()
    cache = TextCache(100)
    first = cache.probabilities(model, ["disk 91% full on 10.0.0.1", "job 7 failed", "disk 95% full on 10.0.0.7"], 64)
    second = cache.probabilities(model, ["job 1234 failed", "disk 91% full on 10.0.0.1"], 64)
    assert model.sent == [["disk 91% full on 10.0.0.1", "job 7 failed"]]
    messages = ["disk 91% full on 10.0.0.1", "job 7 failed", "disk 95% full on 10.0.0.7", "job 1234 failed", "disk 91% full on 10.0.0.1"]
    np.testing.assert_array_equal(np.vstack([first, second]), Recording().probabilities(messages))


def test_each_documents_level_reaches_a_version_that_reads_it(home):
    """A version trained with the level (`context_fields`) reads `[level] message`: the same message at two levels is
    two texts to the model, each scored with its own level, and the documents' `log.level` is where scoring finds it."""
    import numpy as np

    from nightshift_models.text_classifier import TextClassifier, model_texts
    from pipelines.config import load_settings
    from pipelines.data.records import doc_context
    from pipelines.scoring.score_logs import TextCache

    class Recording(TextClassifier):
        def __init__(self):
            super().__init__()
            self.meta, self.read = {"context_fields": ["level"]}, []

        def probabilities(self, messages, batch_size=64, context=None):
            texts = model_texts(messages, ["level"], context)
            self.read.append(texts)
            return np.array([[0.9 if t.startswith("[error]") else 0.1] for t in texts], dtype=np.float32)

    docs = [{"message": "disk full on <PATH>", "log": {"level": "ERROR"}}, {"message": "disk full on <PATH>", "log": {"level": "info"}},
            {"message": "disk full on <PATH>"}]
    context = doc_context(docs, load_settings().fields, ("level",))
    assert context == {"level": ["ERROR", "info", None]}
    model = Recording()
    probs = TextCache(100).probabilities(model, [d["message"] for d in docs], 64, context=context)
    assert model.read == [["[error] disk full on <PATH>", "[info] disk full on <PATH>", "[-] disk full on <PATH>"]]
    np.testing.assert_allclose(probs[:, 0], [0.9, 0.1, 0.1])


def test_windows_gather_until_a_model_call_has_enough_new_texts(home, monkeypatch):
    """Windows with few new texts join the next ones, so the model gets `score.sort_window` new texts per call (the
    last call takes what is left); `score.max_pending` caps the documents held meanwhile; documents come out in
    the order read, each with the model's own answer."""
    from pipelines.config import load_settings
    from pipelines.scoring.score_logs import annotate
    from tests.support.fakes import StandInClassifier

    class Recording(StandInClassifier):
        def __init__(self):
            super().__init__()
            self.sent: list[tuple[int, list[str]]] = []  # (documents read so far, texts sent)

        def probabilities(self, messages, batch_size=64):
            self.sent.append((read, list(messages)))
            return super().probabilities(messages, batch_size)

    monkeypatch.setenv("NIGHTSHIFT_SCORE_SORT_WINDOW", "4")
    monkeypatch.setenv("NIGHTSHIFT_SCORE_MAX_PENDING", "12")
    texts = (["a0", "a1"] * 2 + ["a2 error", "a3"] * 2  # two windows, two new texts each: one call
             + ["a0", "a1", "a2 error", "a3"] * 3  # three windows, nothing new: out at 12 held, no call
             + ["b0", "b1 error", "b2", "b3"] + ["b4"])  # a window of new texts, then the last document
    read = 0

    def source():
        nonlocal read
        for i, text in enumerate(texts):
            read += 1
            yield f"doc-{i}", {"message": text}

    model, counts, held = Recording(), {"read": 0, "scored": 0}, []
    out = []
    for where, doc in annotate(source(), model, "log-anomaly", "1", load_settings(), counts, {}):
        held.append(read - len(out))
        out.append((where, doc))
    assert [c for _, c in model.sent] == [["a0", "a1", "a2 error", "a3"], ["b0", "b1 error", "b2", "b3"], ["b4"]]
    assert [n for n, _ in model.sent] == [8, 24, 25]
    assert max(held) <= 12
    assert [w for w, _ in out] == [f"doc-{i}" for i in range(len(texts))] and counts == {"read": 25, "scored": 25}
    assert [d["ml"]["anomaly"]["score"] for _, d in out] == [0.9 if "error" in t else 0.1 for t in texts]
