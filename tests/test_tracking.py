"""MLflow tracking against real stores: SQLite files in tmp_path, a real `mlflow server` and a real
`mlflow models serve`, each on a free loopback port. conftest's tiny model on a few KB of text
keeps each training to a second or two."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import mlflow
import mlflow.pyfunc
import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from src.config.schema import config_from_dict
from src.data.splits import split_ids
from src.data.vocab import build_vocab
from src.generation.sampling import generate
from src.model import checkpoint
from src.serving import pyfunc, registry
from src.tracking import runs
from src.tracking import store as store_module
from src.training import evaluate
from src.training.loop import train
from src.training.state import TrainPaths, plan_resume
from src.utils import repo
from src.utils.errors import KarnnaError
from tests.conftest import TINY_TEXT, PowerCutAt, sh, tiny_params, write_params

MLFLOW = str(Path(sys.executable).with_name("mlflow"))

# conftest's tiny model, with tracking on; one thread leaves the other core to the servers.
TRACKED = {
    "train": {"max_steps": 20, "num_threads": 1},
    "sample": {"prime": "Happy"},
    "tracking": {"enabled": True, "log_every": 2},
}
CONTEXT = {"git_commit": "0123abcd", "dvc_exp_name": "tiny-exp", "data_hash": "feedbeef"}


def tiny_config(**sections):
    params = tiny_params(**TRACKED)
    for section, values in sections.items():
        params[section].update(values)
    return config_from_dict(params)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    vocab = build_vocab(TINY_TEXT, "lf")
    vocab.save(folder / "vocab.json")
    split = split_ids(vocab.encode(TINY_TEXT), 0.2, 0.0)
    return vocab, split.train, split.val, folder / "vocab.json"


def run_training(cfg, uri, corpus, workdir: Path, context=CONTEXT, fingerprint="tiny-data"):
    """What the train, evaluate and register stages do, into `workdir`:
    -> (run id, TrainResult, Registration; None with tracking off)."""
    vocab, train_ids, val_ids, vocab_file = corpus
    workdir.mkdir(parents=True, exist_ok=True)
    paths = TrainPaths(best=workdir / "best.pt", last=workdir / "last.pt")
    params_file = workdir / "params.yaml"
    params_file.write_text("model:\n  lstm_size: 32\n")
    with runs.start_training_run(cfg, uri, context) as reporter:
        result = train(cfg, vocab, train_ids, val_ids, paths, reporter=reporter, progress=False, log=lambda _: None)
        reporter.finish_training(result, best=paths.best, last=paths.last, vocab=vocab_file, params_file=params_file)
    if reporter.run_id is None:
        return None, result, None
    return reporter.run_id, result, register_checkpoint(cfg, uri, reporter.run_id, paths.best, val_ids, fingerprint)


def register_checkpoint(cfg, uri, run_id, best: Path, val_ids, fingerprint, score=None):
    """The register stage on `best`, scored in fp32 as the evaluate stage scores it."""
    model, _, payload = checkpoint.load(best)
    if score is None:
        ids = torch.from_numpy(val_ids.astype(np.int64))
        score = evaluate.stream_loss(model, ids, cfg.evaluate.rows, cfg.evaluate.chunk_len)
    return registry.register(
        uri,
        run_id,
        best,
        step=payload["step"],
        score=score,
        fingerprint=fingerprint,
        model_name=cfg.tracking.model_name,
        input_example={"prime": "Happy", "length": 50},
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store for the module (creating its tables takes seconds)."""
    folder = tmp_path_factory.mktemp("store")
    return f"sqlite:///{folder / 'mlflow.db'}", folder


@pytest.fixture(scope="module")
def trained(store, corpus, tmp_path_factory):
    """One training run in the module's store, registered as tiny-model@champion."""
    uri, _ = store
    cfg = tiny_config(tracking={"model_name": "tiny-model"})
    run_id, result, registration = run_training(cfg, uri, corpus, tmp_path_factory.mktemp("run"))
    return run_id, result, registration


