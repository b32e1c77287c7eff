"""The Optuna search: real studies on a tiny corpus slice and tiny models (seconds each)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest

from src.config.schema import TuneConfig, config_from_dict, section_from_dict, with_overrides
from src.training.report import Reporter
from src.tuning import processes, results, runner
from src.tuning import space as search
from src.tuning.storage import storage_for
from src.utils.errors import KarnnaError
from tests.conftest import _env, tiny_params

SMALL = {
    "model.lstm_size": {"choices": [8, 16]},
    "model.num_layers": {"choices": [1, 2]},
    "model.dropout": {"low": 0.0, "high": 0.5},
}


def _space(**kw) -> TuneConfig:
    base = {
        "study_name": "t",
        "n_trials": 3,
        "budget_chars": 2000,
        "rungs": 2,
        "eval_chars": 60,
        "pruner": "none",
        "space": SMALL,
        "enqueue": [],
    }
    base.update(kw)
    return section_from_dict(TuneConfig, base, "tune")


@pytest.fixture
def study_data(tiny_data):
    vocab, tr, va = tiny_data
    return runner.StudyData(vocab, tr, va)


@pytest.fixture
def base():
    return config_from_dict(tiny_params(model={"embedding_dim": 4}))


def _run(base, space, study_data, storage, **kw):
    return runner.run_study(base, space, study_data, storage, progress=False, log=lambda _: None, **kw)


def test_three_trial_study(tmp_path, base, study_data):
    storage = storage_for(None, tmp_path / "journal.log")
    study = _run(base, _space(), study_data, storage, n_trials=3)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 3
    for t in complete:
        assert set(t.params) == {"model.lstm_size", "model.num_layers", "model.dropout"}
        assert t.user_attrs["n_params"] > 0 and t.user_attrs["params_per_char"] > 0
        assert len(t.intermediate_values) == 2  # one report per evaluation
    best = results.write_best(study, tmp_path / "best.yaml")
    assert best["command"].startswith("dvc exp run -S model.")
    assert "complete" in results.best_trials_table(study)


def test_trial_budget_is_in_characters_and_defaults_to_the_pipelines(base):
    space = _space(budget_chars=6400, rungs=3)
    a = search.trial_steps(with_overrides(base, {"train.seq_len": 16}), 6400)
    b = search.trial_steps(with_overrides(base, {"train.seq_len": 32}), 6400)
    assert a * 16 == b * 32 == 6400 // base.train.batch_size
    # null: the pipeline's own budget, so a finished trial trains exactly as `dvc repro` does
    t = base.train
    assert search.budget_chars(_space(budget_chars=None), base) == t.max_steps * t.batch_size * t.seq_len
    assert search.trial_steps(base, search.budget_chars(_space(budget_chars=None), base)) == t.max_steps
    assert search.budget_chars(space, base) == 6400


def test_the_ladder_is_geometric_and_ends_at_the_budget():
    assert search.ladder(900, 3, 3) == {100: 1, 300: 3, 900: 9}
    assert search.ladder(4000, 3, 3) == {444: 1, 1333: 3, 4000: 9}
    assert search.ladder(1000, 4, 2) == {125: 1, 250: 2, 500: 4, 1000: 8}
    assert search.ladder(2, 3, 3) == {1: 3, 2: 9}  # rungs that round together collapse upwards


def test_one_table_drives_suggest_validation_and_the_enqueued_trials(tmp_path, base, study_data):
    """Adding a dimension is one entry: it is drawn, checked against the schema and enqueued."""
    table = {
        **SMALL,
        "model.lstm_size": {"choices": [8, 32]},
        "train.seq_len": {"choices": [8, 16]},
        "train.lr": {"low": 1.0e-3, "high": 3.0e-2, "log": True},
    }
    space = _space(space=table, enqueue=["defaults", "seed_recipe"], n_trials=3)
    logs = []
    labels = search.enqueued(space, base, logs.append)
    # the seed recipe's 2x512 lies outside [8, 32]: said, not silently half-enqueued
    assert [label for label, _ in labels] == ["defaults"] and "seed recipe" in logs[0] and "512" in logs[0]
    study = _run(base, space, study_data, storage_for(None, tmp_path / "j.log"), n_trials=3)
    for t in study.trials:
        assert set(t.params) == set(table)
        assert isinstance(t.params["train.seq_len"], int) and 1.0e-3 <= t.params["train.lr"] <= 3.0e-2
    first = study.trials[0]
    assert first.user_attrs["enqueued"] == "defaults"
    assert first.params == {k: base.flat()[k] for k in table}
    dists = search.distributions(space, base)
    assert dists["train.lr"].log and isinstance(dists["model.dropout"], optuna.distributions.FloatDistribution)


@pytest.mark.parametrize(
    "table, expected",
    [
        (
            {"model.dropout": {"low": 0.2, "high": 1.0}},
            r"tune\.space\.model\.dropout: 1\.0 is not a valid model\.dropout",
        ),
        ({"model.lstm_size": {"choices": [128, 0]}}, r"tune\.space\.model\.lstm_size: 0 is not a valid"),
        ({"model.lstm_size": {"low": 64.5, "high": 512}}, r"model\.lstm_size is an integer"),
        ({"model.width": {"choices": [1]}}, r"tune\.space\.model\.width: not a params\.yaml key"),
        ({"train.max_steps": {"choices": [10, 20]}}, r"tune\.space\.train\.max_steps: set by every trial"),
        ({}, r"tune\.space is empty"),
    ],
)
def test_a_bad_table_entry_is_one_line(base, table, expected):
    with pytest.raises(KarnnaError, match=expected) as info:
        search.check_space(_space(space=table), base)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "kw, expected",
    [
        (
            {"budget_chars": 50},
            r"tune\.budget_chars: 50 characters is smaller than one batch \(train\.batch_size 4 x train\.seq_len 16",
        ),
        (
            {"budget_chars": 100, "space": {**SMALL, "train.seq_len": {"choices": [8, 32]}}},
            r"smaller than one batch \(train\.batch_size 4 x train\.seq_len 32",
        ),
        (
            {"eval_chars": 10**6},
            r"tune\.eval_chars: 1,000,000 is not within the validation split \(2 to [\d,]+ characters\)",
        ),
    ],
)
def test_bad_budgets_stop_before_any_trial(tmp_path, base, study_data, kw, expected):
    storage = storage_for(None, tmp_path / "j.log")
    with pytest.raises(KarnnaError, match=expected) as info:
        _run(base, _space(**kw), study_data, storage, n_trials=1)
    assert "\n" not in str(info.value)
    assert optuna.get_all_study_names(storage) == []  # nothing half-made: no study was created


def test_intermediate_validations_score_a_prefix_and_the_last_the_whole_split(tmp_path, base, study_data):
    from src.training.loop import train
    from src.training.state import TrainPaths

    cfg = with_overrides(base, {"train.max_steps": 30, "model.dropout": 0.3})
    runs = {}
    for prefix in (None, 60):
        logged = []

        class Spy(Reporter):
            def log_metrics(self, metrics, step, logged=logged):
                if "val_chars_scored" in metrics:
                    logged.append((step, dict(metrics)))

        runs[prefix] = (
            train(
                cfg,
                study_data.vocab,
                study_data.train_ids,
                study_data.val_ids,
                TrainPaths(tmp_path / f"b{prefix}.pt", tmp_path / f"l{prefix}.pt"),
                reporter=Spy(),
                progress=False,
                log=lambda _: None,
                eval_steps={10, 20},
                eval_chars=prefix,
            ),
            logged,
        )
    (whole, _), (part, logged) = runs[None], runs[60]
    assert [s for s, _ in part.val_history] == [10, 20, 30] == [s for s, _ in whole.val_history]
    # the last validation is the whole split, and scoring a prefix did not change the training
    assert part.val_history[-1] == whole.val_history[-1] and part.final_train_loss == whole.final_train_loss
    assert part.val_history[0][1] != whole.val_history[0][1]
    assert [m["val_chars_scored"] for _, m in logged] == [60, 60, len(study_data.val_ids)]
    # a prefix score never becomes the best checkpoint's score
    assert part.best_val_loss == part.val_history[-1][1] and part.best_step == 30


def test_a_prefix_score_never_becomes_the_best_checkpoint(tmp_path, base, study_data, monkeypatch):
    """Even when the prefix scores lower than the whole split (made sure of here by shifting
    whole-split scores up), the best checkpoint and best_val_loss are the whole split's."""
    import src.training.loop as train_module
    from src.model import checkpoint
    from src.training.loop import train
    from src.training.state import TrainPaths

    real = train_module.evaluate.stream_loss
    whole = len(study_data.val_ids)
    monkeypatch.setattr(
        train_module.evaluate,
        "stream_loss",
        lambda model, ids, *a, **kw: real(model, ids, *a, **kw) + (10.0 if len(ids) == whole else 0.0),
    )
    cfg = with_overrides(base, {"train.max_steps": 20})
    paths = TrainPaths(tmp_path / "best.pt", tmp_path / "last.pt")
    result = train(
        cfg,
        study_data.vocab,
        study_data.train_ids,
        study_data.val_ids,
        paths,
        progress=False,
        log=lambda _: None,
        eval_steps={10},
        eval_chars=60,
    )
    assert result.val_history[0][1] < 10 < result.val_history[1][1] == result.best_val_loss
    assert result.best_step == 20 and checkpoint.load_payload(paths.best)["step"] == 20


