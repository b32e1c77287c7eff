"""Optuna search for the best model at the pipeline's own training budget.

    python -m src.tune --n-trials 30            # or --timeout 3600; rerun to add trials
    python -m src.tune --n-jobs 1               # one trial at a time on every core (default: one process per core)
    python -m src.tune --storage postgresql://user:pw@host/db   # workers on many machines

The space is the table `tune.space` of params.yaml (src/space.py). A trial trains with the
pipeline's budget and schedule and is validated on a geometric ladder of that budget (1/9, 1/3,
1 with 3 rungs; validations before the last on a prefix of the split); successive halving
stops all but the best third at each rung, so the trials that finish have trained exactly as
`dvc exp run -S ...` trains. The study lives in a storage several workers can share; rerunning
the same command resumes it. Each trial is an MLflow child run of one parent run per study.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import optuna
from tqdm.auto import tqdm

from src import faults, fileio, tracking, tracking_wal, tune_workers
from src import space as search
from src.config import Config, TuneConfig, config_from_dict, tune_config_from_dict, with_overrides
from src.device import configure_process, resolve_device, resolve_precision
from src.errors import KarnnaError
from src.figures import study_figures
from src.model import count_params
from src.study_sampler import TrialSeededSampler
from src.study_storage import StorageLost, lost_trial_callback, run_failed_on_loss, storage_for
from src.train import TrainPaths, build_model, train
from src.tune_results import best_trials_table, write_best
from src.vocab import Vocab

# The objective as optuna-dashboard and Optuna's plots name it.
METRIC_NAME = "val loss (nats/char)"
ROOT = Path(__file__).resolve().parents[1]


class PruneOnEval:
    """A trial's on_eval hook (src.report.EvalHook): reports each validation on the ladder to
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


def objective_for(
    base: Config,
    space: TuneConfig,
    study_data: StudyData,
    tracking_uri: Optional[str],
    parent_run_id: Optional[str],
    log: Callable[[str], None],
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
                tracking.start_training_run(
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
                )
                final = result.val_history[-1][1]  # the whole split, at the end of the budget
                inner.log_metrics({"final_val_loss": final, "n_params": n_params}, result.steps)
        except optuna.TrialPruned:
            tracking.set_tags(tracking_uri, run_id, {"optuna.state": "PRUNED"})
            if pruning is not None:
                trial.set_user_attr("steps_trained", pruning.last_step)
                trial.set_user_attr("chars_trained", pruning.last_step * chars_per_step)
            raise
        except Exception as exc:
            trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {str(exc)[:500]}")
            tracking.set_tags(tracking_uri, run_id, {"optuna.state": "FAIL"})
            log(f"trial {trial.number} failed: {type(exc).__name__}: {exc}")
            raise
        tracking.set_tags(tracking_uri, run_id, {"optuna.state": "COMPLETE"})
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
    if space.eval_chars is not None and space.eval_chars > len(study_data.val_ids):
        raise KarnnaError(
            f"tune.eval_chars: {space.eval_chars:,} is longer than the validation split "
            f"({len(study_data.val_ids):,} characters); lower it or set it to null (the whole split)"
        )
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
) -> optuna.Study:
    """Create or resume the study and run n_trials more trials (or until timeout).

    The sampler is seeded per trial from tune.seed (src/study_sampler.py): every process of a
    study draws its own suggestions. on_ready: called once the study, its enqueued trials and
    its parent run exist, before the first trial (where `--n-jobs` starts the other workers).
    """
    budget = check_study(base, space, study_data)
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
    if not study.trials:
        study.set_user_attr("budget_chars", budget)
        for label, params in search.enqueued(space, base, log):
            # skip_if_exists keeps a second worker starting at the same moment from enqueuing it again.
            study.enqueue_trial(params, user_attrs={"enqueued": label}, skip_if_exists=True)
    parent_run_id = tracking.study_run(base, tracking_uri, study, space=_flat_space(space))
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

    objective = objective_for(base, space, study_data, tracking_uri, parent_run_id, log)
    with _quiet_optuna(), run_failed_on_loss(tracking_uri, parent_run_id):
        study.optimize(
            objective, n_trials=n_trials, timeout=timeout, n_jobs=n_jobs, catch=(Exception,), callbacks=[on_trial_end]
        )
    bar.close()
    return study


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


