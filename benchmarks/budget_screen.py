"""Which configurations reach a validation-loss goal at a training budget? Candidate `-S`
overrides, each trained as the train stage trains them with several seeds, side by side.

    python -m benchmarks.budget_screen --candidates '[{}, {"train.max_steps": 5000}]' \\
        [--seeds 1234 1235] [--jobs 2] [--goal 1.25] [--out tune/budget_screen.json]

Each (candidate, seed) is one process of one thread: params.yaml with the candidate's overrides
and the seed (`train.seed`), `src.training.loop.train` on the real split (data/split, data/vocab.json:
`dvc repro split` first), then models/best.pt's equivalent scored in fp32 on the whole
validation split as the evaluate stage scores it (on the training device; cuDNN without TF32).
`--jobs` trainings run at once: on this project's 2-core CPU machine use 2; on a lent GPU
machine (16 cores, one GPU) a dozen share the GPU well, since a batch-32 step leaves it idle
most of the time. Seconds are those of the machine that ran it: a GPU screen ranks
configurations (the same steps, batches and seeds as on a CPU), the 600-s question is answered
by a CPU training.

Prints one line per training as it ends (the JSON is rewritten after each, so a run stopped at
a time limit keeps what finished) and a table per candidate: the score per seed, mean,
half-range, the worst seed against --goal, the final train loss (overfitting shows as a gap).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch
import yaml

from src.config.schema import config_from_dict, with_overrides
from src.data.vocab import Vocab
from src.model import checkpoint
from src.training import evaluate
from src.training.device import configure_process, resolve_device
from src.training.loop import train
from src.training.state import TrainPaths
from src.utils import fileio

ROOT = Path(__file__).resolve().parents[1]
# A smoke run of a benchmark: replaces train.max_steps of params.yaml in every training process.
MAX_STEPS_ENV = "KARNNA_BENCH_MAX_STEPS"


def read_params() -> dict:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["tracking"]["enabled"] = False
    if os.environ.get(MAX_STEPS_ENV):
        raw["train"]["max_steps"] = int(os.environ[MAX_STEPS_ENV])
    return raw


def load_avg() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def split_data() -> tuple[Vocab, Any, Any]:
    split = ROOT / "data" / "split"
    return (
        Vocab.load(ROOT / "data" / "vocab.json"),
        fileio.read_npy(split / "train.npy"),
        fileio.read_npy(split / "val.npy"),
    )


def train_one(job: tuple[str, dict, int]) -> dict:
    """One pipeline training (a process of its own, one thread) and its fp32 score on the whole split."""
    label, overrides, seed = job
    cfg = with_overrides(
        config_from_dict(read_params()),
        {**overrides, "train.seed": seed, "train.num_threads": 1, "train.resume": "never"},
        "benchmark",
    )
    device = resolve_device(cfg.train.device)
    configure_process(1, device)
    vocab, train_ids, val_ids = split_data()
    with tempfile.TemporaryDirectory() as tmp:
        paths = TrainPaths(Path(tmp) / "best.pt", Path(tmp) / "last.pt")
        result = train(cfg, vocab, train_ids, val_ids, paths, progress=False, log=lambda _: None)
        model, _, _ = checkpoint.load(paths.best, device)
        torch.backends.cudnn.allow_tf32 = False  # fp32 means fp32 on cuDNN too
        fp32 = evaluate.stream_loss(
            model,
            torch.from_numpy(val_ids.astype("int64")).to(device),
            cfg.evaluate.rows,
            cfg.evaluate.chunk_len,
            None,
        )
    return {
        "label": label,
        "seed": seed,
        "overrides": overrides,
        "eval_fp32": fp32,
        "best_val": result.best_val_loss,
        "best_step": result.best_step,
        "last_val": result.val_history[-1][1],
        "final_train_loss": result.final_train_loss,
        "seconds": result.seconds,
        "steps": result.steps,
        "n_params": result.n_params,
        "device": result.device,
        "precision": result.precision,
    }


def summary_table(runs: list[dict], labels: list[str], goal: float) -> str:
    lines = [
        "| candidate | eval fp32 val loss per seed | mean | +- half-range | worst <= goal | train loss | "
        "seconds per training |",
        "|---|---|---|---|---|---|---|",
    ]
    for label in labels:
        mine = sorted((r for r in runs if r["label"] == label), key=lambda r: r["seed"])
        if not mine:
            lines.append(f"| {label} | (none finished) | | | | | |")
            continue
        vals = [r["eval_fp32"] for r in mine]
        lines.append(
            f"| {label} | {', '.join(f'{v:.4f}' for v in vals)} | {statistics.mean(vals):.4f} | "
            f"{(max(vals) - min(vals)) / 2:.4f} | {'yes' if max(vals) <= goal else 'no'} | "
            f"{statistics.mean(r['final_train_loss'] for r in mine):.3f} | "
            f"{', '.join(str(round(r['seconds'])) for r in mine)} |"
        )
    return "\n".join(lines)


def run_screen(candidates: list[dict], seeds: list[int], jobs: int, out: Path, goal: float) -> list[dict]:
    labels = [json.dumps(c, sort_keys=True) for c in candidates]
    work = [(label, cand, seed) for label, cand in zip(labels, candidates) for seed in seeds]
    runs: list[dict] = []
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        for fut in as_completed([pool.submit(train_one, job) for job in work]):
            res = fut.result()
            res["load_after"], res["wall_since_start"] = load_avg(), time.perf_counter() - t0
            runs.append(res)
            print(json.dumps(res), flush=True)
            fileio.write_text(out, json.dumps({"goal": goal, "seeds": seeds, "runs": runs}, indent=1))
    print(f"\n{len(runs)} trainings in {time.perf_counter() - t0:.0f} s; load average {load_avg()}\n")
    print(summary_table(runs, labels, goal), flush=True)
    return runs


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.budget_screen", description=__doc__.splitlines()[0])
    p.add_argument("--candidates", required=True, help="a JSON list of -S override objects ({} = the defaults)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1234, 1235])
    p.add_argument("--jobs", type=int, default=2, help="trainings at once, one thread each (default: %(default)s)")
    p.add_argument("--goal", type=float, default=1.25, help="val loss every seed must reach (default: %(default)s)")
    p.add_argument("--out", type=Path, default=ROOT / "tune" / "budget_screen.json")
    p.add_argument("--max-steps", type=int, help="train.max_steps of params.yaml for every candidate (smoke runs)")
    args = p.parse_args()
    candidates = json.loads(args.candidates)
    if not isinstance(candidates, list) or not all(isinstance(c, dict) for c in candidates):
        p.error(f"--candidates must be a JSON list of objects, got {args.candidates!r}")
    if args.max_steps:
        os.environ[MAX_STEPS_ENV] = str(args.max_steps)  # the training processes read it too
    print(f"{len(candidates)} candidates x {len(args.seeds)} seeds, {args.jobs} at a time; load {load_avg()}")
    run_screen(candidates, args.seeds, args.jobs, args.out, args.goal)


if __name__ == "__main__":
    main()
