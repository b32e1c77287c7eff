"""A team's setup, used as a team would: git clones of one origin, the DVC remote in .dvc/config,
one `python -m src.tracking_server` on PostgreSQL, tuning workers sharing one study database.

Every clone runs the real pipeline (`dvc repro`) on a 60 KB slice with a tiny model, one thread.
The PostgreSQL tests need KARNNA_TEST_POSTGRES_URL (.ci/run starts a server and sets it); they
create their own databases beside the one it names and drop them afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, SHARED_CORPUS, TINY_TEXT, _env, tiny_params
from tests.test_tracking import free_port, serve_command, start_server, stop_server, wait_http

PG_URL = os.environ.get("KARNNA_TEST_POSTGRES_URL")
needs_postgres = pytest.mark.skipif(
    not PG_URL, reason="set KARNNA_TEST_POSTGRES_URL (.ci/run starts a PostgreSQL server and sets it)"
)
MODEL = "team-model"
EXPERIMENT = "team"
# What a clone of the project holds: the code and the DVC set-up, with its default remote.
PROJECT = ("src", "pipeline", "dvc.yaml", ".gitignore", ".dvcignore", ".dvc/config", ".dvc/.gitignore")
GIT_USER = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def run(cwd: Path, *args: str, env: dict | None = None, check: bool = True, timeout: float = 600):
    full = {**_env(), **GIT_USER, **(env or {})}
    full.pop("DVC_EXP_NAME", None)
    if "MLFLOW_TRACKING_URI" not in (env or {}):
        full.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(args, cwd=cwd, env=full, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def ran_stages(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")]


@pytest.fixture(scope="module")
def team(tmp_path_factory) -> Path:
    """A folder holding `origin.git`: the project with a tiny params.yaml, as a team's git server."""
    top = tmp_path_factory.mktemp("team")
    seed = top / "seed"
    for name in PROJECT:
        target = seed / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / name, target)
    corpus = SHARED_CORPUS.read_bytes()[:60_000] if SHARED_CORPUS.is_file() else (TINY_TEXT * 30).encode()
    (top / "corpus.txt").write_bytes(corpus)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    tiny = tiny_params(
        data={"path": str(top / "corpus.txt")},
        train={"max_steps": 30, "eval_interval": 15, "batch_size": 8, "seq_len": 32, "num_threads": 1},
        sample={"length": 60, "prime": "The"},
        tracking={"enabled": True, "experiment": EXPERIMENT, "model_name": MODEL, "log_every": 5},
        tune={
            "study_name": "team",
            "budget_chars": 12_000,
            "rungs": 2,
            "eval_chars": 2_000,
            "enqueue": [],
            "pruner": "none",
            "space": {
                "model.lstm_size": {"choices": [8, 16]},
                "model.num_layers": {"choices": [1]},
                "model.dropout": {"low": 0.0, "high": 0.5},
            },
        },
    )
    for section, values in tiny.items():
        params[section].update(values)
    (seed / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(seed, "git", "init", "-q", "-b", "main")
    run(seed, "git", "add", "-A")
    run(seed, "git", "commit", "-qm", "the project")
    run(top, "git", "clone", "-q", "--bare", "seed", "origin.git")
    return top


def clone(team: Path, name: str) -> Path:
    run(team, "git", "clone", "-q", "origin.git", name)
    return team / name


# --- the DVC remote ---------------------------------------------------------------------------


@pytest.mark.slow
def test_what_one_clone_pushes_a_sibling_pulls_with_nothing_to_rerun(team):
    alice = clone(team, "alice")
    first = run(alice, "dvc", "repro")
    assert {"corpus", "encode", "split", "train", "evaluate", "sample"} <= set(ran_stages(first.stdout))
    # The README's workflow: commit dvc.lock and the small outputs git keeps, push data and code.
    run(alice, "git", "add", "dvc.lock", "metrics", "plots", "samples")
    run(alice, "git", "commit", "-qm", "tiny baseline")
    run(alice, "dvc", "push")
    run(alice, "git", "push", "-q", "origin", "main")
    store = team / "dvc-storage"  # the default remote: a folder beside the checkout
    assert store.is_dir() and any(store.rglob("*"))

    bob = clone(team, "bob")
    run(bob, "dvc", "pull")
    again = run(bob, "dvc", "repro")
    assert ran_stages(again.stdout) == [], again.stdout
    assert "up to date" in run(bob, "dvc", "status").stdout
    for path in ("models/best.pt", "data/split/train.npy", "data/vocab.json"):
        assert (bob / path).read_bytes() == (alice / path).read_bytes(), path
    assert run(bob, "dvc", "metrics", "diff", "--json").stdout.strip() in ("{}", "")

    # A team's own remote overrides the default in .dvc/config.local, which git ignores.
    own = team / "team-remote"
    run(bob, "dvc", "remote", "add", "-d", "--local", "team", str(own))
    run(bob, "dvc", "push")
    assert any(p.is_file() for p in own.rglob("*"))
    assert run(bob, "git", "status", "--porcelain").stdout == ""

    # Before training, `python -m pipeline.preflight` checks the remote and the tracking store: an
    # unreachable one is one line, and the checkout is left as it was.
    assert run(bob, sys.executable, "-m", "pipeline.preflight").stdout.startswith(f"ok: DVC remote 'team': {own}")
    dead = f"http://127.0.0.1:{free_port()}"
    run(bob, "dvc", "remote", "add", "-d", "--local", "dead", f"{dead}/store")
    for env, message in (
        ({}, f"DVC remote 'dead' ({dead}/store) is unreachable"),
        ({"MLFLOW_TRACKING_URI": dead}, f"MLflow tracking server {dead} is unreachable"),
    ):
        args = ("--no-remote",) if env else ()
        failed = run(bob, sys.executable, "-m", "pipeline.preflight", *args, env=env, check=False)
        assert failed.returncode == 2 and failed.stderr.startswith(f"error: {message}"), failed.stderr
        assert failed.stderr.count("\n") == 1, failed.stderr
    assert run(bob, "git", "status", "--porcelain").stdout == ""
    assert "up to date" in run(bob, "dvc", "status").stdout


def test_the_tracking_server_refuses_an_unreachable_database_in_one_line(tmp_path):
    db = f"postgresql://karnna:s3cret@127.0.0.1:{free_port()}/karnna_mlflow"
    proc = run(
        REPO,
        sys.executable,
        "-m",
        "src.tracking_server",
        "--db",
        db,
        "--artifacts",
        str(tmp_path / "artifacts"),
        check=False,
        timeout=60,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("error: tracking database postgresql://karnna:***@127.0.0.1")
    assert proc.stderr.count("\n") == 1 and "s3cret" not in proc.stderr
    assert not (tmp_path / "artifacts").exists()  # nothing made before the check


# --- one tracking server on PostgreSQL ------------------------------------------------------------


def _database(name: str) -> str:
    """A fresh database on the test server: its URL."""
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return urllib.parse.urlparse(PG_URL)._replace(path=f"/{name}").geturl()


def _drop(name: str) -> None:
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def server(team):
    """`python -m src.tracking_server` as TEAM.md starts it, on a database of its own."""
    name = f"karnna_mlflow_{os.getpid()}"
    db = _database(name)
    port = free_port()
    log = team / "server.log"
    proc = start_server(
        [
            sys.executable,
            "-m",
            "src.tracking_server",
            "--db",
            db,
            "--artifacts",
            str(team / "artifacts"),
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        log,
        env={"PYTHONPATH": str(REPO)},
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc, log, timeout=120)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_server(proc)
        _drop(name)


def _assert_dataset_inputs(team: Path, carol: Path, repro_run) -> None:
    # The Dataset column: DVC's hash of each split file, and the corpus it came from.
    lock = yaml.safe_load((carol / "dvc.lock").read_text())
    locked = {e["path"]: e["md5"] for stage in lock["stages"].values() for e in stage.get("deps", []) if "md5" in e}
    assert "data/split/train.npy" in locked or "data/split" in locked
    dvc_md5 = {}
    for path in ("data/split/train.npy", "data/split/val.npy"):
        dvc_md5[path] = hashlib.md5((carol / path).read_bytes()).hexdigest()  # DVC 3: md5 of the bytes
        assert locked.get(path, dvc_md5[path]) == dvc_md5[path]
    inputs = {d.dataset.name: d for d in repro_run.inputs.dataset_inputs}
    assert set(inputs) == {"corpus-train", "corpus-val"}
    for name, path, context in (
        ("corpus-train", "data/split/train.npy", "training"),
        ("corpus-val", "data/split/val.npy", "validation"),
    ):
        assert inputs[name].dataset.digest == dvc_md5[path]
        assert json.loads(inputs[name].dataset.source) == {"uri": (team / "corpus.txt").as_uri()}
        assert {t.key: t.value for t in inputs[name].tags}["mlflow.data.context"] == context


def _serve_champion(team: Path, env: dict) -> None:
    # A third folder, no checkout: the model comes through the server, served offline.
    erin = team / "erin"
    erin.mkdir()
    port = free_port()
    log = team / "serve.log"
    proc = start_server(
        serve_command(f"models:/{MODEL}@champion", port),
        log,
        env={**env, "PATH": _env()["PATH"]},  # its scoring server is the venv's uvicorn
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", proc, log, timeout=120)
        body = json.dumps({"dataframe_records": [{"prime": "Anna", "length": 30, "seed": 1}]}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            (text,) = json.loads(response.read())["predictions"]
    finally:
        stop_server(proc)
    assert text.startswith("Anna") and len(text) == 34
    assert list(erin.iterdir()) == []


@pytest.mark.slow
@needs_postgres
def test_two_clones_train_into_one_server_and_a_third_folder_serves_the_champion(team, server):
    from mlflow.tracking import MlflowClient

    env = {"MLFLOW_TRACKING_URI": server}
    carol, dave = clone(team, "carol"), clone(team, "dave")
    run(carol, "dvc", "repro", env=env)
    run(dave, "dvc", "exp", "run", "-S", "model.lstm_size=24", "-n", "dave-24", env=env)

    client = MlflowClient(server, server)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    # MLflow 3 opens the experiment on its training runs, not on the GenAI overview.
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    commit = run(carol, "git", "rev-parse", "HEAD").stdout.strip()
    assert set(runs) == {f"{commit[:7]} repro", "dave-24"}
    for r in runs.values():
        assert r.info.status == "FINISHED"
        assert {"best_val_loss", "eval_val_loss", "train_loss"} <= set(r.data.metrics)
        assert "checkpoints" in {a.path for a in client.list_artifacts(r.info.run_id)}
    assert len(list((team / "artifacts").rglob("best.pt"))) >= 2  # uploaded through the server

    _assert_dataset_inputs(team, carol, runs[f"{commit[:7]} repro"])

    versions = client.search_model_versions(f"name='{MODEL}'")
    assert len(versions) == 2
    champion = client.get_registered_model(MODEL).aliases["champion"]
    assert str(champion) in {v.version for v in versions}

    _serve_champion(team, env)


# --- tuning workers sharing one study database ------------------------------------------------


@pytest.mark.slow
@needs_postgres
def test_tuning_workers_share_a_study_and_a_killed_worker_leaves_a_failed_trial(team, server):
    import optuna
    from mlflow.tracking import MlflowClient

    name = f"karnna_optuna_{os.getpid()}"
    storage = _database(name)
    try:
        frank = clone(team, "frank")
        run(frank, "dvc", "repro", "split")
        env = {**_env(), **GIT_USER, "MLFLOW_TRACKING_URI": server}
        # One trial per worker process (--n-jobs defaults to one per core): a worker killed between
        # creating a trial and its MLflow run would leave a trial without a child run to compare.
        cmd = [
            sys.executable,
            "-m",
            "src.tune",
            "--storage",
            storage,
            "--heartbeat",
            "1",
            "--no-progress",
            "--n-jobs",
            "1",
        ]
        # A study database that does not answer: one line, before any trial or MLflow run.
        client = MlflowClient(server)

        def runs_now() -> int:
            experiment = client.get_experiment_by_name(EXPERIMENT)
            return 0 if experiment is None else len(client.search_runs([experiment.experiment_id]))

        before = runs_now()
        dead = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"
        refused = run(frank, sys.executable, "-m", "src.tune", "--storage", dead, "--no-progress", env=env, check=False)
        assert refused.returncode == 2 and refused.stderr.startswith(f"error: cannot open the study storage {dead}")
        assert refused.stderr.count("\n") == 1, refused.stderr
        assert runs_now() == before

        def worker(*args: str) -> subprocess.Popen:
            return subprocess.Popen(
                [*cmd, *args], cwd=frank, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )

        # Both at work, then one killed mid-trial. A worker notices a lost trial when it starts a
        # trial after 3 missed beats (3 s here): the survivor keeps starting trials for 10 s.
        doomed, survivor = worker("--n-trials", "50"), worker("--timeout", "10")
        victim = _wait_for_running_trial(storage, doomed, survivor)
        doomed.kill()  # SIGKILL: no chance to say anything
        doomed.wait()
        out, err = survivor.communicate(timeout=600)
        assert survivor.returncode == 0, out + err

        study = optuna.load_study(study_name="team", storage=storage)
        trials = study.trials
        assert sorted(t.number for t in trials) == list(range(len(trials)))  # none lost, none twice
        lost = trials[victim]
        assert lost.state == optuna.trial.TrialState.FAIL
        assert f"no heartbeat from {lost.user_attrs['worker']}" in err
        by_survivor = [t for t in trials if t.user_attrs["worker"].endswith(f":{survivor.pid}")]
        assert len(by_survivor) >= 3 and all(t.state.is_finished() for t in trials)

        parent = study.user_attrs["mlflow_parent_run_id"]
        experiment = client.get_experiment_by_name(EXPERIMENT)
        children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
        assert sorted(int(r.data.params["optuna_trial"]) for r in children) == [t.number for t in trials]
        lost_run = client.get_run(lost.user_attrs["mlflow_run_id"])
        assert lost_run.info.status == "FAILED"
        assert lost_run.data.tags["failure_reason"].startswith("worker lost: no heartbeat")
    finally:
        _drop(name)


def _wait_for_running_trial(storage: str, proc: subprocess.Popen, other: subprocess.Popen, timeout: float = 300) -> int:
    """The number of a trial `proc` is running (its MLflow run made), once `other` has begun trials too."""
    import optuna

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None and other.poll() is None, (proc.communicate(), other.communicate())
        try:
            study = optuna.load_study(study_name="team", storage=storage)
        except KeyError:  # not created yet
            time.sleep(0.2)
            continue
        trials = study.get_trials(deepcopy=False)
        if any(t.user_attrs.get("worker", "").endswith(f":{other.pid}") for t in trials):
            for t in trials:
                if (
                    t.state == optuna.trial.TrialState.RUNNING
                    and "mlflow_run_id" in t.user_attrs
                    and t.user_attrs.get("worker", "").endswith(f":{proc.pid}")
                ):
                    return t.number
        time.sleep(0.1)
    pytest.fail("the worker never ran a trial")
