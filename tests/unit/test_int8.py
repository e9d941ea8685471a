"""The int8 scoring path of the BERT log models: the ONNX graph made at registration, its agreement check, the
`score.runtime` setting in batch scoring, and versions without the graph."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest


def _texts() -> list[str]:
    return ["kernel: Out of memory: Killed process <NUM> (python)", "GET /healthz 200", "disk /dev/sda1 is <NUM>% full",
            "connection reset by peer", "connection reset by peer", "job <ID> finished in <NUM>s", "a"]


@pytest.mark.parametrize("outputs,pooling", [(1, "cls"), (3, "mean")])
def test_int8_graph_scores_what_the_fp32_model_scores(tiny_bert, tmp_path, outputs, pooling):
    from nightshift_models.bert import load_classifier, predict_proba
    from nightshift_models.int8 import Int8Session, export_int8

    tokenizer, model = load_classifier(str(tiny_bert), outputs, pooling)
    graph = export_int8(model, tmp_path / "model.int8.onnx")
    assert graph.is_file() and not model.training
    fp32 = predict_proba(model, tokenizer, _texts(), batch_size=3, max_length=32)
    int8 = predict_proba(model, tokenizer, _texts(), batch_size=3, max_length=32, session=Int8Session(graph))
    assert int8.shape == fp32.shape == (len(_texts()), outputs)
    assert np.abs(int8 - fp32).max() < 0.05  # quantised weights move scores a little, not the answer
    assert np.array_equal(int8[3], int8[4])  # a repeated text is one answer


def test_int8_weights_have_one_scale_per_output_channel(tiny_bert, tmp_path):
    import onnx

    from nightshift_models.bert import load_classifier
    from nightshift_models.int8 import export_int8

    _, model = load_classifier(str(tiny_bert), 3, "mean")
    graph = onnx.load(str(export_int8(model, tmp_path / "model.int8.onnx"))).graph
    weights = {w.name: list(w.dims) for w in graph.initializer}
    matmuls = [node for node in graph.node if node.op_type == "MatMulInteger"]
    assert len(matmuls) >= 6 * model.config.num_hidden_layers  # q, k, v, attention out, intermediate, output
    for node in matmuls:
        weight = node.input[1]
        _, channels = weights[weight]
        base = weight.removesuffix("_quantized")
        assert weights[f"{base}_scale"] == weights[f"{base}_zero_point"] == [channels], node.name


def _version(settings, ref: str):
    from pipelines.registry.store import load_model, use_store

    client = use_store(settings)
    _, pyfunc = load_model(client, ref)
    name, version = ref.split("/")
    mv = client.get_model_version(name, version)
    return pyfunc.unwrap_python_model(), mv, client.get_run(mv.run_id).data.metrics


def test_registration_checks_the_int8_graph_and_the_version_serves_it(settings, train_snapshot, tiny_bert, corpus, tmp_path,
                                                                       monkeypatch):
    from pipelines.config import load_settings
    from pipelines.scoring.score_logs import score_logs
    from pipelines.tasks.log_anomaly import train_log_anomaly

    monkeypatch.setenv("NIGHTSHIFT_SCORE_INT8_MIN_AGREEMENT", "0.0")  # a tiny random BERT: the check is what is tested
    settings = load_settings()
    train_log_anomaly(train_snapshot.path, settings, str(tiny_bert))
    classifier, mv, metrics = _version(settings, "log-anomaly/1")
    check = classifier.meta["int8"]
    assert check["passed"] and check["reason"] == "" and check["texts"] > 0 and check["min_agreement"] == 0.0
    assert (classifier.path / check["file"]).is_file()
    assert 0.0 <= check["agreement"] <= 1.0 and set(check["agreement_per_label"]) == {"anomaly"}
    assert metrics["int8.agreement"] == pytest.approx(check["agreement"])
    assert {"int8.f1_fp32", "int8.f1_int8"} <= set(metrics)
    assert mv.tags["int8.status"] == "passed" and "int8.reason" not in mv.tags
    assert classifier.runtime == "int8"

    # score.runtime chooses the forward pass, and each scored document says which ran
    for runtime in ("int8", "fp32"):
        monkeypatch.setenv("NIGHTSHIFT_SCORE_RUNTIME", runtime)
        sink = tmp_path / f"{runtime}.ndjson"
        out = score_logs("log-anomaly/1", f"file://{corpus}", f"file://{sink}", load_settings())
        assert out["runtime"] == runtime and out["scored"] > 0
        docs = [json.loads(line) for line in sink.read_text().splitlines()]
        assert {d["ml"]["model"]["runtime"] for d in docs} == {runtime}


def test_a_version_below_the_agreement_setting_serves_fp32_and_says_why(settings, train_snapshot, tiny_bert, monkeypatch, caplog):
    from pipelines.config import load_settings
    from pipelines.tasks.log_anomaly import train_log_anomaly

    monkeypatch.setenv("NIGHTSHIFT_SCORE_INT8_MIN_AGREEMENT", "1.01")  # no share of agreeing decisions reaches it
    with caplog.at_level(logging.WARNING, logger="nightshift.train"):
        train_log_anomaly(train_snapshot.path, load_settings(), str(tiny_bert))
    classifier, mv, metrics = _version(settings, "log-anomaly/1")
    check = classifier.meta["int8"]
    assert not check["passed"] and "score.int8_min_agreement=1.01" in check["reason"] and "serves fp32" in check["reason"]
    assert not (classifier.path / check["file"]).exists()
    assert mv.tags["int8.status"] == "failed" and mv.tags["int8.reason"] == check["reason"]
    assert "int8.agreement" in metrics
    assert [r.reason for r in caplog.records if r.getMessage() == "int8 check failed: the version serves fp32"] == [check["reason"]]
    assert classifier.use_runtime("int8") == "fp32" and classifier.runtime == "fp32"
    assert classifier.int8_problem() == check["reason"]


def _checkpoint(tiny_bert: Path, folder: Path) -> Path:
    """A version's checkpoint folder as versions without the int8 graph were written: weights, tokenizer, nightshift.json."""
    from nightshift_models.bert import load_classifier
    from nightshift_models.text_classifier import write_meta

    tokenizer, model = load_classifier(str(tiny_bert), 1)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    write_meta(folder, {"task": "log-anomaly", "outputs": ["anomaly"], "thresholds": [0.5], "max_length": 32})
    return folder


