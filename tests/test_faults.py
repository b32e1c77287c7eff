"""Faults from outside the input, met for real: signals sent to real processes, a real full
filesystem (a small tmpfs; a write that raises ENOSPC where mounting is not allowed), empty and
corrupt checkpoints read by the real stages."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from src.model import checkpoint
from src.tuning.storage import storage_for
from tests.conftest import _env, write_params


def popen(repo: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=repo,
        env={**_env(), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stage(repo: Path, name: str, env: dict | None = None) -> subprocess.Popen:
    return popen(repo, "-m", f"pipeline.{name}", env=env)


def prepare_data(repo: Path) -> None:
    for name in ("corpus", "encode", "split"):
        proc = stage(repo, name)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, out + err


def said(stderr: str) -> list[str]:
    """stderr without the progress bar, MLflow's INFO lines on creating a new store and Optuna's
    on the study: what the process said about how it ended."""
    return [
        line
        for line in stderr.splitlines()
        if line.strip()
        and "step/s" not in line
        and " INFO mlflow.store.db.utils: " not in line
        and not line.startswith("[I ")
    ]


def signal_at(proc: subprocess.Popen, last: Path, step: int, signum: int) -> int:
    """Send `signum` to `proc` once `last` holds at least `step`; -> the step it held then."""
    deadline = time.time() + 300
    while time.time() < deadline and not (last.is_file() and checkpoint.load_payload(last)["step"] >= step):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    held = checkpoint.load_payload(last)["step"]
    proc.send_signal(signum)
    return held


def tracked_params(repo: Path, tmp_path: Path, **train) -> tuple[dict, dict]:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["model"].update({"lstm_size": 48, "dropout": 0.2})
    params["train"].update({"max_steps": 400, "checkpoint_interval": 20, "eval_interval": 40, **train})
    params["tracking"].update({"enabled": True, "log_every": 5})
    write_params(repo, params)
    return params, {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}


def runs(uri: str, experiment: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_mid_training_ends_the_run_killed_in_one_line_and_a_rerun_resumes_exactly(
    stage_repo, tmp_path, signum
):
    params, env = tracked_params(stage_repo, tmp_path)
    prepare_data(stage_repo)
    last = stage_repo / "models" / "last.pt"

    proc = stage(stage_repo, "train", env)
    held = signal_at(proc, last, 40, signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, out + err
    name = signal.Signals(signum).name
    assert said(err) == [f"pipeline.train: stopped by {name}; what it had written is complete, run it again to go on"]
    (run,) = runs(env["MLFLOW_TRACKING_URI"], params["tracking"]["experiment"])
    assert run.info.status == "KILLED"
    stopped_at = checkpoint.load_payload(last)["step"]
    assert held <= stopped_at < 400
    assert not list((stage_repo / "models").glob(".*.tmp"))
    if signum != signal.SIGTERM:
        return  # SIGINT takes the same path from here: one resume compared with a clean run is enough

    proc = stage(stage_repo, "train", env)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0 and f"resuming from {last} at step {stopped_at}" in out, out + err
    resumed = json.loads((stage_repo / "metrics" / "train.json").read_text())
    (run,) = runs(env["MLFLOW_TRACKING_URI"], params["tracking"]["experiment"])
    assert run.info.status == "FINISHED" and resumed["resumed_from"] == stopped_at

    params["train"]["resume"] = "never"
    write_params(stage_repo, params)
    assert stage(stage_repo, "train", env).wait(timeout=600) == 0
    clean = json.loads((stage_repo / "metrics" / "train.json").read_text())
    assert clean["resumed_from"] == 0
    for key in ("best_val_loss", "best_step", "final_train_loss", "steps"):
        assert resumed[key] == clean[key], key


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MB filesystem of its own (tmpfs; mounting needs root), or None where it cannot be
    mounted: the test then fakes the full disk at the write instead."""
    where = tmp_path / "disk"
    where.mkdir()
    mounted = (
        os.geteuid() == 0
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(where)], capture_output=True
        ).returncode
        == 0
    )
    yield where if mounted else None
    if mounted:
        subprocess.run(["umount", "-l", str(where)], check=True)


