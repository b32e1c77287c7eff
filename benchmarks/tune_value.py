"""Does tuning pay? A study with a fixed wall-clock budget, then its winner and the defaults each
trained at the pipeline's budget with two seeds, side by side.

    python -m benchmarks.tune_value [--minutes 25] [--seeds 1234 1235] [--journal tune/tune_value.log]
    python -m benchmarks.tune_value --tuned '{"model.lstm_size": 512, ...}' --seeds 1234   # trainings only

1. `src.tuning.runner.run_study` on the real split (data/split) with params.yaml's `tune` section as
   committed (the pipeline's budget, its ladder, successive halving, the seed recipe and the
   defaults enqueued first), the default workers (one per core), tracking off; no trial starts
   after --minutes (running ones finish).
2. The best complete trial's params and the defaults, each trained as the train stage trains
   them (`src.training.loop.train` with params.yaml plus the trial's `-S` overrides) with each seed, the
   two configurations of a seed side by side in two processes of one thread each, then scored
   in fp32 on the whole validation split as the evaluate stage scores models/best.pt.

Prints the study's counts and wall time, each training's figures, and mean +- half-range per
configuration, with the load average (os.getloadavg) at each phase. Needs `dvc repro split`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import optuna

from benchmarks.budget_screen import MAX_STEPS_ENV, load_avg, read_params, split_data, train_one
from src.config.schema import config_from_dict, tune_config_from_dict, with_overrides
from src.training.device import configure_process, resolve_device
from src.tuning import processes, results, runner, storage
from src.tuning import space as search
from src.utils import fileio

ROOT = Path(__file__).resolve().parents[1]


def study_data() -> runner.StudyData:
    return runner.StudyData(*split_data())


def run_search(minutes: float, journal: Path) -> optuna.Study:
    raw = read_params()
    base, space = config_from_dict(raw), tune_config_from_dict(raw)
    space = with_overrides(space, {"study_name": f"tune-value-{time.strftime('%Y%m%d-%H%M%S')}"}, "benchmark")
    device = resolve_device(base.train.device)
    n_jobs = processes.default_jobs(device.type)
    configure_process(processes.threads_per_trial(base.train.num_threads, n_jobs), device)
    print(
        f"study {space.study_name} in {journal}: {n_jobs} trials at a time, "
        f"{search.budget_chars(space, base):,} characters per full trial, {minutes:g} minutes",
        flush=True,
    )
    return runner.run_study(
        base,
        space,
        study_data(),
        storage.storage_for(str(journal), journal),
        timeout=minutes * 60,
        n_jobs=n_jobs,
        progress=False,
        log=lambda line: print(line, flush=True),
    )


def summary(study: optuna.Study, seconds: float) -> dict:
    states = [t.state for t in study.trials]
    finished = [s for s in states if s.is_finished()]
    best = study.best_trial
    enqueued = {
        t.user_attrs["enqueued"]: (t.state.name, t.value, dict(t.intermediate_values))
        for t in study.trials
        if t.user_attrs.get("enqueued")
    }
    return {
        "study": study.study_name,
        "seconds": seconds,
        "trials": len(finished),
        "complete": states.count(optuna.trial.TrialState.COMPLETE),
        "pruned": states.count(optuna.trial.TrialState.PRUNED),
        "failed": states.count(optuna.trial.TrialState.FAIL),
        "best_trial": best.number,
        "best_value": best.value,
        "best_overrides": best.user_attrs["pipeline_overrides"],
        "enqueued": enqueued,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--minutes", type=float, default=25.0)
    p.add_argument("--seeds", type=int, nargs="+", default=[1234, 1235])
    p.add_argument("--journal", type=Path, default=ROOT / "tune" / "tune_value.log")
    p.add_argument("--out", type=Path, default=ROOT / "tune" / "tune_value.json")
    p.add_argument(
        "--max-steps", type=int, help="train.max_steps for the study and the trainings (default: params.yaml's)"
    )
    p.add_argument(
        "--tuned", help="skip the study: train these -S values against the defaults, e.g. '{\"model.lstm_size\": 512}'"
    )
    args = p.parse_args()
    if args.max_steps:
        os.environ[MAX_STEPS_ENV] = str(args.max_steps)  # the training processes read it too
    print(f"load average at start: {load_avg()}", flush=True)
    t0 = time.perf_counter()
    if args.tuned:  # no study: train these overrides (a JSON object) against the defaults
        found = {"best_overrides": json.loads(args.tuned)}
    else:
        study = run_search(args.minutes, args.journal)
        found = summary(study, time.perf_counter() - t0)
        print(results.best_trials_table(study, top=15))
        print(json.dumps(found, indent=1, default=str), f"\nload average after the study: {load_avg()}", flush=True)

    configs = {"tuned": found["best_overrides"], "defaults": {}}
    base = config_from_dict(read_params())
    if with_overrides(base, configs["tuned"], "benchmark") == base:
        print("the best trial is the defaults: training them only", flush=True)
        configs.pop("tuned")
    runs = []
    with ProcessPoolExecutor(max_workers=len(configs), mp_context=get_context("spawn")) as pool:
        for seed in args.seeds:  # the configurations of one seed side by side, under the same load
            t1 = time.perf_counter()
            for res in pool.map(train_one, [(label, ov, seed) for label, ov in configs.items()]):
                res["load_after"] = load_avg()
                runs.append(res)
                print(json.dumps(res), flush=True)
            print(f"seed {seed}: {time.perf_counter() - t1:.0f} s wall", flush=True)
    print(f"\nload average at the end: {load_avg()}; whole benchmark {time.perf_counter() - t0:.0f} s\n")
    print("| configuration | eval fp32 val loss per seed | mean | +- half-range | train loss | seconds per training |")
    print("|---|---|---|---|---|---|")
    for label in configs:
        mine = [r for r in runs if r["label"] == label]
        vals = [r["eval_fp32"] for r in mine]
        per_seed = ", ".join(f"{v:.4f}" for v in vals)
        seconds = ", ".join(f"{r['seconds']:.0f}" for r in mine)
        train_loss = statistics.mean(r["final_train_loss"] for r in mine)
        print(
            f"| {label} {configs[label] or ''} | {per_seed} | {statistics.mean(vals):.4f} | "
            f"{(max(vals) - min(vals)) / 2:.4f} | {train_loss:.3f} | {seconds} |"
        )
    fileio.write_text(args.out, json.dumps({"study": found, "runs": runs}, indent=1, default=str))


if __name__ == "__main__":
    main()
