"""failure-rca reads causes worded in new words: each label's descriptions are labelled training texts, and the family
and threshold are chosen on folds that hold out whole error templates."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest


def test_template_folds_score_every_job_in_words_its_fold_never_trained_on(settings, train_snapshot):
    from pipelines.data.splits import template_key
    from pipelines.tasks.failure_rca import configured_label_space, prepare_jobs, snapshot_jobs

    space = configured_label_space(settings)
    data = prepare_jobs(snapshot_jobs(train_snapshot, settings, space), space.labels, settings, "test")
    assert data.selection.method == "template-cv" and len(data.selection.folds) == settings.candidates.cv_folds
    assert sorted(data.selection.validated.tolist()) == list(range(len(data.rows)))  # every job scored once, out of fold
    template = data.rows["model_text"].str.split(" | ", n=1, regex=False).str[0].map(template_key).to_numpy()
    for fold in data.selection.folds:
        assert not set(template[fold.train]) & set(template[fold.val])
        assert data.targets[fold.train].any()


def test_template_folds_need_two_templates_and_positives_to_train_on():
    from pipelines.data.splits import template_folds

    assert template_folds(["a", "a", "a"], np.array([1, 0, 1]), 3, seed=0) == ()
    keys = ["a", "a", "b", "b", "c", "d"]
    folds = template_folds(keys, np.array([1, 1, 0, 0, 0, 0]), 3, seed=0)
    assert folds and all(np.asarray([1, 1, 0, 0, 0, 0], bool)[f.train].any() for f in folds)  # the fold validating "a" is left out
    again = template_folds(keys, np.ones(6), 3, seed=0), template_folds(keys, np.ones(6), 3, seed=0)
    assert [f.val.tolist() for f in again[0]] == [f.val.tolist() for f in again[1]]  # seeded


def test_a_time_selection_setting_keeps_the_time_folds(settings, train_snapshot):
    import dataclasses

    from pipelines.tasks.failure_rca import configured_label_space, prepare_jobs, snapshot_jobs

    space = configured_label_space(settings)
    timed = dataclasses.replace(settings, rca=dataclasses.replace(settings.rca, selection="time"))
    data = prepare_jobs(snapshot_jobs(train_snapshot, settings, space), space.labels, timed, "test")
    assert data.selection.method == "time-cv"


def test_each_label_is_described_by_its_name_actions_and_knowledge_base_entries(tmp_path):
    from nightshift_models.knowledge_base import load_knowledge_base
    from nightshift_models.label_space import load_label_space
    from nightshift_models.normalize import normalize
    from pipelines.tasks.failure_rca import description_examples, split_words

    assert split_words("CUDA_OutOfMemory") == "CUDA Out Of Memory" and split_words("OOM") == "OOM"
    space = load_label_space()
    kb = tmp_path / "kb.json"
    kb.write_text(json.dumps({"entries": [
        {"id": "full", "title": "Volume full", "label": "Disk_Full", "symptoms": ["no space left on device"], "actions": []},
        {"id": "stray", "title": "Cosmic ray", "symptoms": ["bit flipped"], "actions": []},  # no label: no example
        {"id": "other", "title": "Elsewhere", "label": "Not_A_Label", "symptoms": ["far away"], "actions": []}]}))
    described = description_examples(space, load_knowledge_base(kb))
    labelled = {text: {space.labels[k] for k in np.flatnonzero(y)} for text, y in zip(described.texts, described.targets)}
    assert described.targets.shape == (len(described.texts), len(space.labels))
    assert labelled["Disk Full"] == {"Disk_Full"} and labelled["Data Loader Stuck"] == {"DataLoader_Stuck"}
    assert labelled[normalize(space.actions["OOM"][0])] == {"OOM"}
    assert labelled["Volume full"] == labelled["no space left on device"] == {"Disk_Full"}
    assert not {"Cosmic ray", "bit flipped", "Elsewhere", "far away"} & set(labelled)
    assert all(labelled.values())


def test_descriptions_join_every_fold_and_the_refit_but_are_never_validated(settings, train_snapshot, monkeypatch):
    from nightshift_models.baselines import baseline_proba
    from pipelines.tasks.failure_rca import (
        configured_knowledge_base,
        configured_label_space,
        description_examples,
        prepare_jobs,
        rca_settings,
        snapshot_jobs,
    )
    from pipelines.training import families
    from pipelines.training.families import Described, fit_families, refit, with_background

    space = configured_label_space(settings)
    described = description_examples(space, configured_knowledge_base(settings))
    merged, y, w = with_background(["job a failed"], np.ones((1, 2)), np.array([2.0]), ["hello"],
                                   Described(("disk full",), np.array([[1.0, 0.0]])))
    assert merged == ["job a failed", "hello", "disk full"] and y.tolist() == [[1, 1], [0, 0], [1, 0]] and w.tolist() == [2, 1, 1]

    data = prepare_jobs(snapshot_jobs(train_snapshot, settings, space), space.labels, settings, "test")
    seen: list[list[str]] = []
    real = families.tfidf_logreg
    monkeypatch.setattr(families, "tfidf_logreg", lambda texts, *a, **k: seen.append(list(texts)) or real(texts, *a, **k))
    texts, params = data.rows["model_text"].tolist(), rca_settings(settings).train
    fits = fit_families(texts, data.targets, data.selection, ("tfidf",), checkpoint="", params=params,
                        tune=lambda y, p: ([0.5] * y.shape[1], {"primary": 0.0}), fit_bert=None, described=described)  # type: ignore[arg-type]
    assert len(fits["tfidf"].val_probs) == len(texts)  # out-of-fold rows are jobs only
    result = refit(fits["tfidf"], texts, data.targets, checkpoint="", params=params, fit_bert=None, described=described)  # type: ignore[arg-type]
    assert len(seen) == len(data.selection.folds) + 1 and all(set(described.texts) <= set(s) for s in seen)
    disk = space.labels.index("Disk_Full")
    p = baseline_proba(result.model, ["Disk Full"])[0]
    assert p.argmax() == disk  # the label's own name now reads as the label


@pytest.mark.parametrize("family", ["embedding"])
def test_the_frozen_encoder_family_trained_on_descriptions_registers_data_only(settings, train_snapshot, tiny_bert, monkeypatch, family):
    """The family that reads meaning (frozen sentence encoder + logistic regression) registers through the same
    pyfunc; the run says how many description examples it trained on and how it chose; the saved head is sklearn
    data only."""
    import mlflow

    from nightshift_models.root_cause_head import OUTPUT_COLUMNS
    from pipelines.config import load_settings
    from pipelines.registry.store import use_store
    from pipelines.tasks.failure_rca import train_failure_rca

    monkeypatch.setenv("NIGHTSHIFT_CANDIDATES_FAMILIES", family)
    out = train_failure_rca(train_snapshot.path, load_settings(), str(tiny_bert)).to_dict()
    assert out["family"] == family
    run = use_store(settings).get_run(use_store(settings).get_model_version("failure-rca", out["version"]).run_id)
    assert run.data.params["selection"] == "template-cv" and int(run.data.params["description_examples"]) > 12
    model = mlflow.pyfunc.load_model(f"models:/failure-rca/{out['version']}")
    pred = model.predict(pd.DataFrame({"message": ["OSError: [Errno 28] No space left on device: '/data/ckpt/run1/model.pt'"]}))
    assert list(pred.columns) == list(OUTPUT_COLUMNS)
    local = Path(mlflow.artifacts.download_artifacts(f"models:/failure-rca/{out['version']}"))
    saved = list(local.rglob("family.joblib"))
    assert len(saved) == 1 and b"nightshift_models" not in saved[0].read_bytes()


def test_without_descriptions_a_night_trains_on_its_jobs_alone(settings, train_snapshot, monkeypatch):
    from pipelines.config import load_settings
    from pipelines.registry.store import use_store
    from pipelines.tasks.failure_rca import train_failure_rca

    monkeypatch.setenv("NIGHTSHIFT_CANDIDATES_FAMILIES", "tfidf")
    monkeypatch.setenv("NIGHTSHIFT_RCA_DESCRIPTION_EXAMPLES", "false")
    out = train_failure_rca(train_snapshot.path, load_settings()).to_dict()
    run = use_store(settings).get_run(use_store(settings).get_model_version("failure-rca", out["version"]).run_id)
    assert run.data.params["description_examples"] == "0"
