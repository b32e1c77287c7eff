"""A tracking server that goes away during training: a real `mlflow server` process killed with
SIGKILL mid-training, then restarted or not, and a training killed with SIGKILL in between.
Training goes on, what it logs is kept in models/tracking-pending/ and reaches the same run once,
in order, when the server answers again (docs/TRACKING.md, "When the store is away")."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from src.tracking import runs, wal
from src.training.loop import train
from src.training.state import TrainPaths, plan_resume
from tests.conftest import REPO, sh, write_params
from tests.test_tracking import (  # noqa: F401 (corpus is a fixture)
    MLFLOW,
    client_for,
    corpus,
    free_port,
    start_server,
    stop_server,
    tiny_config,
    wait_http,
)

AWAY = "is not answering"
BACK = "answers again"
OUTAGE = {"train": {"max_steps": 30, "checkpoint_interval": 10}}


class Server:
    """`mlflow server` on one port and one SQLite file, to be killed and started again."""

    def __init__(self, folder: Path):
        self.folder, self.port = folder, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self) -> None:
        args = [MLFLOW, "server", "--backend-store-uri", f"sqlite:///{self.folder / 'server.db'}"]
        args += ["--artifacts-destination", str(self.folder / "server-artifacts")]
        args += ["--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        log = self.folder / "server.log"
        self.proc = start_server(args, log)
        wait_http(f"{self.uri}/health", self.proc, log)

    def kill(self) -> None:
        """As a crash or a lost machine: SIGKILL to the server and its workers."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@pytest.fixture
def server(tmp_path, monkeypatch):
    # What the stages' main() sets: MLflow's client gives up on a dead server in seconds.
    for name, value in wal.CLIENT_LIMITS.items():
        monkeypatch.setenv(name, value)
    server = Server(tmp_path)
    server.start()
    try:
        yield server
    finally:
        stop_server(server.proc)


def assert_logged_once(uri: str, run_id: str, steps: int) -> None:
    """Every point once: train_loss every 2 steps (tracking.log_every), val_loss every 10."""
    client = client_for(uri)
    assert client.get_run(run_id).info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == list(range(2, steps + 1, 2))
    assert [m.step for m in client.get_metric_history(run_id, "val_loss")] == list(range(10, steps + 1, 10))
    assert [m.step for m in client.get_metric_history(run_id, "lr")] == list(range(5, steps + 1, 5))
    assert "best_val_loss" in client.get_run(run_id).data.metrics
    assert {"checkpoints", "loss_curve.png", "vocab.json"} <= {a.path for a in client.list_artifacts(run_id)}


def train_run(cfg, uri, corpus, folder: Path, hooks=(), resume_run_id=None, resume=None, say=None):  # noqa: F811
    vocab, train_ids, val_ids, vocab_file = corpus
    paths = TrainPaths(best=folder / "best.pt", last=folder / "last.pt")
    shown = {"say": say} if say else {}
    with runs.start_training_run(
        cfg, uri, resume_run_id=resume_run_id, pending=folder / wal.FOLDER, **shown
    ) as reporter:
        result = train(
            cfg, vocab, train_ids, val_ids, paths, reporter, False, lambda _: None, resume=resume, on_eval=hooks
        )
        reporter.finish_training(result, best=paths.best, last=paths.last, vocab=vocab_file)
    return reporter.run_id


@pytest.mark.slow
def test_a_server_killed_and_restarted_mid_training_loses_nothing(server, corpus, tmp_path):  # noqa: F811
    lines = []

    def outage(step, _):
        if step == 10:
            server.kill()
        elif step == 20:  # once the sender has met the dead server with step 20's batch
            deadline = time.monotonic() + 60
            while not lines and time.monotonic() < deadline:
                time.sleep(0.1)
            server.start()

    run_id = train_run(tiny_config(**OUTAGE), server.uri, corpus, tmp_path / "models", [outage], say=lines.append)
    assert len(lines) == 2 and AWAY in lines[0] and BACK in lines[1], lines
    assert_logged_once(server.uri, run_id, 30)
    assert not (tmp_path / "models" / wal.FOLDER).exists()
    # The replay's premise, on this REST server: a point sent again changes nothing.
    client = client_for(server.uri)
    point = client.get_metric_history(run_id, "val_loss")[0]
    record = {"run": run_id, "metrics": [[point.key, point.value, point.timestamp, point.step]]}
    wal.send(client, record)
    wal.send(client, record)
    assert len(client.get_metric_history(run_id, "val_loss")) == 3


