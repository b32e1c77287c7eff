"""The Optuna search: real studies on a tiny corpus slice and tiny models (seconds each)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import optuna
import pytest
import torch

from src.config import config_from_dict, section_from_dict, TuneConfig
from src import tune
from tests.conftest import _env, tiny_params


def _space(**kw) -> TuneConfig:
    base = {"study_name": "t", "n_trials": 3, "budget_chars": 2000, "evals_per_trial": 2,
            "lstm_size": [8, 16], "num_layers": [1, 2], "dropout": [0.0, 0.5], "enqueue_seed": False}
    base.update(kw)
    return section_from_dict(TuneConfig, base, "tune")


@pytest.fixture
def study_data(tiny_data):
    vocab, tr, va = tiny_data
    return tune.StudyData(vocab, tr, va)


@pytest.fixture
def base():
    return config_from_dict(tiny_params(model={"embedding_dim": 4}))


def _run(base, space, study_data, storage, **kw):
    return tune.run_study(base, space, study_data, storage, progress=False, log=lambda _: None, **kw)


def test_three_trial_study(tmp_path, base, study_data):
    storage = tune.storage_for(None, tmp_path / "journal.log")
    study = _run(base, _space(), study_data, storage, n_trials=3)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 3
    for t in complete:
        assert set(t.params) == {"model.lstm_size", "model.num_layers", "model.dropout"}
        assert t.user_attrs["n_params"] > 0 and t.user_attrs["params_per_char"] > 0
        assert len(t.intermediate_values) == 2  # one report per evaluation
    best = tune.write_best(study, tmp_path / "best.yaml")
    assert best["command"].startswith("dvc exp run -S model.")
    assert "complete" in tune.best_trials_table(study)


def test_trial_budget_is_in_characters(base):
    space = _space(budget_chars=6400, evals_per_trial=4)
    a = tune.trial_config(base, space, {"train.seq_len": 16})
    b = tune.trial_config(base, space, {"train.seq_len": 32})
    assert a.train.max_steps * 16 == b.train.max_steps * 32 == 6400 // base.train.batch_size
    assert a.train.eval_interval * 4 >= a.train.max_steps


def test_seed_recipe_is_the_first_trial_once(tmp_path, base, study_data):
    space = _space(lstm_size=[8, 512], num_layers=[2], dropout=[0.0, 0.8], enqueue_seed=True, budget_chars=200)
    storage = tune.storage_for(None, tmp_path / "journal.log")
    study = _run(base, space, study_data, storage, n_trials=1)
    first = study.trials[0]
    assert first.params["model.lstm_size"] == 512 and first.params["model.dropout"] == 0.5
    assert first.user_attrs.get("seed_recipe")
    # Resume: the same command adds trials and keeps the old ones; the seed is not enqueued again.
    study = _run(base, space, study_data, storage, n_trials=2)
    assert len(study.trials) == 3
    assert sum(bool(t.user_attrs.get("seed_recipe")) for t in study.trials) == 1


def test_pruning_on_a_synthetic_objective(tmp_path):
    """Median pruning stops trials whose intermediate values are worse than the median."""
    study = optuna.create_study(pruner=tune.make_pruner("median", 10), sampler=optuna.samplers.RandomSampler(seed=0))

    def objective(trial):
        level = trial.suggest_float("x", 0.0, 1.0)
        for step in range(10):
            trial.report(level + 1.0 / (step + 1), step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return level

    study.optimize(objective, n_trials=30)
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned and all(len(t.intermediate_values) < 10 for t in pruned)
    hb = optuna.create_study(pruner=tune.make_pruner("hyperband", 10), sampler=optuna.samplers.RandomSampler(seed=0))
    hb.optimize(objective, n_trials=30)
    assert any(t.state == optuna.trial.TrialState.PRUNED for t in hb.trials)


def test_pruned_training_trial_stops_and_keeps_its_curve(tmp_path, base, study_data):
    from src.report import Reporter
    from src.train import TrainPaths, train

    space = _space(lstm_size=[8], num_layers=[1], evals_per_trial=4, budget_chars=4000)
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=1.0))  # any real loss is above
    trial = study.ask({"model.lstm_size": optuna.distributions.CategoricalDistribution([8]),
                       "model.num_layers": optuna.distributions.CategoricalDistribution([1]),
                       "model.dropout": optuna.distributions.FloatDistribution(0.0, 0.5)})
    cfg = tune.trial_config(base, space, tune.suggest(trial, space))
    reporter = tune.TrialReporter(trial, Reporter())
    with pytest.raises(optuna.TrialPruned, match="pruned at step"):
        train(cfg, study_data.vocab, study_data.train_ids, study_data.val_ids,
              TrainPaths(tmp_path / "b.pt", tmp_path / "l.pt"), reporter=reporter, progress=False, log=lambda _: None)
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    (frozen,) = study.trials
    assert frozen.state == optuna.trial.TrialState.PRUNED and len(frozen.intermediate_values) == 1
    assert cfg.train.max_steps > cfg.train.eval_interval  # it stopped before its budget


def test_param_cap_skips_oversized_models(tmp_path, base, study_data):
    space = _space(lstm_size=[64], num_layers=[2], max_params_per_char=0.01)
    study = _run(base, space, study_data, tune.storage_for(None, tmp_path / "j.log"), n_trials=1)
    (t,) = study.trials
    assert t.state == optuna.trial.TrialState.PRUNED and t.user_attrs["skipped"].startswith("skipped:")


def test_failing_trial_is_recorded_and_the_study_goes_on(tmp_path, base, study_data, monkeypatch):
    import src.train as train_module

    original = train_module.build_model

    def sometimes_broken(cfg, vocab, generator=None):
        model = original(cfg, vocab, generator)
        if cfg.model.lstm_size == 16:
            model.head.register_forward_hook(lambda m, i, o: o * float("nan"))
        return model

    monkeypatch.setattr(train_module, "build_model", sometimes_broken)
    study = _run(base, _space(), study_data, tune.storage_for(None, tmp_path / "j.log"), n_trials=6)
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert failed and complete and len(study.trials) == 6
    assert all("diverged" in t.user_attrs["fail_reason"] for t in failed)


def test_storage_errors_are_clear(tmp_path):
    from src.errors import KarnnaError

    with pytest.raises(KarnnaError, match="expected postgresql://"):
        tune.storage_for("redis://x", tmp_path / "j.log")
    with pytest.raises(KarnnaError, match=r"cannot open the study storage postgresql://u:\*\*\*@127.0.0.1:1/db"):
        tune.storage_for("postgresql://u:secret@127.0.0.1:1/db", tmp_path / "j.log")


def _tiny_repo_for_tune(stage_repo, storage: str):
    import yaml

    params = yaml.safe_load((stage_repo / "params.yaml").read_text())
    params["tune"].update({"study_name": "w", "budget_chars": 3000, "evals_per_trial": 2, "lstm_size": [8, 16],
                           "num_layers": [1, 2], "enqueue_seed": False, "storage": storage})
    (stage_repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for name in ("corpus", "encode", "split"):
        subprocess.run([sys.executable, "-m", f"pipeline.{name}"], cwd=stage_repo, env=_env(), check=True,
                       capture_output=True)


@pytest.mark.slow
def test_two_worker_processes_share_one_storage(stage_repo):
    _tiny_repo_for_tune(stage_repo, str(stage_repo / "tune" / "journal.log"))
    cmd = [sys.executable, "-m", "src.tune", "--n-trials", "3", "--no-progress"]
    workers = [subprocess.Popen(cmd, cwd=stage_repo, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for _ in range(2)]
    outs = [w.communicate(timeout=600) for w in workers]
    assert all(w.returncode == 0 for w in workers), outs
    storage = tune.storage_for(str(stage_repo / "tune" / "journal.log"), stage_repo / "unused.log")
    study = optuna.load_study(study_name="w", storage=storage)
    numbers = [t.number for t in study.trials]
    assert len(numbers) == 6 and sorted(numbers) == list(range(6))  # none lost, none run twice
    assert all(t.state.is_finished() for t in study.trials)
    assert (stage_repo / "tune" / "best_params.yaml").is_file()


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("KARNNA_TEST_POSTGRES_URL"),
                    reason="set KARNNA_TEST_POSTGRES_URL (.ci/run starts a PostgreSQL server and sets it)")
def test_postgresql_storage(stage_repo):
    url = os.environ["KARNNA_TEST_POSTGRES_URL"]
    _tiny_repo_for_tune(stage_repo, url)
    name = f"pg-{os.getpid()}"
    proc = subprocess.run([sys.executable, "-m", "src.tune", "--n-trials", "2", "--n-jobs", "2", "--no-progress",
                           "--study-name", name], cwd=stage_repo, env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    study = optuna.load_study(study_name=name, storage=url)
    assert len(study.trials) == 2 and all(t.state.is_finished() for t in study.trials)
    optuna.delete_study(study_name=name, storage=url)


def test_mlflow_parent_and_child_runs(tmp_path, study_data):
    from mlflow.tracking import MlflowClient

    from src import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    base = config_from_dict(tiny_params(model={"embedding_dim": 4}, tracking={"enabled": True, "experiment": "tune-t"}))
    storage = tune.storage_for(None, tmp_path / "journal.log")
    study = _run(base, _space(), study_data, storage, n_trials=4, n_jobs=2, tracking_uri=uri)
    parent_id = study.user_attrs[tracking.STUDY_RUN_ATTR]
    figures = tune.study_figures(study, tmp_path / "figs")
    tracking.finish_study_run(base, uri, parent_id, {"best_val_loss": study.best_value}, figures, [])

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
    assert study.user_attrs[tracking.STUDY_RUN_ATTR] == parent_id


def test_the_pruner_stops_trials_of_a_real_study(tmp_path, base, study_data):
    """Real trainings, the median pruner as `python -m src.tune` makes it: after its 3 startup
    trials, trials worse than the median at an evaluation stop there."""
    space = _space(lstm_size=[2, 48], num_layers=[1], dropout=[0.0, 0.6], evals_per_trial=4, budget_chars=4000,
                   n_trials=10)
    study = _run(base, space, study_data, tune.storage_for(None, tmp_path / "journal.log"), n_trials=10)
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert pruned and len(complete) >= 3
    budget_steps = tune.trial_config(base, space, {}).train.max_steps
    for t in pruned:
        assert len(t.intermediate_values) < space.evals_per_trial
        assert t.user_attrs["steps_trained"] < budget_steps
        # it was worse than the median of the completed trials at that evaluation
        step, value = max(t.intermediate_values.items())
        assert value > np.median([c.intermediate_values[step] for c in complete if c.number < t.number])