def _loaded(folder: Path):
    from nightshift_models.text_classifier import TextClassifier

    classifier = TextClassifier()
    classifier.load_context(type("Ctx", (), {"artifacts": {"checkpoint": str(folder)}})())
    return classifier


def test_a_version_without_the_int8_graph_loads_and_scores_fp32(tiny_bert, tmp_path):
    import pandas as pd

    classifier = _loaded(_checkpoint(tiny_bert, tmp_path / "checkpoint"))
    assert classifier.runtime == "fp32" and classifier.int8_problem() == "the version has no int8 graph"
    assert classifier.use_runtime("int8") == "fp32"
    out = classifier.predict(None, pd.DataFrame({"message": _texts()}))
    assert len(out) == len(_texts()) and out["anomaly_score"].between(0, 1).all()


def test_the_runtime_is_one_of_two_words(tiny_bert, tmp_path, home, monkeypatch):
    from nightshift_models.errors import InputError
    from pipelines.config import ConfigError, load_settings

    classifier = _loaded(_checkpoint(tiny_bert, tmp_path / "checkpoint"))
    with pytest.raises(InputError, match="score.runtime"):
        classifier.use_runtime("int4")
    monkeypatch.setenv("NIGHTSHIFT_SCORE_RUNTIME", "int4")
    with pytest.raises(ConfigError, match="setting score.runtime: 'int4' is not one of fp32, int8"):
        load_settings()


def test_a_version_with_the_graph_serves_int8_on_the_cpu_and_fp32_when_asked(tiny_bert, tmp_path):
    from nightshift_models.int8 import INT8_FILE, export_int8
    from nightshift_models.text_classifier import META_FILE, write_meta

    folder = _checkpoint(tiny_bert, tmp_path / "checkpoint")
    plain = _loaded(folder)
    export_int8(plain.model, folder / INT8_FILE)
    meta = json.loads((folder / META_FILE).read_text())
    write_meta(folder, {**meta, "int8": {"file": INT8_FILE, "passed": True, "reason": ""}})
    classifier = _loaded(folder)
    assert classifier.runtime == "int8"
    int8 = classifier.probabilities(_texts())
    assert classifier.use_runtime("fp32") == "fp32"
    assert np.abs(classifier.probabilities(_texts()) - int8).max() < 0.05
    assert np.allclose(classifier.probabilities(_texts()), plain.probabilities(_texts()))


def test_a_loaded_int8_version_pickles_and_scores_the_same(tiny_bert, tmp_path):
    import pickle

    from nightshift_models.int8 import INT8_FILE, export_int8
    from nightshift_models.text_classifier import META_FILE, write_meta

    folder = _checkpoint(tiny_bert, tmp_path / "checkpoint")
    export_int8(_loaded(folder).model, folder / INT8_FILE)
    write_meta(folder, {**json.loads((folder / META_FILE).read_text()), "int8": {"file": INT8_FILE, "passed": True, "reason": ""}})
    classifier = _loaded(folder)
    again = pickle.loads(pickle.dumps(classifier))  # how versions were logged before they were logged from code
    assert again.runtime == "int8"
    assert np.array_equal(again.probabilities(_texts()), classifier.probabilities(_texts()))
