"""End to end: `dvc repro` in a temporary copy of the repo, on a slice of the corpus, tiny model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, SHARED_CORPUS, TINY_TEXT, tiny_params

BIN = Path(sys.executable).parent


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
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
    """The same, made a git + DVC repo."""
    root = stage_repo
    sh(root, "git", "init", "-q")
    sh(root, "dvc", "init", "-q")
    sh(root, "dvc", "config", "core.analytics", "false")
    return root


def ran_stages(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")]


@pytest.mark.slow
def test_repro_end_to_end(repo):
    first = sh(repo, "dvc", "repro")
    assert ran_stages(first.stdout) == ["corpus", "encode", "split", "train", "evaluate", "sample"]
    for path in ("data/vocab.json", "data/encoded.npy", "data/split/train.npy", "models/best.pt",
                 "models/last.pt", "plots/train_loss.csv", "plots/val_loss.csv", "samples/sample.txt"):
        assert (repo / path).is_file(), path
    scores = json.loads((repo / "metrics/eval.json").read_text())
    assert 0 < scores["val"]["loss"] < 5 and scores["val"]["bpc"] > scores["val"]["loss"]
    train = json.loads((repo / "metrics/train.json").read_text())
    assert train["steps"] == 40 and train["n_params"] > 0
    assert (repo / "samples/sample.txt").read_text().startswith("The")
    vocab = json.loads((repo / "data/vocab.json").read_text())
    assert vocab["newline"] == "lf" and "\r" not in vocab["chars"]

    second = sh(repo, "dvc", "repro")
    assert ran_stages(second.stdout) == []

    # A sample.* change reruns sampling only; a model.* change reruns train, evaluate, sample.
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["sample"]["length"] = 120
    write_params(repo, params)
    assert ran_stages(sh(repo, "dvc", "repro").stdout) == ["sample"]
    params["model"]["dropout"] = 0.2
    write_params(repo, params)
    assert ran_stages(sh(repo, "dvc", "repro").stdout) == ["train", "evaluate", "sample"]

    # The metrics and params are what DVC users compare.
    shown = sh(repo, "dvc", "metrics", "show", "--json").stdout
    assert "best_val_loss" in shown and "perplexity" in shown


def _stage(repo: Path, name: str) -> subprocess.CompletedProcess:
    return sh(repo, sys.executable, "-m", f"pipeline.{name}", check=False)


@pytest.mark.parametrize(
    "section, values, stage, message",
    [
        ("data", {"path": "no/such/file.txt"}, "corpus", "data.path: 'no/such/file.txt' does not exist"),
        ("train", {"lr": "1e-3"}, "train", "train.lr: expected a number, got string '1e-3'"),
        ("model", {"dropout": 1.5}, "train", "model.dropout: 1.5 is out of range"),
        ("model", {"lstm_size": 0}, "train", "model.lstm_size: 0 is out of range"),
        ("train", {"unknown_knob": 1}, "train", "train.unknown_knob: unknown key"),
    ],
)
def test_bad_params_fail_in_one_line(stage_repo, section, values, stage, message):
    params = yaml.safe_load((stage_repo / "params.yaml").read_text())
    params[section].update(values)
    write_params(stage_repo, params)
    proc = _stage(stage_repo, stage)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "the corpus is empty"),
        (b"abc\xff\xfedef", "not UTF-8 at byte offset 3"),
        (b"Short.", "too short to split"),
    ],
)
def test_bad_corpus_fails_cleanly(stage_repo, tmp_path, content, message):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(content)
    params = yaml.safe_load((stage_repo / "params.yaml").read_text())
    params["data"]["path"] = str(bad)
    write_params(stage_repo, params)
    procs = [_stage(stage_repo, s) for s in ("corpus", "encode", "split")]
    failed = next(p for p in procs if p.returncode != 0)
    assert failed.returncode == 2 and message in failed.stderr, failed.stderr
    assert "Traceback" not in failed.stderr
    assert not list(stage_repo.rglob("*.tmp"))


def test_text_shorter_than_one_batch(stage_repo, tmp_path):
    params = yaml.safe_load((stage_repo / "params.yaml").read_text())
    params["data"]["max_chars"] = 300
    params["train"]["batch_size"] = 200
    write_params(stage_repo, params)
    for s in ("corpus", "encode", "split"):
        assert _stage(stage_repo, s).returncode == 0
    proc = _stage(stage_repo, "train")
    assert proc.returncode == 2 and "lower train.batch_size" in proc.stderr
    assert not (stage_repo / "models" / "best.pt").exists()