def test_successive_halving_finishes_only_the_best_at_the_full_budget(tmp_path, base, study_data):
    """Real trainings with the default pruner: a trial stops at a rung unless it is among the best
    1/reduction_factor there, and every finished trial trained the whole budget."""
    space = _space(
        space={
            "model.lstm_size": {"choices": [2, 4, 48]},
            "model.num_layers": {"choices": [1]},
            "model.dropout": {"low": 0.0, "high": 0.6},
        },
        budget_chars=5760,
        rungs=3,
        reduction_factor=3,
        pruner="halving",
        n_trials=9,
    )
    study = _run(base, space, study_data, storage_for(None, tmp_path / "journal.log"), n_trials=9)
    steps = search.trial_steps(base, 5760)
    rungs = search.ladder(steps, 3, 3)
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert pruned and complete
    for t in complete:
        assert t.user_attrs["steps_trained"] == steps and t.user_attrs["chars_trained"] == steps * 64
        assert sorted(t.intermediate_values) == [1, 3, 9] and t.value == t.intermediate_values[9]
    for t in pruned:
        assert t.user_attrs["steps_trained"] in list(rungs)[:-1] and max(t.intermediate_values) < 9
        # it was not among the best third of the trials that reached its rung before it
        rung = max(t.intermediate_values)
        value = t.intermediate_values[rung]
        competing = sorted(
            [value]
            + [
                o.intermediate_values[rung]
                for o in study.trials
                if o.number < t.number and rung in o.intermediate_values
            ]
        )
        assert value > competing[max(0, len(competing) // 3 - 1)]
    assert study.metric_names == [runner.METRIC_NAME]


def test_workers_split_the_cores(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert processes.default_jobs("cpu") == 8 and processes.default_jobs("cuda") == 1
    assert processes.threads_per_trial(0, 1) == 0  # torch's default, every core
    assert processes.threads_per_trial(0, 2) == 4 and processes.threads_per_trial(0, 16) == 1
    assert processes.threads_per_trial(3, 2) == 3  # train.num_threads wins


def test_seed_recipe_and_defaults_come_first_once(tmp_path, base, study_data):
    table = {
        "model.lstm_size": {"choices": [32, 512]},
        "model.num_layers": {"choices": [2]},
        "model.dropout": {"low": 0.0, "high": 0.8},
    }
    space = _space(space=table, enqueue=["seed_recipe", "defaults"], budget_chars=200)
    storage = storage_for(None, tmp_path / "journal.log")
    study = _run(base, space, study_data, storage, n_trials=2)
    seed, defaults = study.trials[:2]
    assert seed.params == {"model.lstm_size": 512, "model.num_layers": 2, "model.dropout": 0.5}
    assert seed.user_attrs["enqueued"] == "seed_recipe"
    assert defaults.params == {"model.lstm_size": 32, "model.num_layers": 2, "model.dropout": 0.0}  # tiny base's
    assert "(seed recipe)" in results.best_trials_table(study) and "(defaults)" in results.best_trials_table(study)
    # Resume: the same command adds trials and keeps the old ones; nothing is enqueued again.
    study = _run(base, space, study_data, storage, n_trials=1)
    assert len(study.trials) == 3 and sum(bool(t.user_attrs.get("enqueued")) for t in study.trials) == 2


def test_the_table_marks_a_pruned_trials_value():
    """Optuna gives a pruned trial its last report as value; the table says it is not a final score."""
    study = optuna.create_study()
    for state in (optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.COMPLETE):
        trial = study.ask({"x": optuna.distributions.FloatDistribution(0.0, 1.0)})
        trial.set_user_attr("enqueued", "seed_recipe")
        trial.report(2.5, 1)
        study.tell(trial, 1.5 if state == optuna.trial.TrialState.COMPLETE else None, state=state)
    rows = results.best_trials_table(study).splitlines()
    assert "2.5000*" in next(r for r in rows if "pruned" in r)
    assert "1.5000 " in next(r for r in rows if "complete" in r and "trials:" not in r)


def test_the_printed_command_gives_each_value_back_exactly_as_yaml_reads_it():
    import yaml

    params = {
        "train.lr": 1e-05,
        "train.min_lr": 3.0000000000000004e-4,
        "model.dropout": 0.1 + 0.2,
        "train.grad_clip": 1e16,
        "model.lstm_size": 256,
        "model.cell": "gru",
    }
    pairs = results.best_params_command(params).removeprefix("dvc exp run -S ").split(" -S ")
    back = {key: yaml.safe_load(value) for key, value in (pair.split("=", 1) for pair in pairs)}
    assert back == params and all(type(back[k]) is type(v) for k, v in params.items())


def test_pruners_on_a_synthetic_objective():
    """Each pruner stops trials whose intermediate values are worse, at the ladder's steps."""

    def objective(trial):
        level = trial.suggest_float("x", 0.0, 1.0)
        for step in (1, 3, 9):
            trial.report(level + 1.0 / step, step)
            if step < 9 and trial.should_prune():
                raise optuna.TrialPruned()
        return level

    for name in ("halving", "hyperband", "median"):
        study = optuna.create_study(
            pruner=search.make_pruner(name, _space(rungs=3)), sampler=optuna.samplers.RandomSampler(seed=0)
        )
        study.optimize(objective, n_trials=30)
        pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
        assert pruned and all(max(t.intermediate_values) < 9 for t in pruned), name


def test_pruned_training_trial_stops_and_keeps_its_curve(tmp_path, base, study_data):
    from src.training.loop import train
    from src.training.state import TrainPaths

    space = _space(
        space={
            "model.lstm_size": {"choices": [8]},
            "model.num_layers": {"choices": [1]},
            "model.dropout": {"low": 0.0, "high": 0.5},
        },
        rungs=3,
        budget_chars=4000,
    )
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=1.0))  # any real loss is above
    trial = study.ask(search.distributions(space, base))
    params = search.suggest(trial, space, base)
    steps = search.trial_steps(base, 4000)
    rungs = search.ladder(steps, 3, 3)
    pruning = runner.PruneOnEval(trial, rungs)
    with pytest.raises(optuna.TrialPruned, match="pruned at step"):
        train(
            search.trial_config(base, params, steps),
            study_data.vocab,
            study_data.train_ids,
            study_data.val_ids,
            TrainPaths(tmp_path / "b.pt", tmp_path / "l.pt"),
            progress=False,
            log=lambda _: None,
            on_eval=[pruning],
            eval_steps=rungs,
        )
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    (frozen,) = study.trials
    assert frozen.state == optuna.trial.TrialState.PRUNED and frozen.intermediate_values.keys() == {1}
    assert pruning.last_step == min(rungs) < steps  # it stopped at the first rung


def test_the_last_validation_is_never_pruned(tmp_path, base, study_data):
    """The top rung is the trial's value: even a pruner that would stop everything lets it finish."""
    from src.training.loop import train
    from src.training.state import TrainPaths

    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=0.0))
    space = _space()
    trial = study.ask(search.distributions(space, base))
    steps = search.trial_steps(base, 2000)
    rungs = search.ladder(steps, 1, 3)
    result = train(
        search.trial_config(base, search.suggest(trial, space, base), steps),
        study_data.vocab,
        study_data.train_ids,
        study_data.val_ids,
        TrainPaths(tmp_path / "b.pt", tmp_path / "l.pt"),
        on_eval=[runner.PruneOnEval(trial, rungs)],
        progress=False,
        log=lambda _: None,
        eval_steps=rungs,
    )
    assert result.steps == steps and rungs == {steps: 1}


