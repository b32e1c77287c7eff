"""`python -m src.sample --run <id or name>` and `--model models:/<name>@<alias>` (or /<version>):
the checkpoint comes from the tracking store the stages use (MLFLOW_TRACKING_URI here), after a
real tiny training registered in a real SQLite store."""

from __future__ import annotations

import re

import pytest

from src.model import checkpoint
from src.sample import main
from src.serving import lookup
from tests.test_tracking import corpus, run_training, tiny_config  # noqa: F401 (fixture)

ARGS = ["--prime", "Happy", "--length", "40", "--seed", "3"]


@pytest.fixture(scope="module")
def stored(corpus, tmp_path_factory):  # noqa: F811
    """One training run named tiny-exp, registered as tiny-model version 1 @champion."""
    folder = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    run_id, _, registration = run_training(
        tiny_config(tracking={"model_name": "tiny-model"}), uri, corpus, folder / "run"
    )
    assert registration.version == "1" and registration.champion
    return uri, run_id, folder / "run"


@pytest.fixture
def store_env(stored, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", stored[0])
    return stored


def text(argv, capsys) -> str:
    assert main(argv + ARGS) == 0
    return capsys.readouterr().out


def test_a_run_by_id_or_name_and_a_model_by_alias_or_version_sample_their_checkpoints(store_env, capsys):
    uri, run_id, folder = store_env
    best = text(["--checkpoint", str(folder / "best.pt")], capsys)
    last = text(["--checkpoint", str(folder / "last.pt")], capsys)
    assert best.startswith("Happy") and len(best) == len("Happy") + 40 + 1
    assert text(["--run", run_id], capsys) == best
    assert text(["--run", "tiny-exp"], capsys) == best
    assert text(["--run", "tiny-exp", "--which", "last"], capsys) == last
    assert text(["--model", "models:/tiny-model@champion"], capsys) == best
    assert text(["--model", "models:/tiny-model/1"], capsys) == best


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--run", "no-such-run"],
            r"no MLflow run has the id or name 'no-such-run' in sqlite:.*; the latest runs: 'tiny-exp' \(",
        ),
        (["--run", "0" * 32], r"no MLflow run has the id or name '0{32}'.*'tiny-exp'"),
        (
            ["--model", "models:/tiny-model@best"],
            r"model 'tiny-model' has no alias 'best' .*; it has @champion \(version 1\), versions 1",
        ),
        (["--model", "models:/tiny-model/7"], r"model 'tiny-model' has no version 7 .*; its versions: 1"),
        (["--model", "models:/other@champion"], r"no registered model 'other' in .*; registered: .*tiny-model"),
        (["--model", "runs:/abc/model"], r"--model 'runs:/abc/model': expected models:/<name>@<alias>"),
    ],
)
def test_what_is_not_in_the_store_is_one_line_naming_what_is(store_env, capsys, argv, message):
    assert main(argv + ARGS) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1, err
    assert re.match("error: " + message, err), err


def test_which_goes_with_run_only(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--which", "last"])
    assert stop.value.code == 2 and "--which goes with --run" in capsys.readouterr().err


def test_which_picks_the_runs_best_or_last_checkpoint(stored, tmp_path):
    """last.pt carries the resume state, best.pt does not (their weights may be the same)."""
    uri, run_id, _ = stored
    last = lookup.run_checkpoint(uri, run_id, "last", tmp_path / "l")
    best = lookup.run_checkpoint(uri, run_id, "best", tmp_path / "b")
    assert (last.name, best.name) == ("last.pt", "best.pt")
    assert "resume" in checkpoint.load_payload(last) and "resume" not in checkpoint.load_payload(best)
