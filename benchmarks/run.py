"""`make bench`: run every benchmarks/bench_*.py, write results.json and the tables of docs/benchmarks.md.

Each module exposes `run(quick: bool = False) -> list[dict]` with rows
`{name, value, unit, baseline, baseline_value, ratio}`, each measured against its baseline in the
same run, on the same machine and data. A row may add `section` (its own table under that heading,
e.g. "Real data") and `extra` ({column: number}: more columns of that table). The runner adds `module` and the
`date` of the run to every row.

The tables replace what lies between the page's markers `<!-- bench:start -->` and `<!-- bench:end -->`; the prose
around them is the page's own.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DOCS_PAGE = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
sys.path.insert(0, str(ROOT))  # pipelines, serving, and tests.support (the fakes and real servers the tests use)


def discover(only: list[str] | None) -> list[Path]:
    files = sorted(HERE.glob("bench_*.py"))
    return [f for f in files if not only or any(o in f.stem for o in only)]


def load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_module(path: Path, quick: bool) -> list[dict]:
    """One module in its own process: MLflow's store, torch's threads and the peak RSS of one
    benchmark never carry over into the next."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [sys.executable, __file__, "--one", str(path), "--out", out.name] + (["--quick"] if quick else [])
        subprocess.run(cmd, check=True)
        return json.loads(Path(out.name).read_text())


def table(rows: list[dict]) -> str:
    extra = list(dict.fromkeys(k for r in rows for k in r.get("extra", {})))
    out = ["| benchmark | value | baseline | baseline value | ratio |" + "".join(f" {k} |" for k in extra), "|---|---|---|---|---|" + "---|" * len(extra)]
    for r in rows:
        cells = "".join(f" {r['extra'][k]:.3g} |" if k in r.get("extra", {}) else " |" for k in extra)
        out.append(f"| {r['name']} | {r['value']:.4g} {r['unit']} | {r['baseline']} | {r['baseline_value']:.4g} {r['unit']} | {r['ratio']:.3g} |{cells}")
    return "\n".join(out)


def tables(rows: list[dict]) -> str:
    """The main table, then one table per `section` under its own heading."""
    sections = list(dict.fromkeys(r["section"] for r in rows if r.get("section")))
    parts = [table([r for r in rows if not r.get("section")])]
    parts += [f"### {name}\n\n{table([r for r in rows if r.get('section') == name])}" for name in sections]
    return "\n\n".join(parts)


def heading(rows: list[dict], meta: dict) -> str:
    """The line above the tables: the run's date and machine, and the modules whose rows an `--only` run kept."""
    line = f"Latest `make bench` ({meta['date']}, {meta['machine']})"
    kept = dict.fromkeys(f"{r['module']} ({r.get('date') or 'date not recorded'})"
                         for r in rows if r.get("module") and r.get("date") != meta["date"])
    return line + (f"; rows of modules not in that run keep their last values: {', '.join(kept)}:" if kept else ":")


def update_page(rows: list[dict], meta: dict, page: Path = DOCS_PAGE) -> None:
    """Write the tables between the page's markers, keeping the text around them (markers missing: at its end)."""
    block = f"{START}\n{heading(rows, meta)}\n\n{tables(rows)}\n{END}"
    text = page.read_text() if page.is_file() else "# Benchmarks\n"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    page.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="substrings of benchmark module names")
    parser.add_argument("--quick", action="store_true", help="smaller inputs, for a smoke run")
    parser.add_argument("--no-docs", "--no-readme", dest="no_docs", action="store_true",
                        help="leave docs/benchmarks.md as it is (results.json is written all the same)")
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # internal: run one module, rows to --out
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        args.out.write_text(json.dumps(load(args.one).run(quick=args.quick)))
        return 0
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores, CPU"}
    rows: list[dict] = []
    for path in discover(args.only):
        started = time.perf_counter()
        print(f"== {path.stem}", flush=True)
        for row in run_module(path, args.quick):
            row = {**row, "module": path.stem, "date": meta["date"]}
            rows.append(row)
            more = "".join(f", {k} {v:.3g}" for k, v in row.get("extra", {}).items())
            print(f"   {row['name']}: {row['value']:.4g} {row['unit']} vs {row['baseline']} {row['baseline_value']:.4g} -> ratio {row['ratio']:.3g}{more}",
                  flush=True)
        print(f"   ({time.perf_counter() - started:.0f}s)", flush=True)
    results = HERE / "results.json"
    if args.only and results.exists():  # keep the other modules' latest rows
        kept = [r for r in json.loads(results.read_text()) if r.get("module") not in {r["module"] for r in rows}]
        rows = kept + rows
    results.write_text(json.dumps(rows, indent=2))
    if not args.no_docs:
        update_page(rows, meta)
    print(tables(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