def test_param_cap_skips_oversized_models(tmp_path, base, study_data):
    space = _space(
        space={**SMALL, "model.lstm_size": {"choices": [64]}, "model.num_layers": {"choices": [2]}},
        max_params_per_char=0.01,
    )
    study = _run(base, space, study_data, storage_for(None, tmp_path / "j.log"), n_trials=1)
    (t,) = study.trials
    assert t.state == optuna.trial.TrialState.PRUNED and t.user_attrs["skipped"].startswith("skipped:")


def test_failing_trial_is_recorded_and_the_study_goes_on(tmp_path, base, study_data, monkeypatch):
    import src.training.setup as build_module

    original = build_module.build_model

    def sometimes_broken(cfg, vocab, generator=None):
        model = original(cfg, vocab, generator)
        if cfg.model.lstm_size == 16:
            model.head.register_forward_hook(lambda m, i, o: o * float("nan"))
        return model

    monkeypatch.setattr(build_module, "build_model", sometimes_broken)
    study = _run(base, _space(), study_data, storage_for(None, tmp_path / "j.log"), n_trials=6)
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert failed and complete and len(study.trials) == 6
    assert all("diverged" in t.user_attrs["fail_reason"] for t in failed)


def test_storage_errors_are_clear(tmp_path):
    from src.utils.errors import KarnnaError

    with pytest.raises(KarnnaError, match="expected postgresql://"):
        storage_for("redis://x", tmp_path / "j.log")
    with pytest.raises(KarnnaError, match=r"cannot open the study storage postgresql://u:\*\*\*@127.0.0.1:1/db"):
        storage_for("postgresql://u:secret@127.0.0.1:1/db", tmp_path / "j.log")


