"""The README is a guide and docs/ the reference: links between them resolve, docs/cli.md lists every option of
every command, and `make bench` writes its tables into docs/benchmarks.md only."""

from __future__ import annotations

import argparse
import importlib.util
import re
from pathlib import Path

import pytest

from nightshift.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown page (code blocks skipped)."""
    found: set[str] = set()
    fenced = False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            found.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return found


def sections(page: Path) -> dict[str, str]:
    """The page's `## ` sections by title."""
    parts = re.split(r"^## (.+)$", page.read_text(), flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def load_bench_runner():
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "benchmarks" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_states_the_two_commands_and_links_the_reference():
    text = README.read_text()
    assert "make demo" in text and "make test" in text
    for page in ("cli.md", "configuration.md", "data-formats.md", "models.md", "benchmarks.md", "deployment.md",
                 "architecture.md"):
        assert f"docs/{page}" in text, page


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_and_anchor_resolves(page):
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):  # http(s):, mailto:
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name}: {target} does not exist"
        if anchor and linked.suffix == ".md":
            assert anchor in anchors(linked), f"{page.name}: no heading #{anchor} in {linked.name}"


def test_no_tracked_file_names_a_work_item():
    """The project speaks to its users: code, comments, docs and tests say what a thing is, not which work item
    brought it (the git log keeps that)."""
    import subprocess

    tracked = subprocess.run(["git", "ls-files", "*.py", "*.md", "*.yml", "*.yaml", "*.toml", "*.j2", "Makefile"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    assert tracked, "git ls-files found nothing"
    named = [f"{path}:{n}" for path in tracked for n, line in enumerate((ROOT / path).read_text().splitlines(), 1)
             if re.search(r"\bissues?\s+#?\d+", line, re.IGNORECASE)]
    assert not named, named


def subcommands(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    """Every leaf command (`ingest logs`, `serve`, ...) and its parser."""
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.update(subcommands(sub, f"{prefix}{name} "))
    return found or {prefix.strip(): parser}


def test_the_cli_page_lists_every_command_and_option():
    documented = sections(DOCS / "cli.md")
    for name, parser in subcommands(build_parser()).items():
        title = f"`nightshift {name}`"
        assert title in documented, f"docs/cli.md has no section {title}"
        for action in parser._actions:
            for option in action.option_strings:
                if option.startswith("--") and option not in ("--help", "--json"):
                    assert option in documented[title], f"docs/cli.md, {title}: option {option} is not described"


def test_make_bench_writes_its_tables_between_the_markers_of_the_benchmarks_page(tmp_path):
    runner = load_bench_runner()
    page = tmp_path / "benchmarks.md"
    page.write_text(f"# Benchmarks\n\nbefore\n\n{runner.START}\nold table\n{runner.END}\n\nafter\n")
    readme_before = README.read_text()
    rows = [{"name": "a thing", "value": 2.0, "unit": "s", "baseline": "another", "baseline_value": 4.0, "ratio": 0.5},
            {"name": "real", "value": 1.0, "unit": "F1", "baseline": "ref", "baseline_value": 1.0, "ratio": 1.0,
             "section": "Real data", "extra": {"MASE": 1.5}}]
    runner.update_page(rows, {"date": "2026-12-06", "machine": "x86_64, 2 cores, CPU"}, page)
    text = page.read_text()
    assert text.startswith("# Benchmarks\n\nbefore\n\n") and text.endswith("\n\nafter\n")
    assert "old table" not in text and "| a thing | 2 s | another | 4 s | 0.5 |" in text
    assert "### Real data" in text and "Latest `make bench` (2026-12-06, x86_64, 2 cores, CPU)" in text
    assert README.read_text() == readme_before


def test_the_benchmarks_page_holds_one_pair_of_markers_and_the_readme_none():
    runner = load_bench_runner()
    text = (DOCS / "benchmarks.md").read_text()
    assert text.count(runner.START) == 1 and text.count(runner.END) == 1
    assert text.index(runner.START) < text.index(runner.END)
    assert runner.START not in README.read_text()
    assert runner.DOCS_PAGE == DOCS / "benchmarks.md"


def test_the_line_above_the_tables_names_the_modules_an_only_run_kept():
    runner = load_bench_runner()
    meta = {"date": "2026-12-07", "machine": "x86_64, 2 cores, CPU"}
    rows = [{"module": "bench_new", "date": "2026-12-07"}, {"module": "bench_old", "date": "2026-11-30"},
            {"module": "bench_old", "date": "2026-11-30"}, {"module": "bench_undated"}]
    assert runner.heading(rows, meta) == ("Latest `make bench` (2026-12-07, x86_64, 2 cores, CPU); rows of modules not in "
                                          "that run keep their last values: bench_old (2026-11-30), bench_undated (date not recorded):")
    assert runner.heading(rows[:1], meta) == "Latest `make bench` (2026-12-07, x86_64, 2 cores, CPU):"
