"""The study database going away during tuning: a real PostgreSQL server, started by the test,
stopped mid-trial and started again (a blip is retried), or stopped for good (one line, and the
trial is recovered by the next worker). Skipped where PostgreSQL's binaries are missing."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import yaml

from tests.conftest import _env
from tests.test_tune import _tiny_repo_for_tune

PG_BINS = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name))
PG_BIN = PG_BINS[-1] if PG_BINS else (str(Path(shutil.which("pg_ctl")).parent) if shutil.which("pg_ctl") else None)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(PG_BIN is None, reason="PostgreSQL's binaries (initdb, pg_ctl) are not installed"),
]


class Postgres:
    """A throwaway server on a free loopback port, as .ci/run starts one (as user postgres when
    run as root: initdb refuses root)."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="karnna-pg-"))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
        self._pg("initdb", "-D", f"{self.dir}/data", "-A", "trust", "-U", "postgres")
        self.start()
        self._pg("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "karnna")
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/karnna"

    def _pg(self, tool: str, *args: str) -> None:
        cmd = [f"{PG_BIN}/{tool}", *args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        options = f"-p {self.port} -h 127.0.0.1 -k {self.dir}"
        self._pg("pg_ctl", "-D", f"{self.dir}/data", "-l", f"{self.dir}/log", "-w", "-o", options, "start")

    def stop(self) -> None:
        self._pg("pg_ctl", "-D", f"{self.dir}/data", "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres():
    server = Postgres()
    yield server
    server.remove()


def _repo(stage_repo: Path, url: str, tracking: bool = False) -> None:
    # ~40 steps a trial: a few seconds, long enough to stop the server in the middle of one.
    _tiny_repo_for_tune(stage_repo, url, pruner="none", budget_chars=12_000)
    params = yaml.safe_load((stage_repo / "params.yaml").read_text())
    params["tracking"]["enabled"] = tracking
    (stage_repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _tune(repo: Path, name: str, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "src.tune", "--n-jobs", "1", "--no-progress", "--study-name", name, "--heartbeat", "1"]
    return subprocess.Popen(
        [*cmd, *args], cwd=repo, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_running(url: str, name: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            running = optuna.load_study(study_name=name, storage=url).get_trials(
                states=(optuna.trial.TrialState.RUNNING,)
            )
        except KeyError:
            running = []
        if running:
            return
        time.sleep(0.2)
    raise AssertionError(f"no trial started: {proc.communicate()}")


def _wait_run(db: Path, run_name: str, proc: subprocess.Popen) -> None:
    """Wait for the trial's MLflow run: the trial turns RUNNING in the study before its parameters
    are drawn and its run is made, so stopping the server at RUNNING alone could lose the run."""
    import sqlite3

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if db.exists():
            with sqlite3.connect(db, timeout=10) as conn:
                try:
                    names = {row[0] for row in conn.execute("SELECT name FROM runs")}
                except sqlite3.OperationalError:
                    names = set()  # the store's tables are still being made
            if run_name in names:
                return
        time.sleep(0.2)
    raise AssertionError(f"no run {run_name}: {proc.communicate()}")


def test_a_database_blip_mid_trial_is_retried_and_the_trial_goes_on(stage_repo, postgres):
    name = f"blip-{os.getpid()}"
    _repo(stage_repo, postgres.url)
    proc = _tune(stage_repo, name, "--n-trials", "2", "--db-retry", "20")
    _wait_running(postgres.url, name, proc)
    postgres.stop()
    time.sleep(4)
    postgres.start()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out + err
    assert "Traceback" not in err and "study storage" in err and "unreachable" in err, err
    trials = optuna.load_study(study_name=name, storage=postgres.url).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2, trials


def test_a_long_outage_is_one_line_and_the_trial_is_recovered(stage_repo, postgres):
    from mlflow.tracking import MlflowClient

    name = f"outage-{os.getpid()}"
    _repo(stage_repo, postgres.url, tracking=True)
    proc = _tune(stage_repo, name, "--n-trials", "2", "--db-retry", "3")
    _wait_running(postgres.url, name, proc)
    _wait_run(stage_repo / "mlflow.db", "trial-0", proc)
    postgres.stop()
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        postgres.start()
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and "Traceback" not in err and len(errors) == 1, err
    assert "unreachable" in errors[0] and "rerun" in errors[0], errors
    # Nothing left RUNNING in MLflow: the trial's run and the study's run ended FAILED.
    client = MlflowClient(f"sqlite:///{stage_repo / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("karnna").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["study-" + name, "trial-0"]
    assert {r.info.status for r in runs} == {"FAILED"}, [(r.info.run_name, r.info.status) for r in runs]

    # The next worker marks the lost trial failed (no heartbeat for 3 s) and goes on.
    time.sleep(4)
    rerun = _tune(stage_repo, name, "--n-trials", "1")
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, out + err
    trials = optuna.load_study(study_name=name, storage=postgres.url).trials
    states = [t.state for t in trials]
    assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE], states


def test_the_study_lock_waits_for_a_database_blip_and_gives_up_in_one_line(tmp_path, postgres):
    """Workers take the study's lock (storage.exclusive) before they enqueue and make its parent
    run: with the database away it is waited for like any storage call, then StorageLost."""
    import threading

    from src.tuning.retry import StorageLost
    from src.tuning.storage import exclusive, storage_for

    storage = storage_for(postgres.url, tmp_path / "unused.log", retry_s=20)
    postgres.stop()
    back = threading.Timer(3.0, postgres.start)
    back.start()
    try:
        with exclusive(storage, "blip"):  # refused at first, taken once the server is back
            pass
    finally:
        back.join()
    postgres.stop()
    storage.retry_s = 2
    try:
        with pytest.raises(StorageLost, match="unreachable for 2 s"):
            with exclusive(storage, "gone"):
                pass
    finally:
        postgres.start()
