"""Optuna search for the best model at the pipeline's own training budget.

    python -m src.tune --n-trials 30            # or --timeout 3600; rerun to add trials
    python -m src.tune --n-jobs 1               # one trial at a time on every core (default: one process per core)
    python -m src.tune --storage postgresql://user:pw@host/db   # workers on many machines

The space is the table `tune.space` of params.yaml (src/tuning/space.py). A trial trains with the
pipeline's budget and schedule and is validated on a geometric ladder of that budget (1/9, 1/3,
1 with 3 rungs; validations before the last on a prefix of the split); successive halving
stops all but the best third at each rung, so the trials that finish have trained exactly as
`dvc exp run -S ...` trains. The study lives in a storage several workers can share; rerunning
the same command resumes it. Each trial is an MLflow child run of one parent run per study.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional

from src.config.schema import config_from_dict, tune_config_from_dict, with_overrides
from src.data.vocab import Vocab
from src.tracking import runs, wal
from src.training.device import configure_process, resolve_device, resolve_precision
from src.tuning import processes
from src.tuning.results import best_trials_table, write_best
from src.tuning.runner import StudyData, close_study_run, run_study
from src.tuning.storage import StorageLost, lost_trial_callback, storage_for
from src.utils import faults, fileio
from src.utils.errors import KarnnaError

ROOT = Path(__file__).resolve().parents[1]


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
    # Set by --n-jobs for the worker processes it starts (src/processes.py), not by hand.
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
        n_jobs = processes.default_jobs(device.type) if args.n_jobs is None else args.n_jobs
        if n_jobs < 1:
            raise KarnnaError(f"--n-jobs is {n_jobs}; use 1 or more")
        # On CPU the trials run in worker processes (src/processes.py), on a GPU in threads.
        workers = args.join or (n_jobs if device.type == "cpu" else 1)
        threads = 1 if device.type == "cpu" else n_jobs
        configure_process(processes.threads_per_trial(base.train.num_threads, max(workers, threads)), device)
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
        wal.bound_client_retries(os.environ)  # a store that dies mid-study fails in seconds
        if uri:
            runs.connect(uri)  # an unreachable tracking server fails here, before any trial
        if args.heartbeat < 1:
            raise KarnnaError(f"--heartbeat is {args.heartbeat}; use 1 second or more")
        storage = storage_for(
            space.storage, ROOT / "tune" / "journal.log", args.heartbeat, lost_trial_callback(uri), args.db_retry
        )
        n_trials = args.n_trials if args.n_trials is not None else (None if args.timeout else space.n_trials)
        shares = [n_trials] if args.join else processes.split_trials(n_trials, workers)
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
                on_ready=lambda: joined.extend(processes.start(raw_argv, shares)),
            )
            failed = [code for code in processes.finish(joined) if code != 0]
        except BaseException:
            processes.stop(joined)
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
            close_study_run(base, uri, study, best, ROOT / "tune" / "best_params.yaml")
    except (KarnnaError, StorageLost) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # a worker process the caller stops leaves the one line to the caller
    sys.exit(faults.run(main, "src.tune", quiet_interrupt="--join" in sys.argv))
