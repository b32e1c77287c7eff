"""End to end: `dvc repro` in a temporary copy of the repo, on a slice of the corpus, tiny model."""

from __future__ import annotations

import hashlib
import json
import platform
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ran_stages, sh, write_params


@pytest.mark.slow
def test_repro_end_to_end(repo):
    first = sh(repo, "dvc", "repro")
    assert sorted(ran_stages(first.stdout)) == sorted(
        ["corpus", "encode", "split", "train", "evaluate", "sample", "register"]
    )
    for path in (
        "data/vocab.json",
        "data/encoded.npy",
        "data/split/train.npy",
        "models/best.pt",
        "models/last.pt",
        "plots/train_loss.csv",
        "plots/val_loss.csv",
        "samples/sample.txt",
    ):
        assert (repo / path).is_file(), path
    scores = json.loads((repo / "metrics/eval.json").read_text())
    assert 0 < scores["val"]["loss"] < 5 and scores["val"]["bpc"] > scores["val"]["loss"]
    train = json.loads((repo / "metrics/train.json").read_text())
    assert train["steps"] == 40 and train["n_params"] > 0
    assert (repo / "samples/sample.txt").read_text().startswith("The")
    assert json.loads((repo / "models/registration.json").read_text())["registered"] is False  # tracking off
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
    assert sorted(ran_stages(sh(repo, "dvc", "repro").stdout)) == ["evaluate", "register", "sample", "train"]
    # Editing the registry (the served model's packaging) re-registers without retraining; editing
    # the vocabulary code reruns every stage that runs it.
    with (repo / "src" / "serving" / "registry.py").open("a") as f:
        f.write("\n# edited\n")
    assert ran_stages(sh(repo, "dvc", "repro").stdout) == ["register"]
    with (repo / "src" / "data" / "vocab.py").open("a") as f:
        f.write("\n# edited\n")
    assert sorted(ran_stages(sh(repo, "dvc", "repro").stdout)) == ["encode", "evaluate", "register", "sample", "train"]

    # The metrics and params are what DVC users compare.
    shown = sh(repo, "dvc", "metrics", "show", "--json").stdout
    assert "best_val_loss" in shown and "perplexity" in shown

    # dvc exp run -S on a committed baseline, then the usual comparisons.
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "baseline")
    exp = sh(repo, "dvc", "exp", "run", "-S", "sample.length=60", "-n", "short-sample")
    assert ran_stages(exp.stdout) == ["sample"]
    exps = json.loads(sh(repo, "dvc", "exp", "show", "--json").stdout)
    assert "short-sample" in json.dumps(exps)
    assert "sample.length" in sh(repo, "dvc", "params", "diff").stdout
    sh(repo, "dvc", "metrics", "diff")


def _stage(repo: Path, name: str) -> subprocess.CompletedProcess:
    return sh(repo, sys.executable, "-m", f"pipeline.{name}", check=False)