# Where no filesystem can be mounted: every file opened for writing once `flag` exists fails
# with ENOSPC, as a full disk makes it (the stage itself runs unchanged, in its own process).
FAKE_FULL_DISK = """
import builtins, errno, os, runpy, sys
flag, module = sys.argv.pop(1), sys.argv.pop(1)
real_open = builtins.open
class Full:
    def __init__(self, f): self.f = f
    def write(self, data): raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    def __getattr__(self, name): return getattr(self.f, name)
    def __enter__(self): return self
    def __exit__(self, *exc): self.f.close()
def open_(file, mode="r", *args, **kwargs):
    f = real_open(file, mode, *args, **kwargs)
    return Full(f) if ("w" in mode or "a" in mode) and os.path.exists(flag) else f
builtins.open = open_
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def fill(disk: Path) -> Path:
    """Fill the filesystem of `disk` to the last byte; -> the file that holds the space."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        for size in (1 << 16, 1):
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * size)
    return filler


@pytest.mark.slow
@pytest.mark.parametrize("store", ["elsewhere", "on the full disk", "off"])
def test_a_full_disk_mid_training_is_one_line_and_keeps_the_checkpoints(stage_repo, tmp_path, small_disk, store):
    if small_disk is not None:  # the repo and its outputs on the small filesystem
        repo = small_disk / "repo"
        shutil.copytree(stage_repo, repo)
    else:
        repo = stage_repo
    params, env = tracked_params(repo, tmp_path)
    if store == "off":
        params["tracking"]["enabled"] = False
        write_params(repo, params)
    elif store == "on the full disk":
        env = {"MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlflow.db'}"}
    prepare_data(repo)
    last, best = repo / "models" / "last.pt", repo / "models" / "best.pt"
    flag = tmp_path / "disk-is-full"
    if small_disk is not None:
        proc = stage(repo, "train", env)
    else:
        proc = popen(repo, "-c", FAKE_FULL_DISK, str(flag), "pipeline.train", env=env)

    held = signal_at(proc, last, 40, 0)  # signal 0: nothing sent, only wait
    filler = fill(small_disk) if small_disk is not None else flag.touch()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, out + err
    (line,) = said(err)
    assert line.startswith("error: ") and "the disk is full" in line and "Traceback" not in err, err
    if store != "on the full disk":  # else SQLite may be the first to find the disk full
        assert f"{repo / 'models'}/" in line and ".pt: not written" in line, line
    # The previous checkpoints are whole, and nothing half-written is left. At a step that both
    # validates and saves, best.pt is written before last.pt (last.pt names the best step), so a
    # disk that fills between the two leaves best.pt one save ahead: the rerun redoes that step
    # exactly and writes the same best.pt again.
    kept = checkpoint.load_payload(last)["step"]
    assert kept >= held and checkpoint.load_payload(best)["step"] <= kept + params["train"]["checkpoint_interval"]
    assert not list((repo / "models").glob(".*.tmp"))
    if store == "elsewhere":  # a store that can be reached: the run ended FAILED, saying why
        (run,) = runs(env["MLFLOW_TRACKING_URI"], params["tracking"]["experiment"])
        assert run.info.status == "FAILED" and "disk is full" in run.data.tags["failure_reason"]

        # Space freed, the rerun goes on from the last checkpoint.
        if filler is not None:
            filler.unlink()
        else:
            flag.unlink()
        proc = stage(repo, "train", env)
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0 and f"resuming from {last} at step {kept}" in out, out + err
        ended = json.loads((repo / "metrics" / "train.json").read_text())
        assert checkpoint.load_payload(best)["step"] == ended["best_step"] <= ended["steps"]


@pytest.mark.slow
def test_a_tracking_store_on_a_full_disk_is_one_line_naming_the_store(stage_repo, small_disk):
    if small_disk is None:
        pytest.skip("needs a filesystem of its own to fill (mount); SQLite writes past Python's open()")
    from src.tracking import store

    prepare_data(stage_repo)
    uri = f"sqlite:///{small_disk / 'mlflow.db'}"
    params = yaml.safe_load((stage_repo / "params.yaml").read_text())
    store.experiment_id(store.connect(uri), uri, params["tracking"]["experiment"])  # the store exists
    fill(small_disk)
    params["tracking"]["enabled"] = True
    write_params(stage_repo, params)
    proc = stage(stage_repo, "train", {"MLFLOW_TRACKING_URI": uri})
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, out + err
    assert said(err) == [
        f"error: the tracking store {uri}: not written, the disk is full (database or disk is full); "
        "free space on that disk and run it again"
    ], err


DAMAGE = {"empty": b"", "random bytes": random.Random(0).randbytes(10_000)}
SAYS = {"empty": "empty checkpoint (0 bytes)", "random bytes": "truncated or corrupt checkpoint"}


