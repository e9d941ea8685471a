"""The layout's rules: no import cycles, project imports at module top, a self-contained shipped model package,
and one table of model tasks that the DAG wires completely."""

from __future__ import annotations

import ast
import graphlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "mlflow", "transformers", "great_expectations")  # the only reasons an import may wait inside a function
SHIPPED = "nightshift_models"


def project_modules() -> dict[str, Path]:
    found = {}
    for base, package in ((ROOT, "nightshift"), (ROOT, "pipelines"), (ROOT, "serving"), (ROOT / "models", SHIPPED)):
        for path in (base / package).rglob("*.py"):
            found[".".join(path.relative_to(base).with_suffix("").parts).removesuffix(".__init__")] = path
    return found


MODULES = project_modules()


def owner(name: str) -> str | None:
    """The project module an imported name lives in (`pipelines.registry.store.use_store` -> `pipelines.registry.store`)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports(path: Path, module: str) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(module-level imports, imports inside functions) of one file, as (imported name, line); TYPE_CHECKING blocks skipped."""
    top: list[tuple[str, int]] = []
    lazy: list[tuple[str, int]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                    base = ".".join(package[:len(package) - child.level + 1] + ([base] if base else []))
                names = [base] + [f"{base}.{a.name}" for a in child.names]
            (lazy if in_function else top).extend((n, child.lineno) for n in names)
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(path.read_text()), False)
    return top, lazy


IMPORTS = {m: imports(p, m) for m, p in MODULES.items()}


def pulls_heavy(module: str, seen: set[str] | None = None) -> bool:
    """Whether importing `module` imports torch, mlflow, transformers or Great Expectations (through module-level imports)."""
    seen = seen if seen is not None else set()
    if module in seen:
        return False
    seen.add(module)
    for name, _ in IMPORTS[module][0]:
        if name.split(".")[0] in HEAVY:
            return True
        dep = owner(name)
        if dep and dep != module and pulls_heavy(dep, seen):
            return True
    return False


def test_the_project_has_no_import_cycle_counting_imports_inside_functions():
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, (top, lazy) in IMPORTS.items():
        for name, _ in top + lazy:
            dep = owner(name)
            if dep and dep != module and not module.startswith(dep + "."):  # a submodule's import through its own package
                graph[module].add(dep)
    try:
        list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        raise AssertionError(f"import cycle: {' -> '.join(exc.args[1])}") from None


def test_the_stages_import_in_one_direction_and_the_command_line_drives_both():
    """`serving` reads what `pipelines` writes and may import it; `pipelines` (the offline stages, the DAG's tasks)
    never imports `serving`, nor either the command line: a deployment of the pipelines needs no server."""
    upward = [f"{MODULES[m].relative_to(ROOT)}:{line} imports {name}"
              for m, (top, lazy) in IMPORTS.items() for name, line in top + lazy
              if (m.split(".")[0] == "pipelines" and name.split(".")[0] in ("serving", "nightshift"))
              or (m.split(".")[0] == "serving" and name.split(".")[0] == "nightshift")]
    assert not upward, "\n".join(upward)


def test_project_imports_sit_at_module_top_unless_they_pull_a_heavy_library():
    late = [f"{MODULES[m].relative_to(ROOT)}:{line} imports {name} inside a function"
            for m, (_, lazy) in IMPORTS.items() for name, line in lazy
            if (dep := owner(name)) and dep != m and not pulls_heavy(dep)]
    assert not late, "\n".join(sorted(set(late)))


def test_the_shipped_model_package_imports_nothing_outside_itself_by_reading():
    outside = [f"{MODULES[m].relative_to(ROOT)}:{line} imports {name}"
               for m, (top, lazy) in IMPORTS.items() if m.split(".")[0] == SHIPPED for name, line in top + lazy
               if name.split(".")[0] in ("nightshift", "pipelines", "serving", "models", "dags", "tests", "benchmarks")]
    assert not outside, "\n".join(outside)


def test_the_shipped_model_package_loads_alone_from_a_copy(tmp_path):
    """What `log_model(code_paths=...)` ships, copied on its own, imports module by module with nightshift's other
    packages blocked, and next to an application's own top-level `models` package."""
    copy = tmp_path / "code"
    shutil.copytree(ROOT / "models" / SHIPPED, copy / SHIPPED, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "models").mkdir()
    (copy / "models" / "__init__.py").write_text("APPLICATION = True\n")  # a user's own package called `models`
    names = sorted(m for m in MODULES if m.split(".")[0] == SHIPPED)
    script = f"""
import importlib, importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("nightshift", "pipelines", "serving", "dags"):
            raise ImportError(f"the shipped package imported {{name}}")
sys.meta_path.insert(0, Block())
sys.path.insert(0, {str(copy)!r})
for name in {names!r}:
    module = importlib.import_module(name)
    assert module.__file__.startswith({str(copy)!r}), (name, module.__file__)
import models
assert models.APPLICATION
print("ok", len({names!r}))
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == f"ok {len(names)}"


def test_every_model_task_is_wired_in_the_dag_and_read_from_the_one_table():
    from pipelines.flow import task_id
    from pipelines.tasks import TASKS

    dag_source = (ROOT / "dags" / "nightly_retrain.py").read_text()
    for name in TASKS:
        for step in ("train", "promote"):
            assert f'task_id="{task_id(step, name)}"' in dag_source, f"{name}: no {task_id(step, name)} task in the DAG"
    cli = (ROOT / "nightshift" / "cli.py").read_text()
    literals = [n for n in TASKS if f'"{n}"' in cli]
    assert not literals, f"the CLI spells model names instead of reading pipelines.tasks.TASKS: {literals}"
