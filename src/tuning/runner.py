"""An Optuna study at the pipeline's own training budget: the objective, its pruning ladder, and
the loop that creates or resumes a study and runs trials on it (the command is src/tune.py).

A trial trains with the pipeline's budget and schedule and is validated on a geometric ladder of
that budget (1/9, 1/3, 1 with 3 rungs; validations before the last on a prefix of the split);
successive halving stops all but the best third at each rung, so the trials that finish have
trained exactly as `dvc exp run -S ...` trains. Each trial is an MLflow child run of one parent
run per study.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import optuna
from tqdm.auto import tqdm

from src.config.schema import Config, TuneConfig, with_overrides
from src.data.vocab import Vocab
from src.model.charrnn import count_params
from src.tracking import runs, trials
from src.tracking.figures import study_figures
from src.training import evaluate
from src.training.loop import train
from src.training.report import Reporter
from src.training.setup import build_model
from src.training.state import TrainPaths
from src.tuning import space as search
from src.tuning.sampler import TrialSeededSampler
from src.tuning.storage import exclusive, run_failed_on_loss

# The objective as optuna-dashboard and Optuna's plots name it.
METRIC_NAME = "val loss (nats/char)"


class PruneOnEval:
    """A trial's on_eval hook (src.training.report.EvalHook): reports each validation on the ladder to
    Optuna (at the rung's resource, not the training step: trials with another batch shape take
    other step counts for the same characters) and raises TrialPruned when the pruner says so
    (training stops there, the curve is kept). The last validation is never pruned: it is the
    trial's value."""

    def __init__(self, trial: optuna.Trial, rungs: dict[int, int]):
        self.trial = trial
        self.rungs = rungs
        self.last_step = 0

    def __call__(self, step: int, val_loss: float) -> None:
        self.last_step = max(self.last_step, step)
        if step not in self.rungs:
            return
        self.trial.report(val_loss, self.rungs[step])
        if step < max(self.rungs) and self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step} (val loss {val_loss:.4f})")


@dataclass
class StudyData:
    vocab: Vocab
    train_ids: np.ndarray
    val_ids: np.ndarray


def _size_trial(trial, base, cfg, params, steps, space: TuneConfig, study_data: StudyData) -> int:
    """Record the trial's size and its pipeline overrides; skip it (pruned) when it is larger than
    tune.max_params_per_char allows. -> its parameter count."""
    n_params = count_params(build_model(cfg, study_data.vocab))
    ratio = n_params / len(study_data.train_ids)
    trial.set_user_attr("n_params", n_params)
    trial.set_user_attr("params_per_char", round(ratio, 4))
    trial.set_user_attr("pipeline_overrides", search.pipeline_overrides(base, params, steps, len(study_data.train_ids)))
    if space.max_params_per_char is not None and ratio > space.max_params_per_char:
        reason = f"skipped: {ratio:.2f} params per character > tune.max_params_per_char {space.max_params_per_char:g}"
        trial.set_user_attr("skipped", reason)
        raise optuna.TrialPruned(reason)
    return n_params


LIVE_FLUSH_S = 5.0  # how far behind its training a running trial's curve in the store may be


def live_curve(reporter: Reporter, then: Callable[[], object], every_s: float) -> Callable[[], None]:
    """A trial's train() on_log: `then`, and every `every_s` seconds what the trial logged handed to
    the store's sender thread. A training run holds its metrics until a checkpoint, so that a run
    resumed from one logs no step twice; a trial is never resumed and checkpoints only at its end,
    so without this its curve would reach mlflow ui only at its rungs, a third of the budget apart."""
    last = time.monotonic()

    def on_log() -> None:
        nonlocal last
        then()
        if time.monotonic() - last >= every_s:
            reporter.flush()
            last = time.monotonic()

    return on_log