def _tiny_repo_for_tune(stage_repo, storage: str, **tune_keys):
    import yaml

    params = yaml.safe_load((stage_repo / "params.yaml").read_text())
    params["tune"].update(
        {
            "study_name": "w",
            "budget_chars": 3000,
            "rungs": 2,
            "eval_chars": 2000,
            "space": SMALL,
            "enqueue": [],
            "storage": storage,
            **tune_keys,
        }
    )
    (stage_repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for name in ("corpus", "encode", "split"):
        subprocess.run(
            [sys.executable, "-m", f"pipeline.{name}"], cwd=stage_repo, env=_env(), check=True, capture_output=True
        )


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="oneDNN's instruction-set cap is x86's")
def test_a_bf16_precision_this_cpu_cannot_run_fails_before_the_study(stage_repo):
    import yaml

    journal = stage_repo / "tune" / "journal.log"
    _tiny_repo_for_tune(stage_repo, str(journal), space={**SMALL, "model.cell": {"choices": ["gru", "lstm"]}})
    params = yaml.safe_load((stage_repo / "params.yaml").read_text())
    params["train"]["precision"] = "bf16"
    (stage_repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**_env(), "ONEDNN_MAX_CPU_ISA": "AVX2"}  # oneDNN as on an AVX2 CPU: no bf16 LSTM, a bf16 GRU
    cmd = [sys.executable, "-m", "src.tune", "--n-trials", "2", "--no-progress"]
    proc = subprocess.run(cmd, cwd=stage_repo, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "train.precision is bf16, but torch cannot run a bf16 LSTM" in proc.stderr
    assert not journal.exists(), proc.stdout


@pytest.mark.slow
def test_a_study_in_a_dvc_experiment_copy_logs_to_the_main_repos_store(stage_repo, tmp_path):
    """As the stages do (src/utils/repo.py): without MLFLOW_TRACKING_URI, `python -m src.tune` run
    in the copy `dvc exp run --temp` makes under <repo>/.dvc/tmp/exps/ logs to <repo>/mlflow.db."""
    import yaml

    copy = stage_repo / ".dvc" / "tmp" / "exps" / "tmpk4rnn4"
    shutil.copytree(stage_repo, tmp_path / "copy")
    shutil.move(tmp_path / "copy", copy)
    _tiny_repo_for_tune(copy, str(copy / "tune" / "journal.log"), n_trials=1)
    params = yaml.safe_load((copy / "params.yaml").read_text())
    params["tracking"]["enabled"] = True
    (copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {k: v for k, v in _env().items() if k != "MLFLOW_TRACKING_URI"}
    cmd = [sys.executable, "-m", "src.tune", "--n-trials", "1", "--no-progress"]
    proc = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (stage_repo / "mlflow.db").is_file() and not (copy / "mlflow.db").exists()


@pytest.mark.slow
def test_the_printed_command_reproduces_the_best_trials_score(stage_repo):
    """The budget defaults to the pipeline's: the train stage, given the printed `-S` overrides,
    trains as the best trial did and ends on the same validation loss."""
    import yaml

    _tiny_repo_for_tune(
        stage_repo,
        str(stage_repo / "tune" / "journal.log"),
        budget_chars=None,
        space={**SMALL, "train.lr": {"low": 1.0e-3, "high": 3.0e-2, "log": True}},
    )
    proc = subprocess.run(
        [sys.executable, "-m", "src.tune", "--n-trials", "3", "--no-progress"],
        cwd=stage_repo,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    best = yaml.safe_load((stage_repo / "tune" / "best_params.yaml").read_text())
    params = yaml.safe_load((stage_repo / "params.yaml").read_text())
    pairs = best["command"].removeprefix("dvc exp run ").split(" ")
    assert pairs[::2] == ["-S"] * (len(pairs) // 2) and "train.max_steps" not in best["command"]
    for pair in pairs[1::2]:  # as `dvc exp run -S key=value` applies them: the value is YAML
        key, value = pair.split("=", 1)
        section, name = key.split(".")
        params[section][name] = yaml.safe_load(value)
    (stage_repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(
        [sys.executable, "-m", "pipeline.train"], cwd=stage_repo, env=_env(), check=True, capture_output=True
    )
    last_step, last_val = (stage_repo / "plots" / "val_loss.csv").read_text().splitlines()[-1].split(",")
    assert int(last_step) == params["train"]["max_steps"] == best["chars_trained"] // (8 * 32)
    assert float(last_val) == pytest.approx(best["val_loss"], abs=1e-5)


@pytest.mark.slow
def test_two_worker_processes_share_one_storage(stage_repo):
    # No pruner: this is about sharing the storage; with successive halving a worker whose three
    # trials were all pruned before any other finished would rightly end with "no trial completed".
    _tiny_repo_for_tune(stage_repo, str(stage_repo / "tune" / "journal.log"), pruner="none")
    cmd = [sys.executable, "-m", "src.tune", "--n-trials", "3", "--no-progress"]
    workers = [
        subprocess.Popen(cmd, cwd=stage_repo, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [w.communicate(timeout=600) for w in workers]
    assert all(w.returncode == 0 for w in workers), outs
    storage = storage_for(str(stage_repo / "tune" / "journal.log"), stage_repo / "unused.log")
    study = optuna.load_study(study_name="w", storage=storage)
    numbers = [t.number for t in study.trials]
    assert len(numbers) == 6 and sorted(numbers) == list(range(6))  # none lost, none run twice
    assert all(t.state.is_finished() for t in study.trials)
    assert (stage_repo / "tune" / "best_params.yaml").is_file()


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("KARNNA_TEST_POSTGRES_URL"),
    reason="set KARNNA_TEST_POSTGRES_URL (.ci/run starts a PostgreSQL server and sets it)",
)
def test_postgresql_storage(stage_repo):
    url = os.environ["KARNNA_TEST_POSTGRES_URL"]
    _tiny_repo_for_tune(stage_repo, url)
    name = f"pg-{os.getpid()}"
    proc = subprocess.run(
        [sys.executable, "-m", "src.tune", "--n-trials", "2", "--n-jobs", "2", "--no-progress", "--study-name", name],
        cwd=stage_repo,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    study = optuna.load_study(study_name=name, storage=url)
    assert len(study.trials) == 2 and all(t.state.is_finished() for t in study.trials)
    optuna.delete_study(study_name=name, storage=url)


def test_mlflow_parent_and_child_runs(tmp_path, study_data):
    from mlflow.tracking import MlflowClient

    from src.tracking import trials

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    base = config_from_dict(tiny_params(model={"embedding_dim": 4}, tracking={"enabled": True, "experiment": "tune-t"}))
    storage = storage_for(None, tmp_path / "journal.log")
    study = _run(base, _space(), study_data, storage, n_trials=4, n_jobs=2, tracking_uri=uri)
    parent_id = study.user_attrs[trials.STUDY_RUN_ATTR]
    figures = runner.study_figures(study, tmp_path / "figs")
    trials.finish_study_run(base, uri, parent_id, {"best_val_loss": study.best_value}, figures, [])

    client = MlflowClient(uri)
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.params["model.lstm_size"]
    assert parent.data.params["tune.budget_chars"] == "2000"
    exp = client.get_experiment_by_name("tune-t")
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    assert len(children) == 4
    by_trial = {int(r.data.params["optuna_trial"]): r for r in children}
    for t in study.trials:
        run = by_trial[t.number]
        assert run.data.tags["optuna.state"] == t.state.name
        assert t.user_attrs["mlflow_run_id"] == run.info.run_id
        history = client.get_metric_history(run.info.run_id, "val_loss")
        assert len(history) == len(t.intermediate_values)
    names = {a.path for a in client.list_artifacts(parent_id, "optuna")}
    assert "optuna/optimization_history.png" in names
    # Resuming the study reuses the same parent run.
    study = _run(base, _space(), study_data, storage, n_trials=1, tracking_uri=uri)
    assert study.user_attrs[trials.STUDY_RUN_ATTR] == parent_id


def _points_in_store(client, experiment: str, key: str, timeout: float) -> list[int]:
    """The steps of `key` the store holds for the experiment's trial-0, waited for up to `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        exp = client.get_experiment_by_name(experiment)
        runs = client.search_runs([exp.experiment_id], "attributes.run_name = 'trial-0'") if exp else []
        steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, key)] if runs else []
        if steps or time.monotonic() > deadline:
            return steps
        time.sleep(0.1)


def test_a_running_trials_curve_reaches_the_store_before_its_first_rung(tmp_path, study_data, monkeypatch):
    """mlflow ui draws a trial as it trains: what it logged is sent every LIVE_FLUSH_S, not only
    at its rungs (here steps 33 and 100)."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    base = config_from_dict(tiny_params(model={"embedding_dim": 4}, tracking={"enabled": True, "experiment": "live"}))
    monkeypatch.setattr(runner, "LIVE_FLUSH_S", 0.0)
    client, calls, seen = MlflowClient(uri), [], []

    def on_log():  # train()'s on_log: every log_interval (5) steps
        calls.append(1)
        if len(calls) == 3:  # step 15, before the first rung
            seen.extend(_points_in_store(client, "live", "train_loss", timeout=20))

    space = _space(n_trials=1, budget_chars=6400, rungs=2, space={"model.dropout": {"low": 0.0, "high": 0.5}})
    study = _run(
        base, space, study_data, storage_for(None, tmp_path / "j.log"), n_trials=1, tracking_uri=uri, on_log=on_log
    )
    assert study.trials[0].state.name == "COMPLETE" and min(search.ladder(100, 2, 3)) == 33
    assert seen == [10]  # log_every 10: the point of step 10, in the store at step 15


def test_the_median_pruner_stops_trials_of_a_real_study(tmp_path, base, study_data):
    """Real trainings, the median pruner: after its 3 startup trials, trials worse than the median
    at a rung stop there."""
    space = _space(
        space={
            "model.lstm_size": {"choices": [2, 48]},
            "model.num_layers": {"choices": [1]},
            "model.dropout": {"low": 0.0, "high": 0.6},
        },
        rungs=3,
        budget_chars=4000,
        n_trials=10,
        pruner="median",
    )
    study = _run(base, space, study_data, storage_for(None, tmp_path / "journal.log"), n_trials=10)
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert pruned and len(complete) >= 3
    budget_steps = search.trial_steps(base, 4000)
    for t in pruned:
        assert max(t.intermediate_values) < 9
        assert t.user_attrs["steps_trained"] < budget_steps
        # it was worse than the median of the completed trials at that rung
        step, value = max(t.intermediate_values.items())
        assert value > np.median([c.intermediate_values[step] for c in complete if c.number < t.number])


def test_n_trials_are_split_between_the_worker_processes_and_each_gets_its_own_command_line():

    assert processes.split_trials(5, 2) == [3, 2] and processes.split_trials(1, 2) == [1, 0]
    assert processes.split_trials(None, 3) == [None, None, None]
    cmd = processes.worker_command(["--n-jobs", "2", "--timeout", "60", "--n-trials=9", "--no-progress"], 2, 4)
    assert cmd[1:3] == ["-m", "src.tune"]
    assert cmd[3:] == [
        "--timeout",
        "60",
        "--n-trials",
        "4",
        "--join",
        "2",
        "--no-progress",
    ]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in state  # a zombie has ended


@pytest.mark.slow
def test_n_jobs_runs_worker_processes_on_one_study_and_they_die_with_the_caller(stage_repo):
    import time

    _tiny_repo_for_tune(stage_repo, str(stage_repo / "tune" / "journal.log"), pruner="none")
    storage = storage_for(str(stage_repo / "tune" / "journal.log"), stage_repo / "unused.log")
    cmd = [sys.executable, "-m", "src.tune", "--n-jobs", "2", "--no-progress"]
    proc = subprocess.run([*cmd, "--n-trials", "4"], cwd=stage_repo, env=_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("best: trial") == 1  # one summary, by the caller
    trials = optuna.load_study(study_name="w", storage=storage).trials
    assert sorted(t.number for t in trials) == [0, 1, 2, 3] and all(t.state.is_finished() for t in trials)
    workers = {t.user_attrs["worker"] for t in trials}
    assert len(workers) == 2  # "host:pid" of two processes (threads of one would share it)

    # The caller killed without warning: the worker it started goes too (no orphan training on).
    (stage_repo / "params.yaml").write_text(
        (stage_repo / "params.yaml").read_text().replace("budget_chars: 3000", "budget_chars: 3000000")
    )
    caller = subprocess.Popen(
        [*cmd, "--n-trials", "50", "--study-name", "k"],
        cwd=stage_repo,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline, joined = time.monotonic() + 120, set()
    while time.monotonic() < deadline and not joined:
        time.sleep(0.5)
        with contextlib.suppress(KeyError, ValueError):
            running = optuna.load_study(study_name="k", storage=storage).get_trials(
                states=(optuna.trial.TrialState.RUNNING,)
            )
            joined = {int(t.user_attrs["worker"].rsplit(":", 1)[1]) for t in running} - {caller.pid}
    assert joined, "the joined worker never started a trial"
    caller.kill()
    caller.wait()
    # SIGTERM at once (PR_SET_PDEATHSIG); the worker then ends its trial and its MLflow run, which
    # on a 2-core machine under a load of 7-8 took over 30 s.
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and any(_alive(pid) for pid in joined):
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in joined)
