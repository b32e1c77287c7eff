"""Optuna search over Karpathy's knobs: lstm_size, num_layers, dropout (and optionally lr, seq_len).

    python -m src.tune --n-trials 30            # or --timeout 3600; rerun to add trials
    python -m src.tune --n-jobs 2               # threads in one process, the cores split between them
    python -m src.tune --storage postgresql://user:pw@host/db   # workers on many machines

Every trial trains on the same train/validation split for the same number of characters
(tune.budget_chars) and reports its validation loss at each evaluation, so the pruner can stop
hopeless trials early. The study lives in a storage several workers can share; rerunning the
same command resumes it. Each trial is an MLflow child run of one parent run per study.
"""

from __future__ import annotations

import argparse
import contextlib
import math
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
import yaml
from tqdm.auto import tqdm

from src import fileio, tracking
from src.config import Config, TuneConfig, config_from_dict, tune_config_from_dict, with_overrides
from src.device import configure_process, resolve_device
from src.errors import KarnnaError
from src.errors import redact_url as _redact
from src.figures import study_figures
from src.model import count_params
from src.train import TrainPaths, build_model, train
from src.vocab import Vocab

# The seed notebook's configuration, enqueued as the first trial.
SEED_RECIPE = {"model.lstm_size": 512, "model.num_layers": 2, "model.dropout": 0.5, "train.lr": 1.0e-3, "train.seq_len": 100}


def storage_for(
    url: Optional[str],
    default_journal: Path,
    heartbeat: int = 60,
    on_lost: Optional[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]] = None,
) -> optuna.storages.BaseStorage | str:
    """An Optuna storage: a URL as given (e.g. postgresql://...), or the journal file.

    The journal file (not SQLite) is the default because SQLite's locking breaks under several
    writer processes, while the journal appends with a file lock. In a database, each running
    trial beats every `heartbeat` seconds; a trial silent for three beats (its worker was killed
    or its machine lost) is marked FAIL by the next worker that starts a trial, which calls
    `on_lost` for it."""
    if url:
        if url.startswith(("postgresql", "mysql", "sqlite")):
            try:
                with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.9
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat, grace_period=3 * heartbeat,
                                                      heartbeat_stale_trial_callback=on_lost)
            except Exception as exc:  # sqlalchemy raises many kinds; all mean "cannot use this URL"
                raise KarnnaError(
                    f"cannot open the study storage {_redact(url)}: {str(exc).splitlines()[0][:200]}; "
                    "check the URL, that the server is running and reachable, and the driver (psycopg) is installed"
                ) from None
        if url.endswith(".log") or url.startswith("journal:"):
            path = Path(url.removeprefix("journal:"))
            return _journal(path)
        raise KarnnaError(f"--storage {url!r}: expected postgresql://, mysql://, sqlite:/// or a journal file ending in .log")
    return _journal(default_journal)


def _journal(path: Path) -> optuna.storages.JournalStorage:
    from optuna.storages.journal import JournalFileBackend

    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def lost_trial_callback(tracking_uri: Optional[str]) -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None]:
    """Ends the MLflow run of a trial whose worker stopped beating: FAILED, with the reason."""

    def on_lost(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        worker = trial.user_attrs.get("worker", "its worker")
        tracking.end_failed_run(tracking_uri, trial.user_attrs.get("mlflow_run_id"),
                                f"worker lost: no heartbeat from {worker}", {"optuna.state": "FAIL"})
        print(f"trial {trial.number}: marked failed, no heartbeat from {worker}", file=sys.stderr)

    return on_lost


def make_pruner(name: str, evals_per_trial: int) -> optuna.pruners.BasePruner:
    if name == "median":
        # Let a few trials finish and give each one evaluation before comparing.
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=evals_per_trial, reduction_factor=3)
    return optuna.pruners.NopPruner()


