"""`make bench`: run every benchmarks/bench_*.py, write results.json and the README table.

Each module exposes `run(quick: bool = False) -> list[dict]` with rows
`{name, value, unit, baseline, baseline_value, ratio}`, each measured against its baseline in the
same run, on the same machine and data. A row may add `section` (its own table under that heading,
e.g. "Real data") and `extra` ({column: number}: more columns of that table).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # pipelines, serving, and tests.support (the fakes and real servers the tests use)


def discover(only: list[str] | None) -> list[Path]:
    files = sorted(HERE.glob("bench_*.py"))
    return [f for f in files if not only or any(o in f.stem for o in only)]


def load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
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


def update_readme(rows: list[dict], meta: dict) -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    block = (f"<!-- bench:start -->\nLatest `make bench` ({meta['date']}, {meta['machine']}):\n\n{tables(rows)}\n<!-- bench:end -->")
    readme.write_text(re.sub(r"<!-- bench:start -->.*?<!-- bench:end -->", block, text, flags=re.S))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="substrings of benchmark module names")
    parser.add_argument("--quick", action="store_true", help="smaller inputs, for a smoke run")
    parser.add_argument("--no-readme", action="store_true")
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # internal: run one module, rows to --out
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        args.out.write_text(json.dumps(load(args.one).run(quick=args.quick)))
        return 0
    rows: list[dict] = []
    for path in discover(args.only):
        started = time.perf_counter()
        print(f"== {path.stem}", flush=True)
        for row in run_module(path, args.quick):
            row = {**row, "module": path.stem}
            rows.append(row)
            more = "".join(f", {k} {v:.3g}" for k, v in row.get("extra", {}).items())
            print(f"   {row['name']}: {row['value']:.4g} {row['unit']} vs {row['baseline']} {row['baseline_value']:.4g} -> ratio {row['ratio']:.3g}{more}",
                  flush=True)
        print(f"   ({time.perf_counter() - started:.0f}s)", flush=True)
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores, CPU"}
    results = HERE / "results.json"
    if args.only and results.exists():  # keep the other modules' latest rows
        kept = [r for r in json.loads(results.read_text()) if r.get("module") not in {r["module"] for r in rows}]
        rows = kept + rows
    results.write_text(json.dumps(rows, indent=2))
    if not args.no_readme:
        update_readme(rows, meta)
    print(tables(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
