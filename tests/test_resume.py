"""Exact resume: a run interrupted at any step and started again ends with the same numbers."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from src.config.schema import config_from_dict
from src.model import checkpoint
from src.training.loop import train
from src.training.report import Reporter
from src.training.state import TrainPaths, plan_resume
from src.utils.errors import KarnnaError
from tests.conftest import Crash, CrashAt, _env, tiny_params, write_params


def _cfg(dropout: float = 0.3, **train):
    return config_from_dict(
        tiny_params(
            train={
                "max_steps": 60,
                "checkpoint_interval": 10,
                "eval_interval": 20,
                "epochs": 5,
                "log_interval": 1,
                **train,
            },
            model={"dropout": dropout},
        )
    )


def _paths(tmp_path, name):
    return TrainPaths(tmp_path / f"{name}-best.pt", tmp_path / f"{name}-last.pt")


@pytest.mark.parametrize("crash_step", [14, 31, 47])
def test_resume_gives_the_same_numbers(tmp_path, tiny_data, crash_step):
    vocab, tr, va = tiny_data
    cfg = _cfg()
    full = train(cfg, vocab, tr, va, _paths(tmp_path, "full"), progress=False, log=lambda _: None)

    paths = _paths(tmp_path, "crashed")
    with pytest.raises(Crash):
        train(cfg, vocab, tr, va, paths, reporter=CrashAt(crash_step), progress=False, log=lambda _: None)
    payload = plan_resume(cfg, tr, va, paths, log=lambda _: None)
    assert payload is not None and payload["resume"]["step"] == (crash_step - 1) // 10 * 10
    resumed = train(cfg, vocab, tr, va, paths, progress=False, log=lambda _: None, resume=payload)

    assert resumed.resumed_from == payload["resume"]["step"]
    assert resumed.train_history == full.train_history
    assert resumed.val_history == full.val_history
    assert resumed.best_val_loss == full.best_val_loss and resumed.best_step == full.best_step
    a, b = checkpoint.load_payload(paths.last), checkpoint.load_payload(_paths(tmp_path, "full").last)
    for k in a["state_dict"]:
        assert (a["state_dict"][k] == b["state_dict"][k]).all(), k


def test_resume_policy(tmp_path, tiny_data):
    vocab, tr, va = tiny_data
    cfg = _cfg()
    paths = _paths(tmp_path, "x")
    assert plan_resume(cfg, tr, va, paths) is None  # nothing there
    with pytest.raises(KarnnaError, match="does not exist"):
        plan_resume(_cfg(resume="require"), tr, va, paths)
    with pytest.raises(Crash):
        train(cfg, vocab, tr, va, paths, reporter=CrashAt(25), progress=False, log=lambda _: None)

    messages = []
    other = _cfg(dropout=0.1)
    assert plan_resume(other, tr, va, paths, log=messages.append) is None
    assert "model.dropout: 0.3 -> 0.1" in messages[0] and "starting fresh" in messages[0]
    strict = _cfg(dropout=0.1, resume="require")
    with pytest.raises(KarnnaError, match=r"made with other params or data \(model.dropout"):
        plan_resume(strict, tr, va, paths)
    # Other data is never resumed silently either.
    assert plan_resume(cfg, tr[:-10], va, paths, log=messages.append) is None
    assert "data.train_sha256" in messages[-1]
    assert plan_resume(_cfg(resume="never"), tr, va, paths) is None
    assert plan_resume(cfg, tr, va, paths) is not None

    # A finished run is not resumed: it starts fresh.
    train(cfg, vocab, tr, va, paths, progress=False, log=lambda _: None, resume=plan_resume(cfg, tr, va, paths))
    assert plan_resume(cfg, tr, va, paths) is None


def kill_9_after(proc: subprocess.Popen, last: Path, step: int) -> int:
    """SIGKILL the train stage `proc` once `last` holds at least `step`; -> the step it holds."""
    deadline = time.time() + 300
    while time.time() < deadline and not (last.is_file() and checkpoint.load_payload(last)["step"] >= step):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return checkpoint.load_payload(last)["step"]


@pytest.mark.slow
def test_kill_9_then_rerun_matches_an_uninterrupted_run(stage_repo, tmp_path):
    """The real thing: SIGKILL the train stage mid-run, run it again, compare with a clean run."""
    params = yaml.safe_load((stage_repo / "params.yaml").read_text())
    params["model"].update({"lstm_size": 64, "dropout": 0.2})
    params["train"].update({"max_steps": 200, "checkpoint_interval": 20, "eval_interval": 50})
    write_params(stage_repo, params)

    def stage(name, **kw):
        return subprocess.Popen(
            [sys.executable, "-m", f"pipeline.{name}"],
            cwd=stage_repo,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            **kw,
        )

    for name in ("corpus", "encode", "split"):
        assert stage(name).wait(timeout=120) == 0
    last = stage_repo / "models" / "last.pt"

    killed_at = kill_9_after(stage("train"), last, step=40)
    assert 40 <= killed_at < 200

    out, err = stage("train").communicate(timeout=600)
    assert f"resuming from {last}" in out, out + err
    resumed = json.loads((stage_repo / "metrics" / "train.json").read_text())
    resumed_curve = (stage_repo / "plots" / "train_loss.csv").read_text()

    params["train"]["resume"] = "never"
    write_params(stage_repo, params)
    assert stage("train").wait(timeout=600) == 0
    clean = json.loads((stage_repo / "metrics" / "train.json").read_text())
    assert resumed["resumed_from"] == killed_at and clean["resumed_from"] == 0
    for key in ("best_val_loss", "best_step", "final_train_loss", "steps"):
        assert resumed[key] == clean[key], key
    assert resumed_curve == (stage_repo / "plots" / "train_loss.csv").read_text()


@pytest.mark.slow
def test_kill_9_with_tracking_and_bf16_resumes_the_same_mlflow_run(stage_repo, tmp_path):
    """SIGKILL the tracked bf16 train stage mid-run and run it again: one MLflow run, FINISHED,
    every logged step present once the rerun is done, and the same losses as a run never killed."""
    from mlflow.tracking import MlflowClient

    params = yaml.safe_load((stage_repo / "params.yaml").read_text())
    params["model"].update({"lstm_size": 48, "dropout": 0.2})
    params["train"].update(
        {"max_steps": 120, "checkpoint_interval": 20, "eval_interval": 40, "precision": "bf16", "num_threads": 1}
    )
    params["tracking"].update({"enabled": True, "log_every": 5})
    write_params(stage_repo, params)
    stores = {name: f"sqlite:///{tmp_path / name}.db" for name in ("killed", "clean")}

    def stage(name, store=None):
        env = {**_env(), **({"MLFLOW_TRACKING_URI": stores[store]} if store else {})}
        return subprocess.Popen(
            [sys.executable, "-m", f"pipeline.{name}"],
            cwd=stage_repo,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    for name in ("corpus", "encode", "split"):
        assert stage(name).wait(timeout=120) == 0
    last = stage_repo / "models" / "last.pt"
    killed_at = kill_9_after(stage("train", "killed"), last, step=40)
    assert 40 <= killed_at < 120
    out, err = stage("train", "killed").communicate(timeout=600)
    assert f"resuming from {last}" in out, out + err
    resumed = json.loads((stage_repo / "metrics" / "train.json").read_text())

    params["train"]["resume"] = "never"
    write_params(stage_repo, params)
    assert stage("train", "clean").wait(timeout=600) == 0
    clean = json.loads((stage_repo / "metrics" / "train.json").read_text())
    assert resumed["resumed_from"] == killed_at and resumed["precision"] == "bf16"
    for key in ("best_val_loss", "best_step", "final_train_loss", "steps"):
        assert resumed[key] == clean[key], key

    histories = {}
    for name, uri in stores.items():
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name(params["tracking"]["experiment"])
        (run,) = client.search_runs([experiment.experiment_id])  # the killed training made one run
        assert run.info.status == "FINISHED"
        histories[name] = {
            key: {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
            for key in ("train_loss", "val_loss")
        }
        # points logged again after the resume repeat the same values: no step twice with two values
        for key in ("train_loss", "val_loss"):
            pairs = {(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)}
            assert len(pairs) == len(histories[name][key]), (name, key)
    assert sorted(histories["killed"]["train_loss"]) == list(range(5, 121, 5))  # no gap
    assert sorted(histories["killed"]["val_loss"]) == [40, 80, 120]
    assert histories["killed"] == histories["clean"]


def test_what_was_logged_reaches_the_store_before_each_resumable_checkpoint(tmp_path, tiny_data, monkeypatch):
    """A run resumed from last.pt logs only the steps after it again, so at each last.pt write
    the reporter must already hold everything logged before (a SIGKILL may follow at once)."""
    import src.training.loop as train_module

    events = []

    class Recorder(Reporter):
        pending = 0

        def log_metrics(self, metrics, step):
            self.pending += 1

        def wait(self):
            self.pending = 0

    reporter = Recorder()
    save = train_module.checkpoint.save

    def recorded_save(path, *args, before_publish=None, **kwargs):
        def publish():  # the moment last.pt appears under its name
            if before_publish is not None:
                before_publish()
            if path.name.endswith("last.pt"):
                events.append(reporter.pending)

        return save(path, *args, before_publish=publish, **kwargs)

    monkeypatch.setattr(train_module.checkpoint, "save", recorded_save)
    vocab, tr, va = tiny_data
    train(_cfg(), vocab, tr, va, _paths(tmp_path, "w"), reporter=reporter, progress=False, log=lambda _: None)
    assert len(events) == 6 and events == [0] * 6  # nothing in flight at any of the checkpoints