def _finish_study_run(base: Config, uri: str, study: optuna.Study, best: dict[str, Any]) -> None:
    """The study's parent run: trial counts, the best loss, Optuna's plots, best_params.yaml."""
    states = [t.state for t in study.trials]
    counts = {f"trials_{s.name.lower()}": states.count(s) for s in optuna.trial.TrialState if s.is_finished()}
    with tempfile.TemporaryDirectory() as tmp:
        tracking.finish_study_run(
            base,
            uri,
            study.user_attrs.get(tracking.STUDY_RUN_ATTR),
            {"best_val_loss": best["val_loss"], **counts},
            study_figures(study, Path(tmp)),
            [ROOT / "tune" / "best_params.yaml"],
        )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m src.tune", description=__doc__.split("\n\n")[0])
    p.add_argument("--n-trials", type=int, help="trials this worker runs (default: tune.n_trials)")
    p.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    p.add_argument(
        "--n-jobs",
        type=int,
        default=None,
        help="trials at a time, the cores split between them: on CPU one worker process each "
        "(on one study), on a GPU threads of this process (default: one per core on CPU, 1 on a GPU)",
    )
    # Set by --n-jobs for the worker processes it starts (src/tune_workers.py), not by hand.
    p.add_argument("--join", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument(
        "--storage", help="Optuna storage URL or journal file (default: tune.storage, else tune/journal.log)"
    )
    p.add_argument("--study-name", help="default: tune.study_name")
    p.add_argument("--pruner", choices=["halving", "hyperband", "median", "none"], help="default: tune.pruner")
    p.add_argument("--params", type=Path, default=ROOT / "params.yaml", help="default: params.yaml")
    p.add_argument(
        "--heartbeat",
        type=int,
        default=60,
        help="seconds between a running trial's heartbeats in a database storage (default 60); "
        "a trial silent for three is marked failed",
    )
    p.add_argument("--db-retry", type=float, default=30, help="seconds a database outage is waited for (default 30)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    raw_argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(raw_argv)
    try:
        raw = fileio.read_params(args.params)
        base = config_from_dict(raw, args.params.name)
        space = tune_config_from_dict(raw, args.params.name)
        overrides = {"study_name": args.study_name, "pruner": args.pruner, "storage": args.storage}
        space = with_overrides(space, {k: v for k, v in overrides.items() if v is not None}, "command line")
        device = resolve_device(base.train.device)
        cells = space.space["model.cell"].choices if "model.cell" in space.space else [base.model.cell]
        for cell in cells or []:  # a bf16 torch cannot run here fails before the study starts
            resolve_precision(base.train.precision, device, cell)
        n_jobs = tune_workers.default_jobs(device.type) if args.n_jobs is None else args.n_jobs
        if n_jobs < 1:
            raise KarnnaError(f"--n-jobs is {n_jobs}; use 1 or more")
        # On CPU the trials run in worker processes (src/tune_workers.py), on a GPU in threads.
        workers = args.join or (n_jobs if device.type == "cpu" else 1)
        threads = 1 if device.type == "cpu" else n_jobs
        configure_process(tune_workers.threads_per_trial(base.train.num_threads, max(workers, threads)), device)
        split_dir, vocab_path = ROOT / "data" / "split", ROOT / "data" / "vocab.json"
        for name in ("train.npy", "val.npy"):
            if not (split_dir / name).is_file():
                raise KarnnaError(f"{split_dir / name}: missing; run `dvc repro split` first")
        study_data = StudyData(
            Vocab.load(vocab_path), fileio.read_npy(split_dir / "train.npy"), fileio.read_npy(split_dir / "val.npy")
        )
        # As the stages do (pipeline/common.py), without importing them: src/ sits below pipeline/.
        uri = (
            (os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{ROOT / 'mlflow.db'}")
            if base.tracking.enabled
            else None
        )
        tracking_wal.bound_client_retries(os.environ)  # a store that dies mid-study fails in seconds
        if uri:
            tracking.connect(uri)  # an unreachable tracking server fails here, before any trial
        if args.heartbeat < 1:
            raise KarnnaError(f"--heartbeat is {args.heartbeat}; use 1 second or more")
        storage = storage_for(
            space.storage, ROOT / "tune" / "journal.log", args.heartbeat, lost_trial_callback(uri), args.db_retry
        )
        n_trials = args.n_trials if args.n_trials is not None else (None if args.timeout else space.n_trials)
        shares = [n_trials] if args.join else tune_workers.split_trials(n_trials, workers)
        joined: list = []
        try:
            study = run_study(
                base,
                space,
                study_data,
                storage,
                n_trials=shares[0],
                timeout=args.timeout,
                n_jobs=threads,
                tracking_uri=uri,
                progress=not args.no_progress,
                on_ready=lambda: joined.extend(tune_workers.start(raw_argv, shares)),
            )
            failed = [code for code in tune_workers.finish(joined) if code != 0]
        except BaseException:
            tune_workers.stop(joined)
            raise
        if args.join:
            return 0
        if failed:
            print(f"warning: {len(failed)} of the {len(joined)} other worker processes failed", file=sys.stderr)
        print(best_trials_table(study))
        best = write_best(study, ROOT / "tune" / "best_params.yaml")
        if best is None:
            print("no trial completed yet")
            return 1
        print(f"best: trial {best['trial']}, val loss {best['val_loss']:.4f} -> tune/best_params.yaml")
        print(f"train it through the pipeline:\n  {best['command']}")
        if uri:
            _finish_study_run(base, uri, study, best)
    except (KarnnaError, StorageLost) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # a worker process the caller stops leaves the one line to the caller
    sys.exit(faults.run(main, "src.tune", quiet_interrupt="--join" in sys.argv))