@pytest.mark.slow
@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_last_checkpoint_is_set_aside_and_training_starts_fresh(stage_repo, damage):
    prepare_data(stage_repo)
    last = stage_repo / "models" / "last.pt"
    last.parent.mkdir()
    last.write_bytes(DAMAGE[damage])

    proc = stage(stage_repo, "train")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out + err
    (aside,) = list(last.parent.glob("last.pt.corrupt-*"))
    assert aside.read_bytes() == DAMAGE[damage]  # kept for a look, not deleted
    (warning,) = [line for line in out.splitlines() if line.startswith("warning:")]
    assert (
        warning.startswith(f"warning: {last}: {SAYS[damage]}")
        and f"moved it to {aside.name}, starting fresh" in warning
    )
    assert json.loads((stage_repo / "metrics" / "train.json").read_text())["resumed_from"] == 0
    assert checkpoint.load_payload(last)["step"] == 40


@pytest.mark.slow
@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_best_checkpoint_is_one_line_that_says_how_to_recover(stage_repo, damage):
    best = stage_repo / "models" / "best.pt"
    best.parent.mkdir()
    best.write_bytes(DAMAGE[damage])
    for args in (
        ["-m", "pipeline.evaluate"],
        ["-m", "pipeline.sample"],
        ["-m", "src.sample", "--checkpoint", str(best)],
    ):
        proc = popen(stage_repo, *args)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, (args, out + err)
        assert (
            err == (f"error: {best}: {SAYS[damage]}" + err[len(f"error: {best}: {SAYS[damage]}") :])
            and err.count("\n") == 1
        ), (args, err)
        assert f"`dvc checkout --force {best}`" in err and "untrusted" not in err and "refused" not in err


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in state


@pytest.mark.slow
def test_sigterm_stops_a_tuning_and_its_worker_processes_in_one_line(stage_repo, tmp_path):
    import optuna

    from tests.test_tune import _tiny_repo_for_tune

    journal = stage_repo / "tune" / "journal.log"
    _tiny_repo_for_tune(stage_repo, str(journal), pruner="none", budget_chars=3_000_000)
    params = yaml.safe_load((stage_repo / "params.yaml").read_text())
    params["tracking"]["enabled"] = True
    write_params(stage_repo, params)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    caller = popen(
        stage_repo,
        "-m",
        "src.tune",
        "--n-jobs",
        "2",
        "--n-trials",
        "4",
        "--no-progress",
        env={"MLFLOW_TRACKING_URI": uri},
    )
    storage = storage_for(str(journal), stage_repo / "unused.log")
    deadline, running = time.monotonic() + 120, []
    while time.monotonic() < deadline and len(running) < 2:
        assert caller.poll() is None, caller.communicate()
        time.sleep(0.5)
        with contextlib.suppress(KeyError, ValueError):
            running = optuna.load_study(study_name="w", storage=storage).get_trials(
                states=(optuna.trial.TrialState.RUNNING,)
            )
    workers = {int(t.user_attrs["worker"].rsplit(":", 1)[1]) for t in running}
    assert len(workers) == 2, "both processes should be training a trial"
    time.sleep(1)  # into the training

    caller.send_signal(signal.SIGTERM)
    out, err = caller.communicate(timeout=120)
    assert caller.returncode == 143, out + err
    assert said(err) == ["src.tune: stopped by SIGTERM; what it had written is complete, run it again to go on"], err
    assert not any(_alive(pid) for pid in workers - {caller.pid})
    trials = optuna.load_study(study_name="w", storage=storage).trials
    assert trials and not any(t.state == optuna.trial.TrialState.RUNNING for t in trials)
    trial_runs = [r for r in runs(uri, params["tracking"]["experiment"]) if "mlflow.parentRunId" in r.data.tags]
    assert len(trial_runs) == 2 and {r.info.status for r in trial_runs} == {"KILLED"}


@pytest.mark.slow
def test_sigterm_stops_sampling_in_one_line(stage_repo):
    prepare_data(stage_repo)
    assert stage(stage_repo, "train").wait(timeout=300) == 0
    proc = popen(stage_repo, "-m", "src.sample", "--length", "10000000", "--seed", "1")
    time.sleep(6)  # torch imported, the checkpoint loaded, generating
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and said(err) == [
        "src.sample: stopped by SIGTERM; what it had written is complete, run it again to go on"
    ], err