def suggest(trial: optuna.Trial, space: TuneConfig) -> dict[str, Any]:
    """The trial's params under their params.yaml names."""
    params = {
        "model.lstm_size": trial.suggest_categorical("model.lstm_size", space.lstm_size),
        "model.num_layers": trial.suggest_categorical("model.num_layers", space.num_layers),
        "model.dropout": trial.suggest_float("model.dropout", space.dropout[0], space.dropout[1]),
    }
    if space.lr is not None:
        params["train.lr"] = trial.suggest_float("train.lr", space.lr[0], space.lr[1], log=True)
    if space.seq_len is not None:
        params["train.seq_len"] = trial.suggest_categorical("train.seq_len", space.seq_len)
    return params


def seed_trial(space: TuneConfig) -> dict[str, Any]:
    """The seed recipe restricted to the dimensions searched, where it lies inside the space."""
    wanted = {
        "model.lstm_size": SEED_RECIPE["model.lstm_size"] in space.lstm_size,
        "model.num_layers": SEED_RECIPE["model.num_layers"] in space.num_layers,
        "model.dropout": space.dropout[0] <= SEED_RECIPE["model.dropout"] < space.dropout[1],
    }
    if space.lr is not None:
        wanted["train.lr"] = space.lr[0] <= SEED_RECIPE["train.lr"] <= space.lr[1]
    if space.seq_len is not None:
        wanted["train.seq_len"] = SEED_RECIPE["train.seq_len"] in space.seq_len
    return {k: SEED_RECIPE[k] for k, ok in wanted.items() if ok}


def trial_config(base: Config, space: TuneConfig, params: dict[str, Any]) -> Config:
    """The base config with the trial's params and the per-trial budget applied."""
    cfg = with_overrides(base, params, "trial")
    chars_per_step = cfg.train.batch_size * cfg.train.seq_len
    steps = max(1, space.budget_chars // chars_per_step)
    return with_overrides(
        cfg,
        {
            "train.max_steps": steps,
            "train.epochs": max(cfg.train.epochs, steps),  # the budget, not the epochs, ends a trial
            "train.eval_interval": max(1, math.ceil(steps / space.evals_per_trial)),
            "train.checkpoint_interval": steps,
            "train.resume": "never",
        },
        "trial",
    )


class PruneOnEval:
    """A trial's on_eval hook (src.report.EvalHook): reports each validation loss to Optuna and
    raises TrialPruned when the pruner says so (training stops there, the curve is kept)."""

    def __init__(self, trial: optuna.Trial):
        self.trial = trial
        # Reported by evaluation number, not training step: trials with another seq_len take
        # other step counts for the same budget, and the pruner compares equal steps.
        self.evals = 0
        self.last_step = 0

    def __call__(self, step: int, val_loss: float) -> None:
        self.last_step = step
        self.evals += 1
        self.trial.report(val_loss, self.evals)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step} (val loss {val_loss:.4f})")


@dataclass
class StudyData:
    vocab: Vocab
    train_ids: np.ndarray
    val_ids: np.ndarray


