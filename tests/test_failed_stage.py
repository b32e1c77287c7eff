"""A failed stage never destroys good outputs: `dvc repro` with bad params keeps the previous
metrics, plots, sample and checkpoints, and once the params are fixed reruns nothing; a real
change of params still replaces every output, with no stale one left in between."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import _env, ran_stages, sh, write_params

OUTPUTS = (
    "metrics/train.json",
    "metrics/eval.json",
    "plots/train_loss.csv",
    "plots/val_loss.csv",
    "models/best.pt",
    "models/last.pt",
    "samples/sample.txt",
)


def snapshot(repo: Path) -> dict[str, bytes]:
    return {name: (repo / name).read_bytes() for name in OUTPUTS}


def mlflow_runs(repo: Path) -> int:
    import sqlite3

    with sqlite3.connect(repo / "mlflow.db") as db:
        return db.execute("select count(*) from runs").fetchone()[0]


def misspell(params: dict) -> None:
    params["model"]["dropuot"] = params["model"].pop("dropout")


def too_large_a_batch(params: dict) -> None:
    params["train"]["batch_size"] = 100_000  # a valid value; train() finds the text too short for it


def a_prime_out_of_the_vocabulary(params: dict) -> None:
    params["sample"]["prime"] = "Жизнь"


@pytest.mark.slow
def test_bad_params_keep_every_output_and_once_fixed_nothing_reruns(repo):
    good = yaml.safe_load((repo / "params.yaml").read_text())
    good["tracking"]["enabled"] = True  # the store: <repo>/mlflow.db
    write_params(repo, good)
    sh(repo, "dvc", "repro")
    before = snapshot(repo)

    for spoil, failing, error in (
        (misspell, "train", "params.yaml: model.dropuot: unknown key (did you mean 'dropout'?)"),
        (too_large_a_batch, "train", "characters cannot fill 100000 rows"),
        (a_prime_out_of_the_vocabulary, "sample", "sample.prime 'Жизнь': characters not in the vocabulary"),
    ):
        bad = copy.deepcopy(good)
        spoil(bad)
        write_params(repo, bad)
        failed = sh(repo, "dvc", "repro", check=False)
        assert failed.returncode != 0 and ran_stages(failed.stdout)[-1] == failing, failed.stdout
        errors = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and error in errors[0], failed.stderr
        assert "Traceback" not in failed.stderr
        assert snapshot(repo) == before, f"a failed {failing} stage changed its outputs"
        runs = mlflow_runs(repo)  # with the one a failed training may have opened (and ended FAILED)

        write_params(repo, good)
        fixed = sh(repo, "dvc", "repro")
        assert ran_stages(fixed.stdout) == [], fixed.stdout
        assert "is cached" not in fixed.stdout  # nothing restored either: nothing was lost
        assert snapshot(repo) == before and mlflow_runs(repo) == runs


@pytest.mark.slow
def test_a_change_of_params_replaces_every_output_and_an_interrupted_run_leaves_no_stale_one(repo):
    sh(repo, "dvc", "repro")
    before = snapshot(repo)

    # Another seed, trained long enough to be interrupted (Ctrl-C) once it is under way.
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["seed"] = 4321
    params["train"].update({"max_steps": 1_000_000, "checkpoint_interval": 5})
    write_params(repo, params)
    proc = subprocess.Popen(
        ["dvc", "repro"], cwd=repo, env=_env(), start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 120
        while (repo / "models/last.pt").read_bytes() == before["models/last.pt"]:
            assert proc.poll() is None and time.monotonic() < deadline, "training never got under way"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    stale = [
        name for name in ("metrics/train.json", "plots/train_loss.csv", "plots/val_loss.csv") if (repo / name).exists()
    ]
    assert stale == [], "the interrupted training left the previous params' outputs in place"

    params["train"].update({"max_steps": 40, "checkpoint_interval": 250})
    write_params(repo, params)
    ran = ran_stages(sh(repo, "dvc", "repro").stdout)
    assert sorted(ran) == ["evaluate", "register", "sample", "train"]
    after = snapshot(repo)
    assert [name for name in OUTPUTS if after[name] == before[name]] == []
