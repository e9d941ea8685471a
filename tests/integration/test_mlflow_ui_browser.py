"""What a data scientist sees in MLflow, in a real browser: a real `mlflow server` holds two log-anomaly versions
trained with the tiny BERT on two nights and judged by the night's gate on that night's fresh holdout (the first
one unopposed, the second against it); Debian's Chromium, headless, runs the MLflow UI (a React app: the DOM
is dumped after the app has fetched and rendered) on each version's page. The decision, the reasons, the
aliases, the holdout table and the links to the run's reports must be on the page; a screenshot is taken
(NIGHTSHIFT_WRITE_DOCS=1 keeps it as docs/mlflow-version-page.png)."""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tests.support.mlflow_server import mlflow_server

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium")
NAME = "log-anomaly"
# Two nights of the demo corpus: v1 learns from one day and is judged on the next; v2 learns from four days and is
# judged, against v1, on the day after them (the windows of tests/integration/test_promotion.py, where v2 wins).
NIGHTS = {"2026-11-18": ("2026-11-16", "2026-11-17", "2026-11-18"), "2026-11-21": ("2026-11-16", "2026-11-20", "2026-11-21")}


def visible_text(dom: str) -> str:
    """The text a person reads on a page: tags, styles and scripts dropped, entities decoded, white space folded."""
    import html

    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", re.sub(r"<(style|script)[^>]*>.*?</\1>", " ", dom, flags=re.S))))


def image_of(path: Path) -> np.ndarray:
    """A PNG as an (height, width, 3) uint8 array."""
    from matplotlib.image import imread

    return (imread(path, format="png")[..., :3] * 255).round().astype(np.uint8)


def ui(url: str, profile: Path, *, screenshot: Path | None = None, size: str = "1400,1500", budget_ms: int = 30000) -> str:
    """Open `url` (an MLflow UI page) in headless Chromium and let the app render within `budget_ms` of virtual time
    (it waits for the app's requests): the DOM it built (`--dump-dom`), or "" after writing `screenshot`.

    Raises:
        subprocess.CalledProcessError: Chromium failed.
    """
    if CHROMIUM is None:  # a missing browser is a failure, not a skip
        pytest.fail("Debian's chromium is not installed: `make system-deps` installs it")
    # --no-sandbox: the tests may run as root (CI containers), where Chromium's sandbox refuses to start.
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
           f"--user-data-dir={profile}", f"--window-size={size}", f"--virtual-time-budget={budget_ms}"]
    cmd += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    done = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=240, check=True)
    return done.stdout


@pytest.fixture(scope="module")
def store(corpus, tiny_bert, tmp_path_factory):
    """The server-backed store after two nights: v1 (first version, judged on its night's holdout), v2 (gated)."""
    from nightshift.cli import parse_time
    from pipelines.config import load_settings
    from pipelines.data.ingest import ingest_logs
    from pipelines.data.validation import validate_snapshot
    from pipelines.flow import gate_candidate
    from pipelines.registry.store import use_store
    from pipelines.tasks.log_anomaly import train_log_anomaly

    tmp = tmp_path_factory.mktemp("mlflow-ui")
    with mlflow_server(tmp / "server") as url, pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        mp.delenv("NIGHTSHIFT_CONFIG", raising=False)
        for key, value in {"NIGHTSHIFT_HOME": str(tmp / "home"), "MLFLOW_TRACKING_URI": url, "NIGHTSHIFT_USER": "data-scientist",
                           "NIGHTSHIFT_TRAIN_EPOCHS": "3", "NIGHTSHIFT_TRAIN_LEARNING_RATE": "0.003", "NIGHTSHIFT_TRAIN_BATCH_SIZE": "32",
                           "NIGHTSHIFT_DRIFT_EMBEDDING_SAMPLE": "120", "NIGHTSHIFT_CANDIDATES_TEMPLATE_HOLDOUT": "0"}.items():
            mp.setenv(key, value)
        settings = load_settings()
        outcomes = {}
        for night, (start, end, fresh_end) in NIGHTS.items():
            train = ingest_logs(f"file://{corpus}", parse_time(start), parse_time(end), settings.snapshot_root / "logs" / night, settings)
            validate_snapshot(train.path, "logs", settings)  # as the night does: its report goes on the run
            fresh = ingest_logs(f"file://{corpus}", parse_time(end), parse_time(fresh_end), settings.snapshot_root / "logs-fresh" / night,
                                settings, dataset="logs-fresh")
            candidate = train_log_anomaly(train.path, settings, str(tiny_bert)).to_dict()
            outcomes[night] = gate_candidate(NAME, candidate, str(fresh.path), settings)
        yield SimpleNamespace(url=url, client=use_store(settings), outcomes=outcomes)


def run_of(store, version: str):
    return store.client.get_run(store.client.get_model_version(NAME, version).run_id)


