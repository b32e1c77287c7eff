"""The house rules (docs/DESIGN.md, "Where to make a change"): a function fits on a screen (80
lines at most), a module of the library does one job (400 lines at most), and the MLflow modules
are sinks that only they and the entry points reach."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 400
CHECKED = ["src", "pipeline", "benchmarks", "tests"]


def long_functions(path: Path, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """`path:line name (n lines)` for each function or method longer than `limit` lines,
    decorators and docstring included."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            lines = node.end_lineno - first + 1
            if lines > limit:
                found.append(f"{path.name}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_is_longer_than_a_screen():
    found = [
        f"{folder}/{f}"
        for folder in CHECKED
        for path in sorted((REPO / folder).glob("*.py"))
        for f in long_functions(path)
    ]
    assert not found, f"functions over {MAX_FUNCTION_LINES} lines; split them: " + "; ".join(found)


def test_no_library_module_is_over_400_lines():
    sizes = {p.relative_to(REPO): len(p.read_text(encoding="utf-8").splitlines()) for p in (REPO / "src").glob("*.py")}
    over = {str(p): n for p, n in sorted(sizes.items()) if n > MAX_MODULE_LINES}
    assert not over, f"src modules over {MAX_MODULE_LINES} lines (one job each: split them): {over}"


def test_the_check_sees_a_long_function(tmp_path):
    body = "\n".join(f"    x = {i}" for i in range(MAX_FUNCTION_LINES - 1))
    path = tmp_path / "probe.py"
    # f: 81 lines with its decorator; g: 80
    path.write_text(f"@staticmethod\ndef f():\n{body}\n\n\ndef g():\n{body}\n")
    assert [f.split()[1] for f in long_functions(path)] == ["f"]


MLFLOW_MODULES = {
    "src.tracking",
    "src.tracking_wal",
    "src.registry",
    "src.serving",
    "src.served_model",
    "src.mlflow_store",
}
# Entry points over the library that hand a reporter in (stages are in pipeline/, not checked here).
# The tuner (a lost trial ends its run) and the command that sends what a stage kept offline.
MLFLOW_USERS = {"src.tune", "src.study_storage", "src.tracking_sync"}


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, anywhere in it ("from src import x" counts as src.x)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_mlflow_stays_behind_its_modules():
    """Only the MLflow modules import mlflow, and in src/ only they and the tuner (src.tune, src.study_storage)
    imports them: the
    training and model code never sit above a store."""
    for path in sorted((REPO / "src").glob("*.py")):
        name = f"src.{path.stem}"
        imported = imports_of(path)
        if name not in MLFLOW_MODULES:
            assert not any(m == "mlflow" or m.startswith("mlflow.") for m in imported), f"{name} imports mlflow"
        if name not in MLFLOW_MODULES | MLFLOW_USERS:
            assert not imported & MLFLOW_MODULES, f"{name} imports {sorted(imported & MLFLOW_MODULES)}"
