"""dvc.yaml's deps are exact: every repo module a stage imports is a dependency of that stage.

The import closure of `python -m pipeline.<stage>` is followed through the source (ast), across
src.* and pipeline.* modules, including imports inside functions (the served model imports
src.sample only when it loads), so a change to any module a stage runs reruns that stage.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

PACKAGES = ("src", "pipeline")


def module_file(name: str, root: Path = REPO) -> Path | None:
    """The repo file of a dotted module name; None for anything outside src/ and pipeline/."""
    if name.split(".")[0] not in PACKAGES:
        return None
    path = root.joinpath(*name.split("."))
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return None


def imported_modules(path: Path) -> set[str]:
    """Dotted names of every module `path` imports, anywhere in the file; `from src import x`
    names both src and src.x (x may be a module or a name in src/__init__.py)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def closure(module: str, root: Path = REPO) -> set[str]:
    """Repo-relative paths of every repo file `python -m <module>` can import."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        # importing a.b.c runs a/__init__.py and a/b/__init__.py first
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            path = module_file(".".join(parts[:i]), root)
            if path is not None and path not in seen:
                seen.add(path)
                todo.extend(imported_modules(path))
    return {str(p.relative_to(root)) for p in seen}


def stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def dep_files(stage: dict) -> set[str]:
    """The stage's deps, folders expanded to the files under them."""
    files = set()
    for dep in stage.get("deps", []):
        path = REPO / dep
        files.update(str(p.relative_to(REPO)) for p in path.rglob("*.py")) if path.is_dir() else files.add(dep)
    return files


@pytest.mark.parametrize("name", sorted(stages()))
def test_every_imported_module_is_a_dependency(name):
    stage = stages()[name]
    module = stage["cmd"].split("python -m ", 1)[1].split()[0]
    missing = sorted(closure(module) - dep_files(stage))
    assert not missing, f"dvc.yaml stage {name!r} imports {', '.join(missing)} without listing it in deps"


def test_closures_stay_small():
    """A stage imports what it uses: the data stages never reach the model, training never
    reaches the registry or the sampling code, so editing either does not retrain."""
    data_stage = closure("pipeline.corpus") | closure("pipeline.encode") | closure("pipeline.split")
    assert (
        not {"src/model/charrnn.py", "src/training/loop.py", "src/tracking/runs.py", "src/serving/registry.py"}
        & data_stage
    )
    train = closure("pipeline.train")
    assert not {"src/serving/registry.py", "src/generation/sampling.py", "pipeline/register.py"} & train
    assert "src/serving/registry.py" in closure("pipeline.register")
    assert not {"src/serving/pyfunc.py", "src/serving/served_model.py"} & train
    # MLflow runs the served model's code file by path (models from code): no import names it.
    assert "src/serving/served_model.py" in dep_files(stages()["register"])


def test_the_closure_follows_imports_inside_functions(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "__init__.py").write_text("")
    (tmp_path / "src" / "a.py").write_text("def f():\n    from src import b\n")
    (tmp_path / "src" / "b.py").write_text("import src.c as c\n")
    (tmp_path / "src" / "c.py").write_text("import os\n")
    assert closure("src.a", tmp_path) == {"src/__init__.py", "src/a.py", "src/b.py", "src/c.py"}


def test_the_library_never_imports_the_stages():
    """src/ sits below pipeline/: no module of the library (src.tune's entry point included)
    imports a stage module, anywhere in the file."""
    offenders = {
        str(path.relative_to(REPO)): sorted(n for n in imported_modules(path) if n.split(".")[0] == "pipeline")
        for path in sorted((REPO / "src").rglob("*.py"))
    }
    assert not {k: v for k, v in offenders.items() if v}
