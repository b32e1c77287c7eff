"""Worker processes for `python -m src.tune --n-jobs N` on a CPU: N processes on one study.

On the 2-core AMD EPYC two processes of one torch thread ran 1.09x the trials per hour of two
trials in threads of one process on a quiet machine, and 1.28x under load (docs/BENCHMARKS.md,
"Workers on 2 cores"): threads share one interpreter between the trials' Python work. So on a
CPU the calling process is worker 0 and, once the study, its enqueued trials and its MLflow
parent run exist, starts workers 1..N-1 with the same command line; they only join. The trials
asked for are split between the workers (exactly n_trials in all), each trial samples with a
seed of its own (src/tuning/sampler.py), and on Linux the joined workers die with the caller (PR_SET_PDEATHSIG), so a Ctrl-C or a kill leaves
no orphan training; a killed worker's running trial stays RUNNING in a journal, as with any
worker (a database storage with --heartbeat marks it failed).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from typing import Optional, Union

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_ALONE = ("--n-jobs", "--n-trials", "--join")  # options the caller's line gives per worker


def default_jobs(device_type: str) -> int:
    """Trials at a time when --n-jobs is not given: one per core on CPU (measured against one
    trial on every core: docs/BENCHMARKS.md, "Workers on 2 cores"); one on a GPU."""
    return max(1, os.cpu_count() or 1) if device_type == "cpu" else 1


def threads_per_trial(num_threads: Union[int, str], n_jobs: int) -> Union[int, str]:
    """train.num_threads when a count or for a single trial ("auto": the process's share of the
    machine's cores, src/utils/cores.py; 0: torch's default), else the cores split between the
    trials running at once in this process."""
    if num_threads not in (0, "auto") or n_jobs == 1:
        return num_threads
    return max(1, (os.cpu_count() or 1) // n_jobs)


def split_trials(n_trials: Optional[int], workers: int) -> list[Optional[int]]:
    """Each worker's share of n_trials (None: no count, the timeout ends them all)."""
    if n_trials is None:
        return [None] * workers
    each, extra = divmod(n_trials, workers)
    return [each + (i < extra) for i in range(workers)]


def worker_command(argv: list[str], workers: int, n_trials: Optional[int]) -> list[str]:
    """The command line of a joined worker: the caller's options and its own share."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _ALONE:
            skip = True
        elif arg == "--no-progress":
            continue  # added below, once
        elif not arg.startswith(tuple(f"{a}=" for a in _ALONE)):
            kept.append(arg)
    share = [] if n_trials is None else ["--n-trials", str(n_trials)]
    return [
        sys.executable,
        "-m",
        "src.tune",
        *kept,
        *share,
        "--join",
        str(workers),
        "--no-progress",
    ]


def _die_with_parent() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def start(argv: list[str], shares: list[Optional[int]]) -> list[subprocess.Popen]:
    """Workers 1.. of len(shares), each with its share (a share of 0 trials starts nothing)."""
    preexec = _die_with_parent if sys.platform.startswith("linux") else None
    return [
        subprocess.Popen(worker_command(argv, len(shares), share), preexec_fn=preexec)
        for i, share in enumerate(shares)
        if i > 0 and share != 0
    ]


def finish(procs: list[subprocess.Popen]) -> list[int]:
    """Wait for the joined workers; -> their exit codes."""
    return [p.wait() for p in procs]


def stop(procs: list[subprocess.Popen]) -> None:
    """Stop the joined workers (the caller failed or was interrupted)."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
