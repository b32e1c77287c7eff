"""Trials per hour on this machine: one worker on every core against one worker per core.

    python -m benchmarks.tune_workers [--trials 6] [--budget-chars 320000] [--rounds 2]

Every variant runs the same fixed workload through the real entry point (`python -m src.tune`,
tracking off, pruner off, a fixed 2x384 model, the defaults before 9ed5011, so that every trial costs the same) on a
fresh journal file, and the variants take turns (round-robin, the order rotated each round)
so that background load hits them alike:

- 1x2: one process, one trial at a time, 2 torch threads (`--n-jobs 1`, train.num_threads 2);
- 2x1 processes: two `python -m src.tune` processes on one journal, 1 thread each;
- 2x1 --n-jobs 2: one command that starts a second worker process on the same journal, 1 torch
  thread each (what `--n-jobs 2` does on a CPU since ab9ce27; before, it ran two trials in
  threads of one process, measured as "2x1 threads" in docs/BENCHMARKS.md).

Trials per hour count from the first trial's start to the last one's end (process start-up is
reported apart). Needs data/split (`dvc repro split`).
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import yaml

from src.tuning import storage

ROOT = Path(__file__).resolve().parents[1]

# name: [(--n-jobs, train.num_threads, trials)] per process
VARIANTS = {
    "1x2": [(1, 2, 1.0)],
    "2x1 processes": [(1, 1, 0.5), (1, 1, 0.5)],
    "2x1 --n-jobs 2": [(2, 0, 1.0)],
}


def params_file(folder: Path, budget: int, threads: int) -> Path:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["tracking"]["enabled"] = False
    raw["train"]["num_threads"] = threads
    raw["tune"].update(
        {
            "budget_chars": budget,
            "rungs": 2,
            "pruner": "none",
            "enqueue": [],
            "space": {
                "model.lstm_size": {"choices": [384]},
                "model.num_layers": {"choices": [2]},
                "model.dropout": {"low": 0.0, "high": 0.6},
            },
        }
    )
    path = folder / f"params-{threads}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run_variant(name: str, trials: int, budget: int, folder: Path, cap_s: float) -> dict:
    journal = folder / f"{name.replace(' ', '-')}-{time.time_ns()}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("OMP_NUM_THREADS", None)  # train.num_threads decides
    load = os.getloadavg()
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "src.tune",
                "--params",
                str(params_file(folder, budget, threads)),
                "--storage",
                str(journal),
                "--study-name",
                "w",
                "--n-jobs",
                str(jobs),
                "--n-trials",
                str(round(trials * share)),
                "--no-progress",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for jobs, threads, share in VARIANTS[name]
    ]
    capped, stopped = False, None
    for proc in procs:
        try:
            proc.communicate(timeout=max(1.0, cap_s - (time.perf_counter() - t0)))
        except subprocess.TimeoutExpired:  # stopped at the cap: count what finished inside it
            capped, stopped = True, stopped or datetime.datetime.now()
            proc.kill()
            proc.communicate()
    wall = time.perf_counter() - t0
    if not capped and any(p.returncode for p in procs):
        raise SystemExit(f"{name} failed")
    study = optuna.load_study(study_name="w", storage=storage.storage_for(str(journal), journal))
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    start = min(t.datetime_start for t in study.trials if t.datetime_start)
    # from the first trial's start to the last one's end, or to the cap
    end = stopped if capped else max(t.datetime_complete for t in done)
    span = (end - start).total_seconds()
    return {
        "trials": len(done),
        "span_s": span,
        "wall_s": wall,
        "per_hour": len(done) * 3600 / span,
        "chars_per_s": sum(t.user_attrs["chars_trained"] for t in done) / span,
        "load": load,
        "capped": capped,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--trials", type=int, default=6)
    p.add_argument("--budget-chars", type=int, default=320_000)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--cap-s", type=float, default=300.0, help="stop a variant after this long; count what finished")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = p.parse_args()
    results: dict[str, list[dict]] = {name: [] for name in args.variants}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = args.variants[r % len(args.variants) :] + args.variants[: r % len(args.variants)]
            for name in order:
                res = run_variant(name, args.trials, args.budget_chars, Path(tmp), args.cap_s)
                results[name].append(res)
                print(
                    f"round {r + 1} {name}: {res['trials']} trials in {res['span_s']:.0f} s "
                    f"({res['per_hour']:.0f}/h, {res['chars_per_s'] / 1000:.1f}k training chars/s), "
                    f"wall {res['wall_s']:.0f} s{' (capped)' if res['capped'] else ''}, load before {res['load'][0]:.2f}",
                    flush=True,
                )
    print(
        f"\n{args.trials} trials of {args.budget_chars:,} characters (2x384, whole-split final validation) "
        f"per run, {os.cpu_count()} cores\n"
    )
    print("| workers | trials/hour (median) | per run | training chars/s (median) | load avg (1 min) before each run |")
    print("|---|---|---|---|---|")
    ref = statistics.median(r["per_hour"] for r in results[args.variants[0]])
    for name, runs in results.items():
        med = statistics.median(r["per_hour"] for r in runs)
        per_run = ", ".join(f"{r['per_hour']:.0f}" for r in runs)
        loads = ", ".join(f"{r['load'][0]:.2f}" for r in runs)
        chars = statistics.median(r["chars_per_s"] for r in runs) / 1000
        print(f"| {name} | {med:.0f} ({med / ref:.2f}x) | {per_run} | {chars:.1f}k | {loads} |")


if __name__ == "__main__":
    main()