def client_for(uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args[:3]} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"{url} did not answer within {timeout} s:\n{log.read_text()[-3000:]}")


def serve_command(model_uri: str, port: int) -> list[str]:
    """`mlflow models serve` of a registered model on 127.0.0.1, one worker, this environment's packages."""
    return [
        MLFLOW,
        "models",
        "serve",
        "-m",
        model_uri,
        "--env-manager",
        "local",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-w",
        "1",
    ]


def start_server(args: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    # A session of its own, so teardown can stop the server's worker processes too.
    with log.open("w") as out:
        return subprocess.Popen(
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", **(env or {})},
            start_new_session=True,
        )


def stop_server(proc: subprocess.Popen) -> None:
    """The whole process group, even when the server's own process has already exited."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# --- a run in a SQLite store ------------------------------------------------------------------


def test_training_run_records_params_metrics_and_artifacts(store, corpus, trained, tmp_path):
    uri, folder = store
    run_id, result, registration = trained
    client = client_for(uri)
    run = client.get_run(run_id)

    assert run.info.status == "FINISHED"
    assert run.info.run_name == "tiny-exp"
    assert run.info.artifact_uri.startswith((folder / "mlartifacts").as_uri())
    cfg = tiny_config(tracking={"model_name": "tiny-model"})
    params = run.data.params
    for key, value in cfg.flat().items():
        assert params[key] == ("null" if value is None else str(value)), key
    assert params["git_commit"] == "0123abcd" and params["data_hash"] == "feedbeef"
    assert params["n_params"] == str(result.n_params) and params["vocab_size"] == str(corpus[0].size)
    assert {"train_chars", "val_chars", "params_per_char", "device", "torch_version", "mlflow_version"} <= set(params)
    assert run.data.tags["mlflow.source.git.commit"] == "0123abcd"

    def history(key):
        return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]

    assert [s for s, _ in history("train_loss")] == list(range(2, 21, 2))  # every tracking.log_every
    assert [s for s, _ in history("val_loss")] == [s for s, _ in result.val_history] == [10, 20]
    assert [v for _, v in history("val_loss")] == pytest.approx([v for _, v in result.val_history])
    assert [s for s, _ in history("val_bpc")] == [10, 20]
    for key in ("lr", "grad_norm", "chars_per_sec"):
        assert history(key), key
    assert run.data.metrics["best_val_loss"] == pytest.approx(result.best_val_loss)
    assert run.data.metrics["n_params"] == result.n_params

    def listing(path=None):
        return {a.path for a in client.list_artifacts(run_id, path)}

    assert {"checkpoints", "vocab.json", "loss_curve.png", "params.yaml"} <= listing()
    assert listing("checkpoints") == {"checkpoints/best.pt", "checkpoints/last.pt"}
    png = Path(client.download_artifacts(run_id, "loss_curve.png", str(tmp_path)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    best = Path(client.download_artifacts(run_id, "checkpoints/best.pt", str(tmp_path)))
    assert checkpoint.load_payload(best)["run_id"] == run_id  # what evaluate and sample follow

    assert [o.step for o in run.outputs.model_outputs] == [result.best_step]
    version = client.get_model_version("tiny-model", registration.version)
    assert version.run_id == run_id and registration.champion


def test_evaluate_and_sample_results_join_the_training_run(store, trained, tmp_path):
    uri, _ = store
    run_id, result, _ = trained
    report = tmp_path / "eval.json"
    report.write_text('{"val": {"loss": 2.5}}\n')
    runs.log_to_run(run_id, uri, metrics={"eval_val_loss": 2.5}, artifacts=[report], tags={"sample": "Far"}, step=7)
    run = client_for(uri).get_run(run_id)
    assert run.data.metrics["eval_val_loss"] == 2.5
    assert run.data.tags["sample"] == "Far"
    assert "eval.json" in {a.path for a in client_for(uri).list_artifacts(run_id)}
    runs.log_to_run(None, uri, metrics={"ignored": 1.0})  # trained with tracking off: nothing


def test_log_to_a_run_the_store_lacks_is_a_clear_error(store):
    uri, _ = store
    with pytest.raises(KarnnaError, match="not in .*MLFLOW_TRACKING_URI"):
        runs.log_to_run("0" * 32, uri, metrics={"x": 1.0})


def test_metrics_are_buffered_until_flush(store):
    uri, _ = store
    client = client_for(uri)
    with runs.start_training_run(tiny_config(), uri) as reporter:
        reporter.log_metrics({"train_loss": 3.0}, step=1)
        reporter.log_metrics({"train_loss": 2.0}, step=2)
        assert client.get_metric_history(reporter.run_id, "train_loss") == []
        reporter.flush()
        reporter.wait()  # flush() hands the batch to the sender thread; this waits for the store
        assert [m.value for m in client.get_metric_history(reporter.run_id, "train_loss")] == [3.0, 2.0]
        reporter.log_metrics({"train_loss": 1.0}, step=3)
    # leaving the run sends what is still waiting, and stops the sender thread
    assert len(client.get_metric_history(reporter.run_id, "train_loss")) == 3
    assert not [t for t in threading.enumerate() if t.name.startswith("mlflow-send")]


def test_an_exception_ends_the_run_failed_with_the_reason(store):
    uri, _ = store
    with pytest.raises(KarnnaError):
        with runs.start_training_run(tiny_config(), uri) as reporter:
            reporter.log_metrics({"train_loss": 3.0}, step=1)
            raise KarnnaError("training loss is nan at step 1")
    run = client_for(uri).get_run(reporter.run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["failure_reason"] == "KarnnaError: training loss is nan at step 1"
    assert run.data.metrics["train_loss"] == 3.0  # logged before the failure, kept


def test_a_tag_longer_than_the_store_takes_is_cut_not_refused(store, monkeypatch):
    """Every tag goes through store.tag_value: a long sample head, a long failure reason. (MLflow
    cuts them too, with a warning, unless MLFLOW_TRUNCATE_LONG_VALUES is false; then it refuses.)"""
    monkeypatch.setenv("MLFLOW_TRUNCATE_LONG_VALUES", "false")
    uri, _ = store
    with pytest.raises(KarnnaError):
        with runs.start_training_run(tiny_config(), uri) as reporter:
            raise KarnnaError("x" * 20_000)
    runs.log_to_run(reporter.run_id, uri, tags={"sample": "y" * 20_000})
    tags = client_for(uri).get_run(reporter.run_id).data.tags
    assert tags["failure_reason"] == ("KarnnaError: " + "x" * 20_000)[: store_module.TAG_LIMIT]
    assert tags["sample"] == "y" * store_module.TAG_LIMIT


def test_a_resumed_training_continues_its_run(store):
    uri, _ = store
    client = client_for(uri)
    with pytest.raises(KarnnaError):
        with runs.start_training_run(tiny_config(), uri, CONTEXT) as first:
            first.log_params({"n_params": 10})
            first.log_metrics({"train_loss": 3.0}, step=1)
            raise KarnnaError("interrupted")
    # log_interval may change across a resume; the run keeps the value it started with
    changed = tiny_config(train={"log_interval": 7})
    context = {**CONTEXT, "git_commit": "fedcba98"}
    with runs.start_training_run(changed, uri, context, resume_run_id=first.run_id) as second:
        second.log_params({"n_params": 10})
        second.log_metrics({"train_loss": 2.0}, step=2)
    assert second.run_id == first.run_id
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED" and "failure_reason" not in run.data.tags
    assert run.data.params["train.log_interval"] == "5" and run.data.params["git_commit"] == "0123abcd"
    assert [m.value for m in client.get_metric_history(first.run_id, "train_loss")] == [3.0, 2.0]
    # a run id this store does not have (another store, deleted): a new run
    with runs.start_training_run(tiny_config(), uri, resume_run_id="0" * 32) as third:
        pass
    assert third.run_id != first.run_id


def test_an_interrupted_training_resumed_from_last_pt_is_one_run(store, corpus, tmp_path):
    uri, _ = store
    vocab, train_ids, val_ids, _ = corpus
    cfg = tiny_config(train={"checkpoint_interval": 5}, tracking={"model_name": "resume-model"})
    paths = TrainPaths(best=tmp_path / "best.pt", last=tmp_path / "last.pt")
    with pytest.raises(RuntimeError):
        with runs.start_training_run(cfg, uri) as reporter:
            train(
                cfg,
                vocab,
                train_ids,
                val_ids,
                paths,
                reporter=PowerCutAt(reporter, 12),
                progress=False,
                log=lambda _: None,
            )
    resume = plan_resume(cfg, train_ids, val_ids, paths, log=lambda _: None)
    assert resume is not None and resume["run_id"] == reporter.run_id
    with runs.start_training_run(cfg, uri, resume_run_id=resume["run_id"]) as again:
        result = train(
            cfg, vocab, train_ids, val_ids, paths, reporter=again, resume=resume, progress=False, log=lambda _: None
        )
    assert again.run_id == reporter.run_id and 0 < result.resumed_from < 20
    client = client_for(uri)
    assert client.get_run(again.run_id).info.status == "FINISHED"
    assert sorted({m.step for m in client.get_metric_history(again.run_id, "val_loss")}) == [10, 20]
    assert {m.step for m in client.get_metric_history(again.run_id, "train_loss")} == set(range(2, 21, 2))
    assert checkpoint.load_payload(paths.best)["run_id"] == again.run_id


def test_tracking_off_trains_and_records_nothing(corpus, tmp_path):
    db = tmp_path / "mlflow.db"
    cfg = tiny_config(tracking={"enabled": False})
    run_id, result, registration = run_training(cfg, f"sqlite:///{db}", corpus, tmp_path / "run")
    assert run_id is None and registration is None
    assert result.steps == 20
    assert checkpoint.load_payload(tmp_path / "run" / "best.pt")["run_id"] is None
    assert not db.exists()


def test_a_run_leaves_no_store_in_the_working_directory(store, corpus, tmp_path, monkeypatch):
    # MLflow falls back to ./mlflow.db wherever the process-wide tracking URI is consulted.
    uri, _ = store
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_training(tiny_config(tracking={"model_name": "cwd-model"}), uri, corpus, tmp_path / "run")
    assert list(cwd.iterdir()) == []


def test_the_default_store_is_mlflow_tracking_uri_else_the_main_repos_mlflow_db():
    main = Path("/srv/karnna")
    copy = main / ".dvc" / "tmp" / "exps" / "tmpab12"  # `dvc exp run --temp` or a queued run
    assert repo.tracking_uri({}, main) == repo.tracking_uri({}, copy) == "sqlite:////srv/karnna/mlflow.db"
    assert repo.tracking_uri({"MLFLOW_TRACKING_URI": ""}, copy) == "sqlite:////srv/karnna/mlflow.db"
    assert repo.tracking_uri({"MLFLOW_TRACKING_URI": "http://t:5000"}, copy) == "http://t:5000"
    assert repo.main_repo_root(Path("/home/u/.dvc/karnna")) == Path("/home/u/.dvc/karnna")  # not DVC's copy


def test_unreachable_server_is_a_clear_error_before_training(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(KarnnaError, match=f"{uri} is unreachable"):
        with runs.start_training_run(tiny_config(), uri):
            pytest.fail("training started")
    assert time.monotonic() - start < 10
    with pytest.raises(KarnnaError, match="does not exist"):
        with runs.start_training_run(tiny_config(), f"sqlite:///{tmp_path / 'missing' / 'mlflow.db'}"):
            pytest.fail("training started")


def test_the_experiment_is_tagged_for_model_training_even_when_made_elsewhere(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client_for(uri).create_experiment("made-by-hand")
    with runs.start_training_run(tiny_config(tracking={"experiment": "made-by-hand"}), uri):
        pass
    tags = client_for(uri).get_experiment_by_name("made-by-hand").tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"


def test_dataset_inputs_name_a_url_source(store):
    uri, _ = store
    url = "https://www.gutenberg.org/cache/epub/1399/pg1399.txt"
    info = runs.DatasetInfo("pg1399-train", "0" * 32, url, "training", 123)
    with runs.start_training_run(tiny_config(), uri, datasets=[info]) as reporter:
        pass
    (given,) = client_for(uri).get_run(reporter.run_id).inputs.dataset_inputs
    assert (given.dataset.name, given.dataset.digest, given.dataset.source_type) == ("pg1399-train", "0" * 32, "http")
    assert json.loads(given.dataset.source) == {"url": url}
    assert [(t.key, t.value) for t in given.tags] == [("mlflow.data.context", "training")]


# --- the registered model ---------------------------------------------------------------------


def test_champion_loads_by_alias_and_generates(store, trained, monkeypatch):
    uri, _ = store
    run_id, _, _ = trained
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    model = mlflow.pyfunc.load_model("models:/tiny-model@champion")
    assert model.metadata.run_id == run_id
    texts = model.predict({"prime": ["Happy", "The wife"], "length": [30, 10], "seed": [7, 7]})
    assert [len(t) for t in texts] == [35, 18]
    assert texts[0].startswith("Happy") and texts[1].startswith("The wife")
    # the same characters as src.sample from the run's checkpoint with the same settings
    ckpt = Path(MlflowClient(uri).download_artifacts(run_id, "checkpoints/best.pt"))
    lstm, vocab, _ = checkpoint.load(ckpt)
    assert texts[0] == generate(lstm, vocab, "Happy", 30, top_k=5, temperature=1.0, seed=7)[0]
    assert len(model.predict({"prime": ["Far"]})[0]) == 3 + pyfunc.DEFAULT_LENGTH
    assert model.predict([{"prime": "Far", "length": 5, "seed": 1}]) == model.predict(
        {"prime": "Far", "length": 5, "seed": 1}
    )
    assert model.metadata.get_input_schema().input_names() == ["prime", "length", "temperature", "top_k", "seed"]


def test_the_registered_model_holds_no_pickle(store, trained, tmp_path, monkeypatch):
    """Models from code: a code file names the class; weights and vocabulary are plain artifacts."""
    uri, _ = store
    client = client_for(uri)
    source = client.get_model_version("tiny-model", "1").source
    folder = Path(
        mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(tmp_path / "m"), tracking_uri=uri)
    )
    files = [p for p in folder.rglob("*") if p.is_file()]
    pickles = [p for p in files if p.suffix in (".pkl", ".pickle") or p.read_bytes()[:1] == b"\x80"]
    assert pickles == [], f"pickled files in the served model: {pickles}"
    flavour = yaml.safe_load((folder / "MLmodel").read_text())["flavors"]["python_function"]
    assert flavour["model_code_path"].endswith("served_model.py") and "python_model" not in flavour
    assert {p.name for p in files} >= {"best.pt", "vocab.json", "served_model.py"}
    # the checkpoint artifact is a weights-only checkpoint
    assert checkpoint.load_payload(next(p for p in files if p.name == "best.pt"))["step"] > 0
    # and it loads and generates where MLflow refuses to unpickle models
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    assert len(mlflow.pyfunc.load_model(str(folder)).predict({"prime": "Far", "length": 7})[0]) == 10


# --- real servers -----------------------------------------------------------------------------


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    log = tmp_path / "server.log"
    proc = start_server(
        [
            MLFLOW,
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            str(tmp_path / "server-artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        log,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc, log)
        yield f"http://127.0.0.1:{port}", tmp_path
    finally:
        stop_server(proc)


@pytest.mark.slow
def test_logs_to_a_tracking_server_over_http(mlflow_server, corpus):
    uri, folder = mlflow_server
    cfg = tiny_config(tracking={"model_name": "http-model"})
    run_id, result, registration = run_training(cfg, uri, corpus, folder / "run")
    client = client_for(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.lstm_size"] == str(cfg.model.lstm_size)
    assert [m.step for m in client.get_metric_history(run_id, "val_loss")] == [10, 20]
    assert {"checkpoints", "loss_curve.png", "vocab.json"} <= {a.path for a in client.list_artifacts(run_id)}
    assert any((folder / "server-artifacts").rglob("best.pt"))  # the server stored the files
    assert registration.champion
    assert {k: str(v) for k, v in client.get_registered_model("http-model").aliases.items()} == {
        "champion": registration.version
    }
    runs.log_to_run(run_id, uri, metrics={"eval_val_loss": 1.5})
    assert client.get_run(run_id).data.metrics["eval_val_loss"] == 1.5


@pytest.mark.slow
def test_models_serve_answers_invocations(store, trained, tmp_path):
    uri, _ = store
    port = free_port()
    log = tmp_path / "serve.log"
    proc = start_server(
        serve_command("models:/tiny-model@champion", port),
        log,
        env={"MLFLOW_TRACKING_URI": uri},
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", proc, log)
        body = json.dumps({"dataframe_records": [{"prime": "Happy", "length": 40, "seed": 3}]}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
    finally:
        stop_server(proc)
    (text,) = answer["predictions"]
    assert text.startswith("Happy") and len(text) == 45


@pytest.mark.slow
def test_the_stages_log_one_run_into_the_repo_store(stage_repo, monkeypatch):
    """train, evaluate and sample as `dvc repro` runs them, with the default store: mlflow.db
    at the repo root, artifacts beside it."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    params = yaml.safe_load((stage_repo / "params.yaml").read_text())
    params["tracking"]["enabled"] = True
    write_params(stage_repo, params)
    # torch's default of one thread per core crawls when another process holds a core
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    for name in ("corpus", "encode", "split", "train", "evaluate", "sample", "register"):
        sh(stage_repo, sys.executable, "-m", f"pipeline.{name}")

    client = client_for(f"sqlite:///{stage_repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(params["tracking"]["experiment"])
    assert experiment.artifact_location == (stage_repo / "mlartifacts").as_uri()
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "repro"  # no git here; in a checkout "<short commit> repro"
    # The runs table's Dataset column: the split files under DVC's hash, the corpus as source.
    inputs = {d.dataset.name: d.dataset for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"corpus-train", "corpus-val"}
    for name, split in (("corpus-train", "train"), ("corpus-val", "val")):
        data = (stage_repo / "data" / "split" / f"{split}.npy").read_bytes()
        assert inputs[name].digest == hashlib.md5(data).hexdigest()
        assert json.loads(inputs[name].source) == {"uri": Path(params["data"]["path"]).as_uri()}
        assert json.loads(inputs[name].profile)["num_chars"] > 0
    assert len(run.data.params["data_hash"]) == 64
    assert {"best_val_loss", "eval_val_loss", "eval_val_bpc"} <= set(run.data.metrics)
    assert run.data.tags["sample"] == (stage_repo / "samples" / "sample.txt").read_text().rstrip("\n")[:500]
    files = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"params.yaml", "history", "loss_curve.png", "eval.json", "sample.txt"} <= files
    name = params["tracking"]["model_name"]
    assert {k: str(v) for k, v in client.get_registered_model(name).aliases.items()} == {"champion": "1"}
    # the register stage scored it with evaluate's fp32 loss, and said so
    decided = json.loads((stage_repo / "models" / "registration.json").read_text())
    assert decided["champion"] and decided["version"] == "1" and decided["run_id"] == run.info.run_id
    version = client.get_model_version(name, "1")
    assert float(version.tags[registry.SCORE_TAG]) == run.data.metrics["eval_val_loss"] == decided["score"]
    assert version.tags[registry.FINGERPRINT_TAG] == decided["fingerprint"] == run.data.tags["data_fingerprint"]
