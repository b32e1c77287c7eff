"""Shared fixtures: tiny texts and tiny configs, so the whole suite runs in minutes on 2 cores."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from src.config.schema import config_from_dict
from src.data.splits import split_ids
from src.data.vocab import build_vocab
from src.training.report import Reporter

# Tiny models gain nothing from a second thread, and on a busy 2-core machine OpenMP threads
# spin-waiting on each other slow them down by 10-100x. Subprocesses get the same via _env().
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED_CORPUS = REPO.parent / "shared" / "data" / "anna.txt"

TINY_TEXT = (
    "Happy families are all alike; every unhappy family is unhappy in its own way.\n"
    "Everything was in confusion in the Oblonskys' house. The wife had discovered\n"
    "that the husband was carrying on an intrigue with a French girl, who had been\n"
    "a governess in their family, and she had announced to her husband that she\n"
    "could not go on living in the same house with him.\n"
) * 8


def tiny_params(**overrides: dict) -> dict:
    """A params.yaml-shaped dict for a model that trains in about a second."""
    params = {
        "data": {"newline": "lf"},
        "split": {"val_fraction": 0.2},
        "model": {"embedding_dim": 8, "lstm_size": 32, "num_layers": 2, "dropout": 0.0},
        "train": {
            "batch_size": 4,
            "seq_len": 16,
            "lr": 1.0e-2,
            "epochs": 2,
            "max_steps": 30,
            "eval_interval": 10,
            "device": "cpu",
            "precision": "fp32",
            "log_interval": 5,
            # one thread, not a share of the cores (train.num_threads: auto): see torch.set_num_threads above
            "num_threads": 1,
        },
        "evaluate": {"rows": 4, "chunk_len": 32},
        "sample": {"length": 50},
        "tracking": {"enabled": False},
    }
    for section, values in overrides.items():
        params.setdefault(section, {}).update(values)
    return params


@pytest.fixture
def tiny_config():
    return config_from_dict(tiny_params())


@pytest.fixture
def tiny_data():
    vocab = build_vocab(TINY_TEXT, "lf")
    split = split_ids(vocab.encode(TINY_TEXT), 0.2, 0.0)
    return vocab, split.train, split.val


class Crash(Exception):
    pass


class CrashAt(Reporter):
    """Raises at the first report at or after `step`, like a crash in the middle of training."""

    def __init__(self, step: int):
        self.step = step

    def log_metrics(self, metrics, step):
        if step >= self.step:
            raise Crash(f"crash at {step}")


def assert_no_temp_files(folder: Path) -> None:
    leftovers = [p for p in folder.rglob("*.tmp")]
    assert not leftovers, f"half-written files left behind: {leftovers}"


@pytest.fixture
def rng():
    return np.random.default_rng(0)


BIN = Path(sys.executable).parent


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env["OMP_NUM_THREADS"] = "1"
    return env


def sh(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def write_params(repo: Path, params: dict) -> None:
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture
def stage_repo(tmp_path) -> Path:
    """A copy of the project's code and a tiny params.yaml, enough to run stages by hand."""
    root = tmp_path / "repo"
    root.mkdir()
    for name in ("src", "pipeline"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(REPO / name, root / name)
    if SHARED_CORPUS.is_file():
        corpus = SHARED_CORPUS.read_bytes()[:60_000]
    else:
        corpus = (TINY_TEXT * 30).encode()
    (tmp_path / "corpus.txt").write_bytes(corpus)
    # The repo's own params.yaml (DVC wants every key that dvc.yaml names), made tiny.
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    tiny = tiny_params(
        data={"path": str(tmp_path / "corpus.txt")},
        train={"max_steps": 40, "eval_interval": 20, "batch_size": 8, "seq_len": 32},
        sample={"length": 100, "prime": "The"},
    )
    for section, values in tiny.items():
        params[section].update(values)
    write_params(root, params)
    return root


@pytest.fixture
def repo(stage_repo) -> Path:
    """The same, made a git + DVC repo, for a real `dvc repro`."""
    sh(stage_repo, "git", "init", "-q")
    sh(stage_repo, "dvc", "init", "-q")
    sh(stage_repo, "dvc", "config", "core.analytics", "false")
    return stage_repo


def ran_stages(output: str) -> list[str]:
    """The stages `dvc repro` ran, in order, from its output."""
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")]


class PowerCutAt(Reporter):
    """Passes everything on to `inner`, and fails like a power cut once the loop reaches `step`."""

    def __init__(self, inner: Reporter, step: int):
        self.inner, self.step, self.run_id = inner, step, inner.run_id

    def log_params(self, params):
        self.inner.log_params(params)

    def log_metrics(self, metrics, step):
        self.inner.log_metrics(metrics, step)
        if step >= self.step:
            raise RuntimeError("power cut")

    def log_text(self, text, artifact_file):
        self.inner.log_text(text, artifact_file)

    def on_eval(self, step, val_loss):
        self.inner.on_eval(step, val_loss)

    def flush(self):
        self.inner.flush()

    def wait(self):
        self.inner.wait()
