"""Drift checks on real demo snapshots and on known faults: no false alarm night to night, a log
format change is severe, flipped labels are a label shift, metric level and season changes show."""


import numpy as np
import pytest

from tests.support.drift_cases import flip_labels, json_envelope, metric_snapshot


@pytest.fixture
def windows(settings, corpus, tmp_path):
    from nightshift.cli import parse_time
    from pipelines.data.ingest import ingest_logs

    def snap(start, end):
        return ingest_logs(f"file://{corpus}", parse_time(start), parse_time(end), tmp_path / f"{start}_{end}", settings)

    return snap


@pytest.fixture(scope="module")
def embedder(tiny_bert):
    from nightshift_models.bert import load_classifier
    from pipelines.data.drift import sentence_embedder

    classifier = type("Classifier", (), {})()
    classifier.tokenizer, classifier.model = load_classifier(str(tiny_bert))
    classifier.meta, classifier.device = {"max_length": 64}, "cpu"
    return sentence_embedder(classifier)


def by_name(report):
    return {c["name"]: c for c in report["checks"]}


def test_next_night_window_does_not_drift(settings, windows, embedder):
    from pipelines.data.drift import compare_snapshots

    report = compare_snapshots(windows("2026-11-16", "2026-11-20"), windows("2026-11-17", "2026-11-21"), settings, embedder)
    checks = by_name(report)
    assert set(checks) == {"label.anomaly", "label.root_cause", "message.template", "message.token", "message.length", "message.embedding"}
    assert report["status"] == "none" and report["label_shift"] is False, checks
    assert all(0.0 <= c["p_value"] <= 1.0 for c in checks.values())


def test_log_format_change_is_severe(settings, windows, embedder, tmp_path):
    from pipelines.data.drift import compare_snapshots

    reference = windows("2026-11-16", "2026-11-20")
    report = compare_snapshots(reference, json_envelope(reference, tmp_path / "envelope"), settings, embedder)
    checks = by_name(report)
    assert report["status"] == "severe" and report["label_shift"] is False
    for name in ("message.template", "message.length", "message.embedding"):
        assert checks[name]["status"] == "severe", checks[name]
    assert checks["label.anomaly"]["status"] == "none"
    assert checks["message.length"]["detail"]["median_current"] > checks["message.length"]["detail"]["median_reference"]


def test_flipped_labels_are_a_label_shift(settings, windows, tmp_path):
    from pipelines.data.drift import compare_snapshots

    reference = windows("2026-11-16", "2026-11-20")
    report = compare_snapshots(reference, flip_labels(reference, tmp_path / "flipped"), settings)
    checks = by_name(report)
    assert report["label_shift"] is True and checks["label.anomaly"]["status"] in ("warn", "severe")
    rate = checks["label.anomaly"]["detail"]["anomaly_rate"]
    assert rate["current"] > rate["reference"] + 0.1
    assert checks["message.template"]["status"] == checks["message.length"]["status"] == "none"


def test_metric_value_and_seasonal_drift(settings, tmp_path):
    from pipelines.data.drift import compare_snapshots

    reference = metric_snapshot(tmp_path / "ref", 7)
    same = compare_snapshots(reference, metric_snapshot(tmp_path / "same", 7, seed=1), settings)
    assert same["kind"] == "metrics" and same["status"] == "none", same["checks"]

    level = by_name(compare_snapshots(reference, metric_snapshot(tmp_path / "level", 7, scale=3.0, seed=2), settings))
    assert level["metric.value"]["status"] == "severe"

    season = by_name(compare_snapshots(reference, metric_snapshot(tmp_path / "season", 7, phase_hours=12, seed=3), settings))
    assert season["metric.seasonal"]["status"] == "severe" and season["metric.value"]["status"] == "none"


def test_kinds_must_match_and_report_renders(settings, windows, tmp_path):
    from pipelines.data.drift import compare_snapshots, render_html

    logs = windows("2026-11-16", "2026-11-17")
    with pytest.raises(ValueError, match="both log snapshots"):
        compare_snapshots(logs, metric_snapshot(tmp_path / "m", 1), settings)
    report = compare_snapshots(logs, logs, settings)
    page = render_html({**report, "reason": "<script>x</script>"})
    assert "message.template" in page and ">none<" in page and "<script>x" not in page


def test_thresholds_are_checked(settings, windows):
    import dataclasses

    from pipelines.config import ConfigError
    from pipelines.data.drift import compare_snapshots

    logs = windows("2026-11-16", "2026-11-17")
    bad = dataclasses.replace(settings, drift=dataclasses.replace(settings.drift, length_ks_warn=0.5, length_ks_severe=0.2))
    with pytest.raises(ConfigError, match="drift.length_ks_warn"):
        compare_snapshots(logs, logs, bad)


def test_report_draws_a_picture_per_check_instead_of_json(settings, windows, tmp_path):
    import base64
    import re

    from pipelines.data.drift import compare_snapshots, render_html

    reference = windows("2026-11-16", "2026-11-18")
    logs = compare_snapshots(reference, json_envelope(reference, tmp_path / "envelope"), settings)
    metrics = compare_snapshots(metric_snapshot(tmp_path / "a", 3), metric_snapshot(tmp_path / "b", 3, phase_hours=6, seed=1), settings)
    length = by_name(logs)["message.length"]["detail"]["histogram"]
    assert len(length["edges"]) == 31 and all(abs(sum(length[side]) - 1) < 1e-3 for side in ("reference", "current"))
    profile = by_name(metrics)["metric.seasonal"]["detail"]["profiles"][0]
    assert profile["hours"] == list(range(24)) and len(profile["reference"]) == len(profile["current"]) == 24
    assert len(by_name(metrics)["metric.value"]["detail"]["histograms"]) == 2
    for report in (logs, metrics):
        page = render_html(report)
        images = re.findall(r"src='data:image/png;base64,([^']+)'", page)
        assert len(images) == len(report["checks"])  # one picture per check
        assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
        assert "<pre>" not in page and '"top_moves"' not in page  # no raw JSON
        assert not re.search(r"(src|href)=['\"](https?:)?//", page)
    assert "latency{service=&quot;a&quot;}" in render_html(metrics)  # the worst-series table


def test_embedding_projection_keeps_both_samples_on_two_axes():
    from pipelines.data.drift import projection

    rng = np.random.default_rng(0)
    out = projection(rng.normal(size=(50, 8)), rng.normal(loc=3.0, size=(300, 8)), limit=200)
    assert np.asarray(out["reference"]).shape == (50, 2) and np.asarray(out["current"]).shape == (200, 2)
    assert np.mean(np.asarray(out["current"])[:, 0]) * np.mean(np.asarray(out["reference"])[:, 0]) < 0  # the shift lies on axis 1