def objective_for(
    base: Config,
    space: TuneConfig,
    study_data: StudyData,
    tracking_uri: Optional[str],
    parent_run_id: Optional[str],
    log: Callable[[str], None],
    on_log: Callable[[], object] = lambda: None,
) -> Callable[[optuna.Trial], float]:
    budget = search.budget_chars(space, base)

    def objective(trial: optuna.Trial) -> float:
        params = search.suggest(trial, space, base)
        steps = search.trial_steps(with_overrides(base, params, "trial"), budget)
        rungs = search.ladder(steps, space.rungs, space.reduction_factor)
        cfg = search.trial_config(base, params, steps)
        n_params = _size_trial(trial, base, cfg, params, steps, space, study_data)
        chars_per_step = cfg.train.batch_size * cfg.train.seq_len
        # Which machine and process ran it: the trail when a worker is lost.
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        context = {"optuna_trial": trial.number, "optuna_study": trial.study.study_name}
        run_id, pruning = None, None
        try:
            with (
                tempfile.TemporaryDirectory(prefix=f"karnna-trial-{trial.number}-") as tmp,
                runs.start_training_run(
                    cfg,
                    tracking_uri,
                    context,
                    parent_run_id=parent_run_id,
                    run_name=f"trial-{trial.number}",
                    stops=(optuna.TrialPruned,),
                ) as inner,
            ):
                run_id = inner.run_id
                trial.set_user_attr("mlflow_run_id", run_id)
                pruning = PruneOnEval(trial, rungs)
                paths = TrainPaths(Path(tmp) / "best.pt", Path(tmp) / "last.pt")
                result = train(
                    cfg,
                    study_data.vocab,
                    study_data.train_ids,
                    study_data.val_ids,
                    paths,
                    reporter=inner,
                    progress=False,
                    log=lambda _: None,
                    on_eval=[pruning],
                    eval_steps=rungs,
                    eval_chars=space.eval_chars,
                    on_log=live_curve(inner, on_log, LIVE_FLUSH_S),
                )
                final = result.val_history[-1][1]  # the whole split, at the end of the budget
                inner.log_metrics({"final_val_loss": final, "n_params": n_params}, result.steps)
        except optuna.TrialPruned:
            trials.set_tags(tracking_uri, run_id, {"optuna.state": "PRUNED"})
            if pruning is not None:
                trial.set_user_attr("steps_trained", pruning.last_step)
                trial.set_user_attr("chars_trained", pruning.last_step * chars_per_step)
            raise
        except Exception as exc:
            trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {str(exc)[:500]}")
            trials.set_tags(tracking_uri, run_id, {"optuna.state": "FAIL"})
            log(f"trial {trial.number} failed: {type(exc).__name__}: {exc}")
            raise
        trials.set_tags(tracking_uri, run_id, {"optuna.state": "COMPLETE"})
        trial.set_user_attr("steps_trained", result.steps)
        trial.set_user_attr("chars_trained", result.steps * chars_per_step)
        trial.set_user_attr("seconds", round(result.seconds, 1))
        return final

    return objective


def check_study(base: Config, space: TuneConfig, study_data: StudyData) -> int:
    """Bad input as one line before any trial starts; returns the budget in characters."""
    search.check_space(space, base)
    budget = search.budget_chars(space, base)
    # The largest batch the space can draw must fit in the budget.
    largest = {}
    for name in ("train.batch_size", "train.seq_len"):
        dim = space.space.get(name)
        if dim is not None:
            largest[name] = max(dim.choices) if dim.choices is not None else int(dim.high)
    search.trial_steps(with_overrides(base, largest, "tune.space"), budget)
    evaluate.check_prefix(space.eval_chars, len(study_data.val_ids))
    return budget


