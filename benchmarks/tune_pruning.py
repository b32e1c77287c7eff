"""What pruning saves, and how far the search gets past the seed recipe, at a fixed per-trial budget.

    python -m benchmarks.tune_pruning [--trials 10] [--budget-chars 300000] [--pruner halving]

Runs the same study twice on the real split (data/split, from `dvc repro split`): once with the
pruner, once without, same sampler seed, same space, budget and ladder. Compute is counted in
training characters (exact) and seconds (noisy on a shared machine). Tracking is off.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import optuna
import torch
import yaml

from src.config.schema import TuneConfig, config_from_dict, section_from_dict
from src.data.vocab import Vocab
from src.training.device import configure_process, resolve_device
from src.tuning import runner, storage
from src.utils import fileio

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--budget-chars", type=int, default=300_000)
    p.add_argument("--rungs", type=int, default=3)
    p.add_argument("--pruner", default="halving", choices=["halving", "hyperband", "median"])
    args = p.parse_args()
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["tracking"]["enabled"] = False
    base = config_from_dict(raw)
    configure_process(base.train.num_threads, resolve_device(base.train.device))  # as src.tune's main does
    data = runner.StudyData(
        Vocab.load(ROOT / "data/vocab.json"),
        fileio.read_npy(ROOT / "data/split/train.npy"),
        fileio.read_npy(ROOT / "data/split/val.npy"),
    )
    results = {}
    for pruner in (args.pruner, "none"):
        space = section_from_dict(
            TuneConfig,
            {
                **raw["tune"],
                "study_name": f"bench-{pruner}",
                "pruner": pruner,
                "budget_chars": args.budget_chars,
                "rungs": args.rungs,
            },
            "tune",
        )
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            study = runner.run_study(
                base,
                space,
                data,
                storage.storage_for(None, Path(tmp) / "j.log"),
                n_trials=args.trials,
                progress=False,
                log=lambda _: None,
            )
            seconds = time.perf_counter() - t0
            trials = study.trials  # read while the journal file still exists
        complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        seed = next(t for t in trials if t.user_attrs.get("enqueued") == "seed_recipe")
        results[pruner] = {
            "seconds": seconds,
            "chars": sum(t.user_attrs.get("chars_trained", 0) for t in trials),
            "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in trials),
            "best": min(t.value for t in complete),
            "best_params": min(complete, key=lambda t: t.value).params,
            "seed": seed.value if seed.value is not None else float("nan"),
        }
        print(f"{pruner}: {results[pruner]}", flush=True)

    m, n = results[args.pruner], results["none"]
    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(f"{args.trials} trials, {args.budget_chars:,} training characters each, {args.rungs} rungs\n")
    print("| study | pruned trials | characters trained | seconds | best val loss | seed recipe (trial 0) |")
    print("|---|---|---|---|---|---|")
    for name, r in ((f"{args.pruner} pruner", m), ("no pruner", n)):
        print(f"| {name} | {r['pruned']} | {r['chars']:,} | {r['seconds']:.0f} | {r['best']:.4f} | {r['seed']:.4f} |")
    print(
        f"\ncompute saved by pruning: {1 - m['chars'] / n['chars']:.0%} of training characters, "
        f"{1 - m['seconds'] / n['seconds']:.0%} of wall time"
    )
    print(
        f"best found vs seed recipe ({args.pruner} study): {m['best']:.4f} vs {m['seed']:.4f} nats "
        f"({m['seed'] - m['best']:+.4f}); best params {m['best_params']}"
    )


if __name__ == "__main__":
    main()