def objective_for(
    base: Config,
    space: TuneConfig,
    study_data: StudyData,
    tracking_uri: Optional[str],
    parent_run_id: Optional[str],
    log: Callable[[str], None],
) -> Callable[[optuna.Trial], float]:
    def objective(trial: optuna.Trial) -> float:
        params = suggest(trial, space)
        cfg = trial_config(base, space, params)
        n_params = count_params(build_model(cfg, study_data.vocab))
        ratio = n_params / len(study_data.train_ids)
        trial.set_user_attr("n_params", n_params)
        trial.set_user_attr("params_per_char", round(ratio, 4))
        if space.max_params_per_char is not None and ratio > space.max_params_per_char:
            reason = f"skipped: {ratio:.2f} params per character > tune.max_params_per_char {space.max_params_per_char:g}"
            trial.set_user_attr("skipped", reason)
            raise optuna.TrialPruned(reason)
        # Which machine and process ran it: the trail when a worker is lost.
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        context = {"optuna_trial": trial.number, "optuna_study": trial.study.study_name}
        run_id = None
        try:
            with tempfile.TemporaryDirectory(prefix=f"karnna-trial-{trial.number}-") as tmp, \
                    tracking.start_training_run(cfg, tracking_uri, context, parent_run_id=parent_run_id,
                                                run_name=f"trial-{trial.number}", stops=(optuna.TrialPruned,)) as inner:
                run_id = inner.run_id
                trial.set_user_attr("mlflow_run_id", run_id)
                pruning = PruneOnEval(trial)
                paths = TrainPaths(Path(tmp) / "best.pt", Path(tmp) / "last.pt")
                result = train(cfg, study_data.vocab, study_data.train_ids, study_data.val_ids, paths,
                               reporter=inner, progress=False, log=lambda _: None, on_eval=[pruning])
                inner.log_metrics({"best_val_loss": result.best_val_loss, "n_params": n_params}, result.steps)
        except optuna.TrialPruned:
            tracking.set_tags(tracking_uri, run_id, {"optuna.state": "PRUNED"})
            if "skipped" not in trial.user_attrs:
                trial.set_user_attr("steps_trained", pruning.last_step)
            raise
        except Exception as exc:
            trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {str(exc)[:500]}")
            tracking.set_tags(tracking_uri, run_id, {"optuna.state": "FAIL"})
            log(f"trial {trial.number} failed: {type(exc).__name__}: {exc}")
            raise
        tracking.set_tags(tracking_uri, run_id, {"optuna.state": "COMPLETE"})
        trial.set_user_attr("steps_trained", result.steps)
        return result.best_val_loss

    return objective


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
) -> optuna.Study:
    """Create or resume the study and run n_trials more trials (or until timeout)."""
    study = optuna.create_study(
        study_name=space.study_name,
        storage=storage,
        direction="minimize",
        sampler=optuna.samplers.TPESampler(seed=space.seed),
        pruner=make_pruner(space.pruner, space.evals_per_trial),
        load_if_exists=True,
    )
    if space.enqueue_seed and not study.trials:
        # skip_if_exists keeps a second worker starting at the same moment from enqueuing it again.
        study.enqueue_trial(seed_trial(space), user_attrs={"seed_recipe": True}, skip_if_exists=True)
    parent_run_id = tracking.study_run(base, tracking_uri, study, space=space.model_dump())
    before = sum(t.state.is_finished() for t in study.trials)
    log(f"study {space.study_name!r}: {before} trials finished so far; running {n_trials or 'unlimited'} more"
        + (f" for up to {timeout:.0f} s" if timeout else ""))

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
    with _quiet_optuna():
        study.optimize(objective, n_trials=n_trials, timeout=timeout, n_jobs=n_jobs,
                       catch=(Exception,), callbacks=[on_trial_end])
    bar.close()
    return study


@contextlib.contextmanager
def _quiet_optuna():
    """Optuna logs every trial at INFO; the progress bar and the final table say it better."""
    old = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(old)