# The train stage as DVC runs it, with the server killed for good just after step 20's evaluation.
KILL_SERVER_AT_20 = """
import os, signal, sys
import src.training.loop
validate = src.training.loop.validate
def validate_then_kill(ctx, state):
    validate(ctx, state)
    if state.step == 20:
        os.killpg({pgid}, signal.SIGKILL)
src.training.loop.validate = validate_then_kill
from pipeline.train import main
sys.exit(main())
"""


@pytest.mark.slow
def test_a_server_gone_for_good_costs_no_training_and_sync_completes_the_run(server, stage_repo, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    params = yaml.safe_load((stage_repo / "params.yaml").read_text())
    params["tracking"].update(enabled=True, log_every=2)
    params["train"].update(checkpoint_interval=10, eval_interval=10, max_steps=30, log_interval=5)
    write_params(stage_repo, params)
    for name in ("corpus", "encode", "split"):
        sh(stage_repo, sys.executable, "-m", f"pipeline.{name}")
    trained = sh(stage_repo, sys.executable, "-c", KILL_SERVER_AT_20.format(pgid=server.proc.pid), check=False)
    server.proc.wait()
    assert trained.returncode == 0, trained.stderr[-3000:]
    lines = [line for line in trained.stderr.splitlines() if line.startswith("tracking:")]
    assert len(lines) == 2 and AWAY in lines[0] and wal.SYNC_COMMAND in lines[1], trained.stderr
    for output in ("models/best.pt", "models/last.pt", "metrics/train.json", "plots/train_loss.csv"):
        assert (stage_repo / output).is_file(), output
    pending = stage_repo / "models" / wal.FOLDER / "log.jsonl"
    assert pending.is_file()
    # The next stage keeps its results there too, rather than failing.
    evaluated = sh(stage_repo, sys.executable, "-m", "pipeline.evaluate", check=False)
    assert evaluated.returncode == 0 and AWAY in evaluated.stderr, evaluated.stderr[-3000:]
    assert any("eval_val_loss" in line for line in pending.read_text().splitlines())

    # register needs the store: one line, and the file stays for later.
    refused = sh(stage_repo, sys.executable, "-m", "pipeline.register", check=False)
    assert refused.returncode == 2 and refused.stderr.startswith("error: tracking store"), refused.stderr
    assert len(refused.stderr.splitlines()) == 1 and wal.SYNC_COMMAND in refused.stderr
    kept = pending.read_bytes()

    server.start()
    synced = sh(stage_repo, sys.executable, "-m", "src.tracking_sync")
    assert "sent" in synced.stdout
    assert not pending.exists()
    client = client_for(server.uri)
    (run,) = client.search_runs([client.get_experiment_by_name(params["tracking"]["experiment"]).experiment_id])
    assert_logged_once(server.uri, run.info.run_id, 30)
    assert "eval_val_loss" in client.get_run(run.info.run_id).data.metrics
    assert "eval.json" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "nothing to send" in sh(stage_repo, sys.executable, "-m", "src.tracking_sync").stdout
    # The register stage sends a kept file too; all of it again here, and nothing doubles.
    pending.parent.mkdir()
    pending.write_bytes(kept)
    registered = sh(stage_repo, sys.executable, "-m", "pipeline.register")
    assert "sent" in registered.stdout and not pending.exists()
    assert_logged_once(server.uri, run.info.run_id, 30)


# A training that loses the server at step 10 and is killed (SIGKILL) at step 30's evaluation,
# after step 20's checkpoint: the write-ahead file holds steps 10-20, last.pt step 20.
KILLED_TRAINING = """
import os, signal, sys
from pathlib import Path
from src.data.splits import split_ids
from src.data.vocab import build_vocab
from tests.conftest import TINY_TEXT
from tests.test_tracking import tiny_config
from tests.test_tracking_outage import OUTAGE, train_run
vocab = build_vocab(TINY_TEXT, "lf")
vocab.save(Path("{folder}") / "vocab.json")
split = split_ids(vocab.encode(TINY_TEXT), 0.2, 0.0)
def outage(step, _):
    if step == 10:
        os.killpg({pgid}, signal.SIGKILL)
    if step == 30:
        os.kill(os.getpid(), signal.SIGKILL)
corpus = (vocab, split.train, split.val, Path("{folder}") / "vocab.json")
train_run(tiny_config(**OUTAGE), "{uri}", corpus, Path("{folder}"), [outage])
"""


@pytest.mark.slow
def test_a_training_killed_during_an_outage_resumes_into_the_same_run(server, corpus, tmp_path):  # noqa: F811
    folder = tmp_path / "models"
    folder.mkdir()
    script = KILLED_TRAINING.format(folder=folder, pgid=server.proc.pid, uri=server.uri)
    killed = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    server.proc.wait(timeout=60)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    kept = [json.loads(line) for line in (folder / wal.FOLDER / "log.jsonl").read_text().splitlines()]
    assert {s for r in kept for _, _, _, s in r.get("metrics", [])} >= {12, 20}

    server.start()
    cfg = tiny_config(**OUTAGE)
    _, train_ids, val_ids, _ = corpus
    resume = plan_resume(cfg, train_ids, val_ids, TrainPaths(folder / "best.pt", folder / "last.pt"), lambda _: None)
    assert resume["step"] == 20
    run_id = train_run(cfg, server.uri, corpus, folder, resume_run_id=resume["run_id"], resume=resume)
    assert run_id == kept[0]["run"]
    assert_logged_once(server.uri, run_id, 30)
    assert not (folder / wal.FOLDER).exists()


def test_a_call_to_a_dead_server_fails_in_seconds_and_counts_as_an_outage(monkeypatch):
    """MLflow's own retries (7, backoff factor 2) take minutes; the stages' bounds, seconds."""
    for name, value in wal.CLIENT_LIMITS.items():
        monkeypatch.setenv(name, value)
    client = client_for(f"http://127.0.0.1:{free_port()}")  # nothing listens there
    started = time.monotonic()
    with pytest.raises(Exception) as failed:
        wal.send(client, {"run": "0" * 32, "tags": {"a": "b"}})
    assert time.monotonic() - started < 15
    assert wal.is_outage(failed.value) and wal.reason(failed.value) == "Connection refused"


def test_sync_to_a_dead_store_is_one_line_and_keeps_the_records(tmp_path, monkeypatch, capsys):
    from src import tracking_sync

    for name, value in wal.CLIENT_LIMITS.items():
        monkeypatch.setenv(name, value)
    log = wal.WriteAheadLog(tmp_path / wal.FOLDER)
    log.append([{"uri": f"http://127.0.0.1:{free_port()}", "run": "0" * 32, "tags": {"a": "b"}}])
    assert tracking_sync.main(["--models", str(tmp_path)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: tracking store http://127.0.0.1:") and "is not answering" in line
    assert line.endswith(f"; the records stay in {tmp_path / wal.FOLDER}") and len(log.read()) == 1


def test_a_line_torn_by_a_crash_loses_no_later_record(tmp_path):
    log = wal.WriteAheadLog(tmp_path / wal.FOLDER)
    log.append([{"run": "r", "tags": {"a": "1"}}])
    with open(log.file, "ab") as f:  # killed in the middle of an append: never fsynced, never relied on
        f.write(b'{"run": "r", "metr')
    log.append([{"run": "r", "tags": {"b": "2"}}, {"run": "r", "end": "FINISHED"}])
    assert log.read() == [
        {"run": "r", "tags": {"a": "1"}},
        {"run": "r", "tags": {"b": "2"}},
        {"run": "r", "end": "FINISHED"},
    ]
    log.clear()
    log.tidy()
    assert not log.folder.exists()


def test_a_kept_artifact_is_sent_as_it_was_when_kept(tmp_path):
    """A rerun may rewrite params.yaml (or retrain the checkpoint) before the kept records are
    sent: the run gets the file it logged, not what the path holds by then."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = client_for(uri)
    run = client.create_run(client.create_experiment("e", artifact_location=(tmp_path / "art").as_uri()))
    params = tmp_path / "params.yaml"
    params.write_text("model: {dropout: 0.25}\n")
    folder = tmp_path / wal.FOLDER
    wal.WriteAheadLog(folder).append([{"uri": uri, "run": run.info.run_id, "artifact": str(params)}])
    params.write_text("model: {dropout: 0.5}\n")  # the next experiment's params
    assert wal.replay(folder, lambda line: None) == 1
    sent = client.download_artifacts(run.info.run_id, "params.yaml", str(tmp_path / "down"))
    assert Path(sent).read_text() == "model: {dropout: 0.25}\n"
    assert not folder.exists()  # the copy went with the record
