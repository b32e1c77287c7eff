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
from typing import MutableMapping, Optional

from src.config.schema import config_from_dict, tune_config_from_dict, with_overrides
from src.data.vocab import Vocab
from src.tracking import runs, wal
from src.training.device import configure_process, resolve_device, resolve_precision, shared_cores
from src.tuning import processes
from src.tuning.results import best_trials_table, write_best
from src.tuning.runner import StudyData, close_study_run, run_study
from src.tuning.storage import StorageLost, lost_trial_callback, storage_for
from src.utils import cores, faults, fileio, repo
from src.utils.errors import KarnnaError

ROOT = Path(__file__).resolve().parents[1]
FILES = repo.Layout(ROOT)


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
    # Set by --n-jobs for the worker processes it starts (src/tuning/processes.py), not by hand.
    p.add_argument("--join", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument(
        "--storage", help="Optuna storage URL or journal file (default: tune.storage, else tune/journal.log)"
    )
    p.add_argument("--study-name", help="default: tune.study_name")
    p.add_argument("--pruner", choices=["halving", "hyperband", "median", "none"], help="default: tune.pruner")
    p.add_argument("--params", type=Path, default=FILES.params, help="default: params.yaml")
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
    """The command: argv and the environment are read here, and only here."""
    raw_argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(raw_argv)
    wal.bound_client_retries(os.environ)  # a store that dies mid-study fails in seconds

    def study() -> int:
        try:
            return tune(args, raw_argv, os.environ)
        except StorageLost as exc:  # a BaseException (src/tuning/retry.py), said as bad input is
            raise KarnnaError(str(exc)) from None

    # A worker process the caller stops leaves the one line to the caller.
    return faults.run(study, "src.tune", quiet_interrupt=bool(args.join))


def tune(args: argparse.Namespace, raw_argv: list[str], environ: MutableMapping[str, str]) -> int:
    """Run this worker's share of the study; the first worker also starts the others (--n-jobs)
    and reports. raw_argv: the command line the other workers get; environ: for the store."""
    cores.reproducible_fp32(environ)  # before torch's first product: losses whatever the threads
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
    # On CPU the trials run in worker processes (src/tuning/processes.py), on a GPU in threads.
    workers = args.join or (n_jobs if device.type == "cpu" else 1)
    threads = 1 if device.type == "cpu" else n_jobs
    configure_process(processes.threads_per_trial(base.train.num_threads, max(workers, threads)), device)
    for path in (FILES.split_dir / "train.npy", FILES.split_dir / "val.npy"):
        if not path.is_file():
            raise KarnnaError(f"{path}: missing; run `dvc repro split` first")
    study_data = StudyData(
        Vocab.load(FILES.vocab),
        fileio.map_npy(FILES.split_dir / "train.npy"),
        fileio.map_npy(FILES.split_dir / "val.npy"),
    )
    uri = repo.tracking_uri(environ, ROOT) if base.tracking.enabled else None
    if uri:
        runs.connect(uri)  # an unreachable tracking server fails here, before any trial
    if args.heartbeat < 1:
        raise KarnnaError(f"--heartbeat is {args.heartbeat}; use 1 second or more")
    storage = storage_for(space.storage, FILES.journal, args.heartbeat, lost_trial_callback(uri), args.db_retry)
    n_trials = args.n_trials if args.n_trials is not None else (None if args.timeout else space.n_trials)
    shares = [n_trials] if args.join else processes.split_trials(n_trials, workers)
    joined: list = []
    try:
        with shared_cores(base.train.num_threads, device, cores.registry_path(environ)) as rebalance:
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
                on_log=rebalance,
            )
        failed = [code for code in processes.finish(joined) if code != 0]
    except BaseException:
        processes.stop(joined)
        raise
    if args.join:
        return 0
    if failed:
        print(f"warning: {len(failed)} of the {len(joined)} other worker processes failed", file=sys.stderr)
    return _report(base, study, uri)


def _report(base, study, uri: Optional[str]) -> int:
    """The table, tune/best_params.yaml and the pipeline command that trains the best trial."""
    print(best_trials_table(study))
    best = write_best(study, FILES.best_params)
    if best is None:
        print("no trial completed yet")
        return 1
    print(f"best: trial {best['trial']}, val loss {best['val_loss']:.4f} -> tune/best_params.yaml")
    print(f"train it through the pipeline:\n  {best['command']}")
    if uri:
        close_study_run(base, uri, study, best, FILES.best_params)
    return 0


if __name__ == "__main__":
    sys.exit(main())