def best_trials_table(study: optuna.Study, top: int = 10) -> str:
    trials = [t for t in study.trials if t.state.is_finished()]
    done = sorted((t for t in trials if t.state == optuna.trial.TrialState.COMPLETE), key=lambda t: t.value)
    rows = [f"{'trial':>5}  {'state':<8} {'val loss':>8}  {'n_params':>10}  params"]
    for t in done[:top]:
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in t.params.items())
        seed = "  (seed recipe)" if t.user_attrs.get("seed_recipe") else ""
        rows.append(f"{t.number:>5}  {'complete':<8} {t.value:>8.4f}  {t.user_attrs.get('n_params', 0):>10,}  {params}{seed}")
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in optuna.trial.TrialState if s.is_finished()}
    rows.append("trials: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    return "\n".join(rows)


def best_params_command(params: dict[str, Any]) -> str:
    return "dvc exp run " + " ".join(f"-S {k}={_fmt(v)}" for k, v in params.items())


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def write_best(study: optuna.Study, path: Path) -> Optional[dict[str, Any]]:
    try:
        best = study.best_trial
    except ValueError:
        return None
    summary = {
        "study": study.study_name,
        "trial": best.number,
        "val_loss": best.value,
        "n_params": best.user_attrs.get("n_params"),
        "params": dict(best.params),
        "command": best_params_command(best.params),
    }
    fileio.write_text(path, yaml.safe_dump(summary, sort_keys=False))
    return summary


def main(argv: Optional[list[str]] = None) -> int:
    from pipeline.common import PARAMS, ROOT, SPLIT_DIR, VOCAB, load_params, tracking_uri

    p = argparse.ArgumentParser(prog="python -m src.tune", description=__doc__.split("\n\n")[0])
    p.add_argument("--n-trials", type=int, help="trials this worker runs (default: tune.n_trials)")
    p.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    p.add_argument("--n-jobs", type=int, default=1,
                   help="trials in parallel threads of this process (each draws from its own generators)")
    p.add_argument("--storage", help="Optuna storage URL or journal file (default: tune.storage, else tune/journal.log)")
    p.add_argument("--study-name", help="default: tune.study_name")
    p.add_argument("--pruner", choices=["median", "hyperband", "none"], help="default: tune.pruner")
    p.add_argument("--params", type=Path, default=PARAMS, help="default: params.yaml")
    p.add_argument("--heartbeat", type=int, default=60,
                   help="seconds between a running trial's heartbeats in a database storage (default 60); "
                        "a trial silent for three is marked failed")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    try:
        raw = load_params(args.params)
        base = config_from_dict(raw, args.params.name)
        space = tune_config_from_dict(raw, args.params.name)
        overrides = {"study_name": args.study_name, "pruner": args.pruner, "storage": args.storage}
        space = with_overrides(space, {k: v for k, v in overrides.items() if v is not None}, "command line")
        if args.n_jobs < 1:
            raise KarnnaError(f"--n-jobs is {args.n_jobs}; use 1 or more")
        # Trials in threads share the process's settings: the cores are split between them.
        threads = base.train.num_threads or (max(1, (os.cpu_count() or 1) // args.n_jobs) if args.n_jobs > 1 else 0)
        configure_process(threads, resolve_device(base.train.device))
        for name in ("train.npy", "val.npy"):
            if not (SPLIT_DIR / name).is_file():
                raise KarnnaError(f"{SPLIT_DIR / name}: missing; run `dvc repro split` first")
        study_data = StudyData(Vocab.load(VOCAB), fileio.read_npy(SPLIT_DIR / "train.npy"),
                               fileio.read_npy(SPLIT_DIR / "val.npy"))
        uri = tracking_uri() if base.tracking.enabled else None
        if uri:
            tracking.connect(uri)  # an unreachable tracking server fails here, before any trial
        if args.heartbeat < 1:
            raise KarnnaError(f"--heartbeat is {args.heartbeat}; use 1 second or more")
        storage = storage_for(space.storage, ROOT / "tune" / "journal.log", args.heartbeat, lost_trial_callback(uri))
        n_trials = args.n_trials if args.n_trials is not None else (None if args.timeout else space.n_trials)
        study = run_study(base, space, study_data, storage, n_trials=n_trials, timeout=args.timeout,
                          n_jobs=args.n_jobs, tracking_uri=uri, progress=not args.no_progress)
        print(best_trials_table(study))
        best = write_best(study, ROOT / "tune" / "best_params.yaml")
        if best is None:
            print("no trial completed yet")
            return 1
        print(f"best: trial {best['trial']}, val loss {best['val_loss']:.4f} -> tune/best_params.yaml")
        print(f"train it through the pipeline:\n  {best['command']}")
        if uri:
            states = [t.state for t in study.trials]
            counts = {f"trials_{s.name.lower()}": states.count(s) for s in optuna.trial.TrialState if s.is_finished()}
            with tempfile.TemporaryDirectory() as tmp:
                tracking.finish_study_run(base, uri, study.user_attrs.get(tracking.STUDY_RUN_ATTR),
                                          {"best_val_loss": best["val_loss"], **counts},
                                          study_figures(study, Path(tmp)), [ROOT / "tune" / "best_params.yaml"])
    except KarnnaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
