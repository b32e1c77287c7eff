"""The house rules (docs/DESIGN.md, "Where to make a change"): a function fits on a screen (80
lines at most), a module of the library does one job (400 lines at most), each package of src/
imports only the packages below it, MLflow stays behind the tracking and serving packages, only
the commands and stages read the environment and argv, and only src/utils/faults.py writes the
`error: ` line."""

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
                where = path.relative_to(REPO) if path.is_relative_to(REPO) else path.name
                found.append(f"{where}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_is_longer_than_a_screen():
    found = [f for folder in CHECKED for path in sorted((REPO / folder).rglob("*.py")) for f in long_functions(path)]
    assert not found, f"functions over {MAX_FUNCTION_LINES} lines; split them: " + "; ".join(found)


def test_no_library_module_is_over_400_lines():
    sizes = {p.relative_to(REPO): len(p.read_text(encoding="utf-8").splitlines()) for p in (REPO / "src").rglob("*.py")}
    over = {str(p): n for p, n in sorted(sizes.items()) if n > MAX_MODULE_LINES}
    assert not over, f"src modules over {MAX_MODULE_LINES} lines (one job each: split them): {over}"


def test_the_check_sees_a_long_function(tmp_path):
    body = "\n".join(f"    x = {i}" for i in range(MAX_FUNCTION_LINES - 1))
    path = tmp_path / "probe.py"
    # f: 81 lines with its decorator; g: 80
    path.write_text(f"@staticmethod\ndef f():\n{body}\n\n\ndef g():\n{body}\n")
    assert [f.split()[1] for f in long_functions(path)] == ["f"]


# The packages of src/ and the packages each may import: a layered house, no cycles. The
# entry points (src/<tool>.py, `python -m src.<tool>`) sit on top and may import any package.
LAYERS = {
    "utils": set(),
    "data": {"utils"},
    "model": {"data", "utils"},
    "config": {"model", "utils"},  # the cell names come from the registry (src.model.cells)
    "training": {"config", "data", "model", "utils"},
    "generation": {"config", "data", "model", "utils"},
    "tracking": {"config", "training", "utils"},
    "serving": {"data", "generation", "model", "tracking", "utils"},
    "tuning": {"config", "data", "model", "tracking", "training", "utils"},
}
# MLflow is imported only in these packages; elsewhere only these modules import them.
MLFLOW_PACKAGES = {"src.tracking", "src.serving"}
MLFLOW_USERS = {
    "src.sample",
    "src.ui",
    "src.tune",
    "src.tracking_sync",
    "src.tracking_server",
    "src.tuning.runner",
    "src.tuning.storage",
}


def module_name(path: Path, root: Path = REPO) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


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


def layer_violations(root: Path = REPO) -> list[str]:
    """`module imports src.pkg...` for each import of a package its own package may not use."""
    found = []
    for path in sorted((root / "src").rglob("*.py")):
        name = module_name(path, root)
        parts = name.split(".")
        if len(parts) < 3 and not (root / "src" / parts[-1]).is_dir():
            continue  # src/__init__.py and the entry points
        own = parts[1]
        allowed = LAYERS.get(own)
        if allowed is None:
            found.append(f"{name}: package src.{own} is not in LAYERS; add it with what it may import")
            continue
        for imported in sorted(imports_of(path)):
            bits = imported.split(".")
            if bits[0] == "src" and len(bits) > 1 and bits[1] in LAYERS and bits[1] != own and bits[1] not in allowed:
                found.append(f"{name} imports {imported}")
    return found


def test_each_package_imports_only_the_packages_below_it():
    found = layer_violations()
    assert not found, "a package reaches above its layer (move the code or change LAYERS in docs too): " + "; ".join(
        found
    )


def test_the_layers_have_no_cycle():
    done: set[str] = set()

    def visit(pkg: str, path: tuple[str, ...]) -> None:
        assert pkg not in path, f"a cycle of packages: {' -> '.join(path + (pkg,))}"
        if pkg not in done:
            for below in LAYERS[pkg]:
                visit(below, path + (pkg,))
            done.add(pkg)

    for pkg in LAYERS:
        visit(pkg, ())


def test_the_layer_check_sees_an_import_from_above(tmp_path):
    for rel, text in {
        "src/__init__.py": "",
        "src/data/__init__.py": "",
        "src/data/corpus.py": "def f():\n    from src.training import loop\n",
        "src/data/vocab.py": "from src.utils import errors\n",
    }.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert layer_violations(tmp_path) == [
        "src.data.corpus imports src.training",
        "src.data.corpus imports src.training.loop",
    ]


def test_mlflow_stays_behind_its_packages():
    """Only the tracking and serving packages import mlflow, and in src/ only the entry points and
    the tuner import them: the training and model code never sit above a store."""
    for path in sorted((REPO / "src").rglob("*.py")):
        name = module_name(path)
        imported = imports_of(path)
        inside = any(name == p or name.startswith(p + ".") for p in MLFLOW_PACKAGES)
        if not inside:
            assert not any(m == "mlflow" or m.startswith("mlflow.") for m in imported), f"{name} imports mlflow"
        if not inside and name not in MLFLOW_USERS:
            reached = {m for m in imported if any(m == p or m.startswith(p + ".") for p in MLFLOW_PACKAGES)}
            assert not reached, f"{name} imports {sorted(reached)}"


# What only a command's or a stage's main() reads: the library takes them as arguments.
PROCESS_INPUTS = {("os", "environ"), ("os", "environb"), ("os", "getenv"), ("os", "putenv"), ("sys", "argv")}


def process_input_reads(root: Path = REPO) -> list[str]:
    """`module:line os.environ` for each read of the environment or argv inside a package of src/
    (src/<package>/...); the commands (src/<tool>.py) and pipeline/ may read them."""
    found = []
    for path in sorted((root / "src").glob("*/**/*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                pair = (node.value.id, node.attr)
            elif isinstance(node, ast.ImportFrom) and node.module in ("os", "sys"):
                pair = next(
                    ((node.module, a.name) for a in node.names if (node.module, a.name) in PROCESS_INPUTS), None
                )
            else:
                continue
            if pair in PROCESS_INPUTS:
                found.append(f"{module_name(path, root)}:{node.lineno} {'.'.join(pair)}")
    return found


def test_the_packages_read_no_environment_and_no_argv():
    found = process_input_reads()
    assert not found, (
        "a package of src/ reads the process's environment or argv; read it in the command's or "
        "stage's main() and pass it down: " + "; ".join(found)
    )


def test_the_environment_check_sees_a_read(tmp_path):
    for rel, text in {
        "src/tune.py": "import os\nURI = os.environ.get('X')\n",  # a command: allowed
        "src/tracking/store.py": "import os\n\ndef uri():\n    return os.environ['MLFLOW_TRACKING_URI']\n",
        "src/tuning/processes.py": "from sys import argv\n",
        "src/utils/repo.py": "import os\n\ndef home():\n    return os.getenv('HOME')\n",
    }.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert process_input_reads(tmp_path) == [
        "src.tracking.store:4 os.environ",
        "src.tuning.processes:1 sys.argv",
        "src.utils.repo:4 os.getenv",
    ]


def error_line_writers(root: Path = REPO) -> list[str]:
    """`path:line` for each string that starts an `error: ` line outside src/utils/faults.py."""
    found = []
    for folder in ("src", "pipeline"):
        for path in sorted((root / folder).rglob("*.py")):
            if path.relative_to(root) == Path("src/utils/faults.py"):
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                first = node.values[0] if isinstance(node, ast.JoinedStr) and node.values else node
                if (
                    isinstance(first, ast.Constant)
                    and isinstance(first.value, str)
                    and first.value.startswith("error: ")
                ):
                    found.append(f"{path.relative_to(root)}:{node.lineno}")
    return sorted(set(found))


def test_every_command_and_stage_ends_in_one_line_through_faults_run():
    """Bad input is raised as KarnnaError and worded once, by src.utils.faults.run, which every
    stage (pipeline/common.py `stage`) and every command's main() goes through."""
    found = error_line_writers()
    assert not found, "an `error: ` line written outside src/utils/faults.py; raise KarnnaError instead: " + "; ".join(
        found
    )
