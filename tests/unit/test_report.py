"""The night report: `nightshift report --night D` reads the night's summary and MLflow and writes one
self-contained page with each model's decision, reasons, headline numbers, drift and links into the
MLflow UI; a night without a summary is an error that says what to run."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.support.nights import NIGHT, make_night


def text_of(html: str) -> str:
    """The visible text of a page, whitespace collapsed."""
    import html as html_

    return html_.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", re.sub(r"<(script|style).*?</\1>", " ", html, flags=re.S))))


def test_report_command_writes_the_night_with_decisions_numbers_drift_and_mlflow_links(settings, capsys):
    from nightshift.cli import main

    night = make_night(settings)
    assert main(["report", "--night", NIGHT, "--json", "--ui-url", "http://mlflow.example:5000/"]) == 0
    out = json.loads(capsys.readouterr().out)
    path = Path(out["report"])
    assert path == night["summary"].with_name("report.html")
    html = path.read_text()
    text = text_of(html)
    # Each model's decision and why.
    assert "log-anomaly v2 promoted" in text and "failure-rca skipped" in text and "metric-forecast failed" in text
    assert "f1 0.9312 beats the champion's 0.9105 by more than the margin 0.01" in text and "recall within tolerance" in text
    assert "not trained: no labelled failed jobs in the window" in text
    # Headline numbers: validation (candidate, baseline) and holdout (candidate, champion), and their picture.
    assert "candidate, holdout" in text and "champion, holdout" in text and "0.9312" in text and "0.9105" in text and "0.8123" in text
    assert html.count("src='data:image/png;base64,") == 1
    # Drift from the run's report, the aliases now, validation verdicts with their failed check cut short.
    assert "label.anomaly" in text and "0.1432" in text and "label shift" in text and "@champion = v2" in text
    assert "series.nan_ratio" in text and "(432 chars)" in text and "x" * 200 not in text
    # What the night wrote back: the scored window and the root causes of its failed jobs, as the terminal says.
    assert "scored 1500 documents of the fresh window with log-anomaly@champion v2 -> file:///tmp/scored.ndjson" in text
    assert "root causes on 100 documents of 17 failed jobs with failure-rca v1 (38 from the knowledge base)" in text
    # Links into the MLflow UI at the given base.
    ui = "http://mlflow.example:5000/#/"
    exp, run = night["experiment_id"], night["run_id"]
    for href in (f"{ui}models/log-anomaly/versions/2", f"{ui}experiments/{exp}/runs/{run}",
                 f"{ui}experiments/{exp}/runs/{run}/artifacts/drift/report.html",
                 f"{ui}experiments/{exp}/runs/{run}/artifacts/validation/report.html"):
        assert f"href='{href}'" in html, href
    # Self-contained: nothing is fetched from elsewhere.
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=['\"]https?:", html)


def test_report_links_to_the_configured_ui_and_survives_a_model_mlflow_does_not_know(settings, monkeypatch, capsys):
    import dataclasses

    from pipelines.night_report import write_night_report

    night = make_night(settings)
    summary = json.loads(night["summary"].read_text())
    summary["models"]["failure-rca"] = {"model": "failure-rca", "version": "7", "decision": "rejected", "reason": "worse than the champion"}
    night["summary"].write_text(json.dumps(summary))
    path = write_night_report(dataclasses.replace(settings, ui_url="http://ui.internal"), NIGHT)
    text = text_of(path.read_text())
    assert "failure-rca v7 rejected" in text and "worse than the champion" in text and "MLflow: " in text
    assert "http://ui.internal/#/models/log-anomaly/versions/2" in path.read_text()


def test_a_night_without_a_summary_says_what_to_run(settings, capsys):
    from nightshift.cli import main

    assert main(["report", "--night", "2026-01-01"]) == 2
    err = capsys.readouterr().err
    assert "no summary" in err and "nightshift retrain --logical-date 2026-01-01" in err
    assert main(["report", "--night", "yesterday"]) == 2
    assert "expected a date" in capsys.readouterr().err


def test_page_kit_truncates_escapes_and_draws_a_gauge():
    from pipelines.pages import badge, esc, gauge, truncate

    assert truncate("x" * 500, 10) == "xxxxxxxxxx… (500 chars)" and truncate("short") == "short"
    assert esc("<b>") == "&lt;b&gt;" and "status-severe" in badge("severe")
    inside, outside = gauge(0.15, 0.001, 0.5), gauge(0.0, 0.001, 0.5)
    assert "#2e7d32" in inside and "#c62828" in outside and inside.startswith("<svg")


def test_summary_task_helper_returns_the_path_or_none(settings):
    from pipelines.night_report import try_night_report

    assert try_night_report(settings, NIGHT) is None  # no summary yet: logged, not raised
    make_night(settings)
    assert try_night_report(settings, NIGHT).endswith(f"runs/{NIGHT}/report.html")


def test_report_takes_the_latest_night_and_info_refuses_a_missing_store(settings, capsys):
    from nightshift.cli import main

    assert main(["report"]) == 2
    assert "no night has run under" in capsys.readouterr().err
    make_night(settings)
    assert main(["report"]) == 0
    assert f"night report {NIGHT}:" in capsys.readouterr().out


def test_info_on_a_home_without_a_store_says_so_and_creates_nothing(tmp_path, monkeypatch, capsys):
    from nightshift.cli import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("NIGHTSHIFT_HOME", str(tmp_path / "empty"))
    assert main(["info"]) == 2
    err = capsys.readouterr().err
    assert "no MLflow store at" in err and "make demo" in err and err.count("\n") == 1
    assert not (tmp_path / "empty" / "mlflow" / "mlflow.db").exists()