@pytest.mark.parametrize(
    "section, values, stage, message",
    [
        ("data", {"path": "no/such/file.txt"}, "corpus", "data.path: 'no/such/file.txt' does not exist"),
        ("data", {"licence": "strp"}, "corpus", "data.licence: 'strp' is not one of 'strip' | 'keep'"),
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


def test_the_corpus_is_the_book_without_its_gutenberg_licence_unless_kept(stage_repo, tmp_path):
    book = "Chapter 1\r\n\r\nHappy families are all alike.\r\n"
    text = book + "\r\n\r\n*** END OF THIS PROJECT GUTENBERG EBOOK ***\r\n\r\nA Word from Project Gutenberg $%&\r\n"
    (tmp_path / "novel.txt").write_bytes(text.encode())
    params = yaml.safe_load((stage_repo / "params.yaml").read_text())
    params["data"].update({"path": str(tmp_path / "novel.txt"), "sha256": hashlib.sha256(book.encode()).hexdigest()})
    write_params(stage_repo, params)
    proc = _stage(stage_repo, "corpus")
    assert proc.returncode == 0, proc.stderr
    assert f"Project Gutenberg's licence left out ({len(text) - len(book)} bytes" in proc.stdout
    assert (stage_repo / "data" / "corpus.txt").read_bytes() == book.encode()

    params["data"].update({"licence": "keep", "sha256": None})
    write_params(stage_repo, params)
    proc = _stage(stage_repo, "corpus")
    assert proc.returncode == 0 and "licence" not in proc.stdout, proc.stdout + proc.stderr
    assert (stage_repo / "data" / "corpus.txt").read_bytes() == text.encode()


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


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="oneDNN's instruction-set cap is x86's")
def test_train_refuses_a_bf16_precision_this_cpu_cannot_run_before_the_mlflow_run(stage_repo, monkeypatch):
    params = yaml.safe_load((stage_repo / "params.yaml").read_text())
    params["train"]["precision"] = "bf16"
    params["tracking"]["enabled"] = True  # the store mlflow.db would hold a failed run
    write_params(stage_repo, params)
    for s in ("corpus", "encode", "split"):
        assert _stage(stage_repo, s).returncode == 0
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # oneDNN as on an AVX2 CPU: no bf16 LSTM
    proc = _stage(stage_repo, "train")
    assert proc.returncode == 2 and "train.precision is bf16, but torch cannot run a bf16 LSTM" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert not (stage_repo / "mlflow.db").exists() and not (stage_repo / "models").exists()


@pytest.mark.slow
def test_evaluate_scores_in_fp32_whatever_the_training_shape_and_precision(stage_repo):
    """The evaluate stage's score depends on the weights and evaluate.* only: the same checkpoint
    scores the same with any train.batch_size, train.seq_len or train.precision, in fp32."""
    import numpy as np
    import torch

    from src.model import checkpoint
    from src.training import evaluate
    from src.utils import fileio

    params = yaml.safe_load((stage_repo / "params.yaml").read_text())
    params["train"].update({"precision": "bf16", "max_steps": 20})
    write_params(stage_repo, params)
    for name in ("corpus", "encode", "split", "train", "evaluate"):
        assert _stage(stage_repo, name).returncode == 0, name
    first = json.loads((stage_repo / "metrics/eval.json").read_text())

    model, _, _ = checkpoint.load(stage_repo / "models/best.pt")
    val = torch.from_numpy(fileio.read_npy(stage_repo / "data/split/val.npy").astype(np.int64))
    rows, chunk = params["evaluate"]["rows"], params["evaluate"]["chunk_len"]
    fp32 = evaluate.stream_loss(model, val, rows, chunk)
    bf16 = evaluate.stream_loss(model, val, rows, chunk, torch.bfloat16)
    assert first["val"]["loss"] == fp32 != bf16

    for changes in ({"batch_size": 3, "seq_len": 7}, {"precision": "fp32"}, {"precision": "auto", "batch_size": 64}):
        params["train"].update(changes)
        write_params(stage_repo, params)
        assert _stage(stage_repo, "evaluate").returncode == 0
        assert json.loads((stage_repo / "metrics/eval.json").read_text()) == first, changes


# A few sentences of plain Chinese (written for this test), repeated: about 1,400 characters, no Latin.
CJK_TEXT = (
    "春天来了，山上的花都开了。小河里的水很清，孩子们在河边唱歌。\n"
    "老人坐在门口，看着远方的田野。她说：“今年的雨水多，麦子会长得好。”\n"
    "晚上，一家人围着桌子吃饭，谈着城里的新鲜事。\n"
) * 15


@pytest.mark.slow
def test_a_prime_the_corpus_cannot_encode_stops_before_training(repo, tmp_path):
    """Your own text with data.path alone: the default prime "Far" is not in a Chinese novel's
    vocabulary. The train stage says so in one line before any training step (nothing trained,
    no MLflow run); the prime it suggests goes through sample and register, and a new prime
    then reruns sampling only."""
    cjk = tmp_path / "novel.txt"
    cjk.write_text(CJK_TEXT, encoding="utf-8")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["path"] = str(cjk)
    params["sample"]["prime"] = "Far"
    params["tracking"]["enabled"] = True
    params["train"].update({"max_steps": 10, "eval_interval": 10})
    write_params(repo, params)
    sh(repo, "dvc", "repro", "split")
    proc = _stage(repo, "train")
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip()
    assert "\n" not in line and "Traceback" not in line, proc.stderr
    assert line.startswith("error: params.yaml: sample.prime 'Far': characters not in the vocabulary: 'F', 'a', 'r'")
    assert "step" not in proc.stdout and not (repo / "models").exists() and not (repo / "mlflow.db").exists()
    command = line.split("`")[1]  # the fix the line names, run as it stands
    assert command == """dvc exp run -S 'sample.prime="春天来了"'"""  # the corpus's first word
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "Chinese novel")
    ran = sh(repo, *shlex.split(command)).stdout
    assert sorted(ran_stages(ran)) == ["evaluate", "register", "sample", "train"]
    params = yaml.safe_load((repo / "params.yaml").read_text(encoding="utf-8"))
    suggested = params["sample"]["prime"]
    assert suggested == "春天来了"
    assert (repo / "samples/sample.txt").read_text(encoding="utf-8").startswith(suggested)
    registration = json.loads((repo / "models/registration.json").read_text())
    assert registration["registered"] is True and registration["version"] == "1"

    params["sample"]["prime"] = "孩子"
    write_params(repo, params)
    assert ran_stages(sh(repo, "dvc", "repro").stdout) == ["sample"]
    assert (repo / "samples/sample.txt").read_text(encoding="utf-8").startswith("孩子")
    # A bad prime set after training: the sample stage alone fails, in the same words.
    params["sample"]["prime"] = "Far"
    write_params(repo, params)
    proc = _stage(repo, "sample")
    assert proc.returncode == 2 and proc.stdout == "", proc.stdout
    assert proc.stderr.startswith("error: params.yaml: sample.prime 'Far': characters not in the vocabulary")
    assert proc.stderr.count("\n") == 1 and "-S 'sample.prime=" in proc.stderr