def test_the_version_page_tells_the_story(store, tmp_path):
    first, second = store.outcomes["2026-11-18"], store.outcomes["2026-11-21"]
    assert (first["version"], first["decision"]) == ("1", "promoted")
    assert (second["version"], second["decision"]) == ("2", "promoted"), second["promotion"]["reason"]
    profile = tmp_path / "chromium-profile"

    # v2: promoted over v1 on the night's holdout.
    dom = ui(f"{store.url}/#/models/{NAME}/versions/2", profile)
    text = visible_text(dom)
    assert "Promoted: v2 is the champion, replacing v1" in text, text[:3000]
    assert "Decided by data-scientist" in text and "validation passed" in text
    assert re.search(r"f1 \d\.\d{4} vs champion \d\.\d{4}: beats it", text) and "guard pr_auc" in text  # one reason per line
    # the aliases, as the UI shows them: v2 is the champion and waits for no gate any more
    assert re.search(r"@\s*champion", text) and not re.search(r"@\s*challenger", text)
    # the holdout table, rendered from the markdown: this version, the champion and the TF-IDF baseline
    tables = re.findall(r"<table.*?</table>", dom, flags=re.S)
    holdout = next((t for t in tables if "tfidf (baseline)" in t), None)
    assert holdout is not None, tables
    cells = visible_text(holdout)
    assert "v2 (this version)" in cells and "v1 (champion)" in cells and "f1 (primary)" in cells and "pr_auc (guard)" in cells
    run = run_of(store, "2")
    assert f"{run.data.metrics['holdout_f1']:.4f}" in cells and f"{run.data.metrics['holdout_champion_f1']:.4f}" in cells
    # links into the run's reports, and the reports are there
    links = dict(re.findall(r'<a[^>]*href="([^"]*artifactPath/[^"]+)"[^>]*>([^<]+)</a>', dom))
    assert {"validation report", "drift report", "decision record"} <= set(links.values()), links
    for href in links:
        path = href.split("/artifactPath/", 1)[1]
        assert href.startswith(f"#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}/")
        query = urllib.parse.urlencode({"path": path, "run_uuid": run.info.run_id})
        with urllib.request.urlopen(f"{store.url}/get-artifact?{query}", timeout=30) as answer:
            assert answer.status == 200 and answer.read(1)

    # a picture of the training report, served by the tracking server
    image = re.search(r'<img[^>]*src="([^"]*get-artifact[^"]*)"', dom)  # the UI's sanitizer keeps src only
    assert image, "no report picture on the page"
    src = html.unescape(image[1])
    with urllib.request.urlopen(f"{store.url}/{src}", timeout=30) as answer:
        assert answer.status == 200 and answer.read(8) == b"\x89PNG\r\n\x1a\n"

    # a link opens the report in the run's artifact view
    drift = next(href for href, label in links.items() if label == "drift report")
    assert "report.html" in visible_text(ui(f"{store.url}/{drift}", profile))

    # v1: the first champion, judged on its own night's holdout all the same, now `previous`
    text = visible_text(ui(f"{store.url}/#/models/{NAME}/versions/1", profile))
    assert "Promoted: v1 is the first champion" in text and re.search(r"@\s*previous", text)
    assert "judged on the fresh holdout for the record" in text and "tfidf (baseline)" in text
    assert "holdout_f1" in run_of(store, "1").data.metrics

    # the runs say which night, which data and which code
    assert run.info.run_name == "log-anomaly night 2026-11-21" and run_of(store, "1").info.run_name == "log-anomaly night 2026-11-18"
    assert {i.dataset.name for i in run.inputs.dataset_inputs} == {"logs/2026-11-21", "logs/2026-11-21#validation", "logs-fresh/2026-11-21"}
    run_page = re.search(r'<a[^>]*href="(#/experiments/[^"/]+/runs/[^"/]+)"[^>]*>training run</a>', dom)
    assert run_page, "no link to the training run"
    text = visible_text(ui(f"{store.url}/{run_page[1]}", profile))
    # its overview names the night, shows the training snapshot in the Datasets panel (the validation split and the holdout behind "+2") and the code version
    about = text[text.find("About this run"):]
    assert "log-anomaly night 2026-11-21" in text and re.search(r"Datasets logs/2026-11-21 \(\w{36}\) training \+2", about), about
    assert f"code.version : {run.data.tags['code.version']}" in about

    # a screenshot of v2's page, kept in docs/ when asked
    shot = tmp_path / "mlflow-version-page.png"
    ui(f"{store.url}/#/models/{NAME}/versions/2", profile, screenshot=shot)
    pixels = image_of(shot)
    assert pixels.shape[:2] == (1500, 1400) and pixels.std() > 10  # not a blank page
    assert (np.abs(pixels.astype(int) - 255).sum(axis=2) > 60).mean() > 0.02  # text and tables were painted
    if os.environ.get("NIGHTSHIFT_WRITE_DOCS") == "1":
        shutil.copyfile(shot, ROOT / "docs" / "mlflow-version-page.png")
