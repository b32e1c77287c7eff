"""What every stage shares: the repo's paths (src/utils/repo.py), reading params.yaml, and
turning bad input, a full disk or a signal into one line on stderr and a non-zero exit
(src/utils/faults.py)."""

from __future__ import annotations

import functools
import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

from src.config.schema import Config, config_from_dict
from src.utils import faults, fileio, repo

ROOT = Path(__file__).resolve().parents[1]
FILES = repo.Layout(ROOT)
# The names the stages use, one per file or folder they share.
PARAMS = FILES.params
CORPUS = FILES.corpus
VOCAB = FILES.vocab
ENCODED = FILES.encoded
SPLIT_DIR = FILES.split_dir
MODELS = FILES.models
BEST = FILES.best
LAST = FILES.last
METRICS = FILES.metrics
PLOTS = FILES.plots
SAMPLES = FILES.samples


def load_params(path: Path = PARAMS) -> dict:
    return fileio.read_params(path)


def load_config(path: Path = PARAMS) -> Config:
    return config_from_dict(load_params(path), path.name)


def clear_outputs(*paths: Path) -> None:
    """Remove a stage's previous outputs once its params and inputs are checked, right before the
    real work. dvc.yaml marks them `persist`, so DVC leaves them in place and a stage that fails
    on bad input loses nothing (a fixed typo then reruns nothing); removing them here keeps a run
    that fails or is interrupted later from leaving the previous params' results in place."""
    for path in paths:
        path.unlink(missing_ok=True)


def stage(fn: Callable[[], None]) -> Callable[[], int]:
    """Wrap a stage's main(): bad input or a full disk becomes `error: ...` on stderr and exit
    status 2; SIGTERM is handled like Ctrl-C (one line, exit status 143 or 130)."""

    @functools.wraps(fn)
    def wrapper() -> int:
        return faults.run(fn, _module_name(fn), store=tracking_uri())

    return wrapper


def _module_name(fn: Callable) -> str:
    """`pipeline.train` also when it runs as `python -m pipeline.train` (module __main__)."""
    if fn.__module__ != "__main__":
        return fn.__module__
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    return spec.name if spec is not None else Path(sys.argv[0]).stem


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else the main repo's mlflow.db (src/utils/repo.py)."""
    return repo.tracking_uri(os.environ, ROOT)


def main_repo_root() -> Path:
    """This checkout, or the repo whose DVC experiment copy it is (src/utils/repo.py)."""
    return repo.main_repo_root(ROOT)


def run_context(*data_files: Path) -> dict:
    """What the training run records about where it came from (None: not known here)."""
    return {
        "git_commit": git_commit(),
        # Set by `dvc exp run` (queued, --temp or in the workspace); it names the MLflow run too.
        "dvc_exp_name": os.environ.get("DVC_EXP_NAME"),
        "data_hash": files_sha256(data_files),
    }


def run_name(context: dict) -> str:
    """The MLflow run's name: the DVC experiment's, else `<short commit> repro` (plain `dvc repro`)."""
    if context.get("dvc_exp_name"):
        return context["dvc_exp_name"]
    commit = context.get("git_commit")
    return f"{commit[:7]} repro" if commit else "repro"


def file_md5(path: Path) -> str:
    """DVC 3's hash of a file (`md5` in dvc.lock): plain MD5 of its bytes."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None  # not a git checkout, no commit yet, or no git
    return out.stdout.strip() or None


def files_sha256(paths) -> str:
    """One SHA-256 over the files' names and bytes: which data a run was trained on."""
    h = hashlib.sha256()
    for path in paths:
        h.update(Path(path).name.encode() + b"\0")
        with open(path, "rb") as f:  # in blocks: a split of a large corpus is never read whole
            for block in iter(lambda: f.read(1 << 24), b""):
                h.update(block)
    return h.hexdigest()
