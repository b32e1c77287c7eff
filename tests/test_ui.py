"""`make ui` and `make dashboard` (python -m src.ui): the address each prints and the server each
becomes, on 127.0.0.1; real SQLite stores and a real Optuna journal."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from src import ui
from src.tracking.store import connect, experiment_id
from src.utils import repo
from tests.conftest import REPO
from tests.test_tracking import free_port, start_server, stop_server, wait_http


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return uri, experiment_id(connect(uri), uri, "karnna")


def test_mlflow_opens_the_experiments_training_view_on_loopback(store):
    uri, exp_id = store
    url, cmd = ui.mlflow_ui(uri, "karnna", 5123)
    assert url == f"http://127.0.0.1:5123/#/experiments/{exp_id}?workflowType=machine_learning"
    assert cmd[1:] == ["ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", "5123"]
    # an experiment not made yet: the list of experiments
    assert ui.mlflow_ui(uri, "other", 5123)[0] == "http://127.0.0.1:5123/#/experiments"


def test_a_store_not_made_yet_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert ui.main(["mlflow", "--params", str(REPO / "params.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.match(r"error: tracking store .*does not exist yet; run `make repro`", err)
    assert not (tmp_path / "mlflow.db").exists()


def test_dashboard_serves_the_studys_storage(tmp_path, monkeypatch, capsys):
    url, cmd = ui.dashboard("postgresql://u:p@db/karnna_tune", 8099)
    assert url == "http://127.0.0.1:8099/dashboard"
    assert cmd[1:] == ["postgresql://u:p@db/karnna_tune", "--host", "127.0.0.1", "--port", "8099"]
    monkeypatch.setattr(ui, "FILES", repo.Layout(tmp_path))  # a checkout with no study yet
    assert ui.main(["dashboard", "--params", str(REPO / "params.yaml")]) == 2
    assert "journal.log does not exist yet: no study to show; run `python -m src.tune`" in capsys.readouterr().err


def start(view: str, port: int, log: Path, env: dict, params: Path):
    proc = start_server([sys.executable, "-m", "src.ui", view, "--port", str(port), "--params", str(params)], log, env)
    deadline = time.monotonic() + 60
    while f"{view}: http" not in log.read_text() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    line = next((x for x in log.read_text().splitlines() if x.startswith(f"{view}: ")), "")
    return proc, line.split(": ", 1)[-1]


@pytest.mark.slow
def test_both_servers_answer_at_the_address_they_print(store, tmp_path):
    uri, exp_id = store
    params = tmp_path / "params.yaml"
    journal = tmp_path / "journal.log"
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["tune"]["storage"] = str(journal)
    params.write_text(yaml.safe_dump(raw))
    study = optuna.create_study(
        study_name="karnna",
        storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal))),
    )
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    for view, expected in (
        ("mlflow", f"/#/experiments/{exp_id}?workflowType=machine_learning"),
        ("dashboard", "/dashboard"),
    ):
        port = free_port()
        log = tmp_path / f"{view}.log"
        proc, url = start(view, port, log, {"MLFLOW_TRACKING_URI": uri}, params)
        try:
            assert url == f"http://127.0.0.1:{port}{expected}", log.read_text()
            wait_http(url.split("#")[0], proc, log)
        finally:
            stop_server(proc)