def run_study(
    base: Config,
    space: TuneConfig,
    study_data: StudyData,
    storage: optuna.storages.BaseStorage | str,
    n_trials: Optional[int] = None,
    timeout: Optional[float] = None,
    n_jobs: int = 1,
    tracking_uri: Optional[str] = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    on_ready: Optional[Callable[[], None]] = None,
    on_log: Callable[[], object] = lambda: None,
) -> optuna.Study:
    """Create or resume the study and run n_trials more trials (or until timeout).

    The sampler is seeded per trial from tune.seed (src/tuning/sampler.py): every process of a
    study draws its own suggestions. on_ready: called once the study, its enqueued trials and
    its parent run exist, before the first trial (where `--n-jobs` starts the other workers).
    on_log: each training's train() `on_log` (the command re-balances its threads there).
    """
    budget = check_study(base, space, study_data)
    study, parent_run_id = open_study(base, space, storage, budget, tracking_uri, log)
    if on_ready is not None:
        on_ready()
    before = sum(t.state.is_finished() for t in study.trials)
    log(
        f"study {space.study_name!r}: {before} trials finished so far; running {n_trials or 'unlimited'} more"
        + (f" for up to {timeout:.0f} s" if timeout else "")
        + f"; {budget:,} training characters per full trial"
    )

    bar = tqdm(total=n_trials, disable=not progress, unit="trial", dynamic_ncols=True)
    lock = threading.Lock()

    def on_trial_end(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        with lock:
            bar.update(1)
            try:
                best = f"{study.best_value:.4f} (trial {study.best_trial.number})"
            except ValueError:
                best = "-"
            bar.set_postfix_str(f"last: {trial.state.name.lower()} {trial.value or float('nan'):.4f}  best {best}")

    objective = objective_for(base, space, study_data, tracking_uri, parent_run_id, log, on_log)
    with _quiet_optuna(), run_failed_on_loss(tracking_uri, parent_run_id):
        study.optimize(
            objective, n_trials=n_trials, timeout=timeout, n_jobs=n_jobs, catch=(Exception,), callbacks=[on_trial_end]
        )
    bar.close()
    return study


def open_study(
    base: Config,
    space: TuneConfig,
    storage: optuna.storages.BaseStorage | str,
    budget: int,
    tracking_uri: Optional[str],
    log: Callable[[str], None] = print,
) -> tuple[optuna.Study, Optional[str]]:
    """Create or load the study; on a new one, its budget and enqueued trials; and its MLflow
    parent run. -> (study, parent run id). Workers starting together take turns (exclusive()), so
    they share one parent run and enqueue each trial once."""
    study = optuna.create_study(
        study_name=space.study_name,
        storage=storage,
        direction="minimize",
        sampler=TrialSeededSampler(space.seed),
        pruner=search.make_pruner(space.pruner, space),
        load_if_exists=True,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([METRIC_NAME])
    with exclusive(storage, space.study_name):
        if not study.trials:
            study.set_user_attr("budget_chars", budget)
            for label, params in search.enqueued(space, base, log):
                study.enqueue_trial(params, user_attrs={"enqueued": label}, skip_if_exists=True)
        parent_run_id = trials.study_run(base, tracking_uri, study, space=_flat_space(space))
    return study, parent_run_id


def _flat_space(space: TuneConfig) -> dict[str, Any]:
    """The tune section as MLflow params: one per key, one per dimension of the table."""
    flat = {k: v for k, v in space.model_dump(exclude={"space"}).items()}
    for name, dim in space.space.items():
        flat[f"space.{name}"] = dim.model_dump(exclude_none=True, exclude_defaults=True)
    return flat


@contextlib.contextmanager
def _quiet_optuna():
    """Optuna logs every trial at INFO; the progress bar and the final table say it better."""
    old = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(old)


def close_study_run(base: Config, uri: str, study: optuna.Study, best: dict[str, Any], best_file: Path) -> None:
    """The study's parent run: trial counts, the best loss, Optuna's plots, best_params.yaml."""
    states = [t.state for t in study.trials]
    counts = {f"trials_{s.name.lower()}": states.count(s) for s in optuna.trial.TrialState if s.is_finished()}
    with tempfile.TemporaryDirectory() as tmp:
        trials.finish_study_run(
            base,
            uri,
            study.user_attrs.get(trials.STUDY_RUN_ATTR),
            {"best_val_loss": best["val_loss"], **counts},
            study_figures(study, Path(tmp)),
            [best_file],
        )
