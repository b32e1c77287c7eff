"""Processes sharing one study: real `python -m src.tune` processes on one journal and one MLflow
store, started together and one after another."""

from __future__ import annotations

import os
import subprocess
import sys

import optuna
import pytest

from src.config.schema import config_from_dict
from src.tuning import runner
from src.tuning.storage import storage_for
from tests.conftest import REPO, _env, tiny_params
from tests.test_team import _database, _drop, needs_postgres
from tests.test_tune import _run, _space, _tiny_repo_for_tune


@pytest.fixture
def study_data(tiny_data):
    vocab, tr, va = tiny_data
    return runner.StudyData(vocab, tr, va)


def _tune(repo, n_trials: int = 2) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "src.tune", "--n-trials", str(n_trials), "--n-jobs", "1", "--no-progress"]
    return subprocess.Popen(cmd, cwd=repo, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(procs: list[subprocess.Popen]) -> None:
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs


def _drawn(repo) -> list[tuple]:
    storage = storage_for(str(repo / "tune" / "journal.log"), repo / "unused.log")
    trials = optuna.load_study(study_name="w", storage=storage).trials
    assert all(t.state.is_finished() for t in trials)
    return [tuple(sorted(t.params.items())) for t in trials]


@pytest.mark.slow
def test_processes_on_one_journal_never_draw_the_same_params(stage_repo):
    """Two processes started together, then the same command again "to add trials": every trial
    draws its own params (a sampler seeded per process drew the same ones in each process)."""
    _tiny_repo_for_tune(stage_repo, str(stage_repo / "tune" / "journal.log"), pruner="none")
    _finish([_tune(stage_repo), _tune(stage_repo)])
    _finish([_tune(stage_repo)])
    drawn = _drawn(stage_repo)
    assert len(drawn) == 6 and len(set(drawn)) == 6, drawn


def test_a_single_process_study_is_reproducible_from_its_seed(tmp_path, study_data):
    """tune.seed fixes the suggestions of a study run by one process; another seed draws others."""
    base = config_from_dict(tiny_params(model={"embedding_dim": 4}))

    def params(name: str, seed: int) -> list[dict]:
        storage = storage_for(None, tmp_path / f"{name}.log")
        return [t.params for t in _run(base, _space(seed=seed), study_data, storage, n_trials=3).trials]

    first = params("a", 7)
    assert params("b", 7) == first and params("c", 8) != first
    assert len({tuple(sorted(p.items())) for p in first}) == 3


@pytest.mark.slow
def test_two_processes_started_together_create_the_mlflow_store_once(stage_repo):
    """Both start before mlflow.db exists; both create MLflow's tables unless one waits for the
    other (alembic then fails one with "Online migration expected to match one row")."""
    import yaml

    _tiny_repo_for_tune(stage_repo, str(stage_repo / "tune" / "journal.log"), pruner="none")
    params = yaml.safe_load((stage_repo / "params.yaml").read_text())
    params["tracking"]["enabled"] = True
    (stage_repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert not (stage_repo / "mlflow.db").exists()
    _finish([_tune(stage_repo, 1), _tune(stage_repo, 1)])  # the race is at the start
    assert len(_drawn(stage_repo)) == 2


# One worker of a team: opens the study once every worker is ready, so they race for its parent run.
_OPEN = """
import sys, time
from pathlib import Path
from src.config.schema import config_from_dict
from src.tuning import runner
from src.tuning.storage import storage_for
from tests.conftest import tiny_params
from tests.test_tune import _space

url, uri, ready, n = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
base = config_from_dict(
    tiny_params(model={"lstm_size": 16, "num_layers": 1}, tracking={"enabled": True, "experiment": "race"})
)
storage = storage_for(url, Path("unused.log"))
(ready / str(time.time_ns())).touch()
while len(list(ready.iterdir())) < n:
    time.sleep(0.005)
study, parent = runner.open_study(base, _space(enqueue=["defaults"]), storage, 2000, uri, log=lambda _: None)
print(parent)
"""


@pytest.mark.parametrize("kind", ["journal", "sqlite", pytest.param("postgres", marks=needs_postgres)])
def test_workers_opening_a_new_study_at_once_share_one_parent_run_and_enqueue_once(tmp_path, kind):
    """Four workers open a new study at the same instant. Each checks that the study has no trial
    (then enqueues) and no parent run (then makes one): unless they take turns, a trial is enqueued
    twice, or two workers log their trials under different parents."""
    from src.tracking.store import connect, experiment_id

    database = f"karnna_race_{os.getpid()}"
    url = {
        "journal": lambda: str(tmp_path / "study.log"),
        "sqlite": lambda: f"sqlite:///{tmp_path / 'study.db'}",
        "postgres": lambda: _database(database),
    }[kind]()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    storage_for(url, tmp_path / "unused.log")  # the tables, made once
    client = connect(uri)
    exp = experiment_id(client, uri, "race")
    ready = tmp_path / "ready"
    ready.mkdir()
    n = 4
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _OPEN, url, uri, str(ready), str(n)],
            cwd=REPO,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(n)
    ]
    try:
        outs = [p.communicate(timeout=300) for p in procs]
        assert all(p.returncode == 0 for p in procs), outs
        parents = {out.strip() for out, _ in outs}
        assert len(parents) == 1, parents
        alive = client.search_runs([exp], "tags.`optuna.study` = 't'")
        assert [r.info.run_id for r in alive] == list(parents)
        study = optuna.load_study(study_name="t", storage=storage_for(url, tmp_path / "unused.log"))
        assert [t.user_attrs["enqueued"] for t in study.trials] == ["defaults"]
    finally:
        for p in procs:
            p.kill()
        if kind == "postgres":
            _drop(database)
