"""What scoring intermediate validations on a prefix (tune.eval_chars) saves, against the whole split.

    python -m benchmarks.tune_eval_prefix [--repeats 3] [--steps 90]

A trial as src.tune runs it (params.yaml's model, the ladder of tune.rungs /
tune.reduction_factor over --steps steps, one torch thread), once with the intermediate
validations on the first tune.eval_chars characters and once on the whole split, alternating,
--repeats times each. The last validation is the whole split in both, so the trainings and their
final losses are identical; the difference in wall time is the saving. Alongside, the two
validations themselves are timed on the trained model (median of 3 each, alternating), which
gives the saving of a full-budget trial: (rungs - 1) x (whole - prefix) seconds.
Needs `dvc repro split`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import yaml

from src.config.schema import config_from_dict, tune_config_from_dict
from src.data.vocab import Vocab
from src.model import checkpoint
from src.training import evaluate
from src.training.device import configure_process, resolve_device, resolve_precision
from src.training.loop import train
from src.training.state import TrainPaths
from src.tuning import space as search
from src.utils import fileio

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=90)
    args = p.parse_args()
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["tracking"]["enabled"] = False
    base, space = config_from_dict(raw), tune_config_from_dict(raw)
    configure_process(1, resolve_device(base.train.device))
    vocab = Vocab.load(ROOT / "data/vocab.json")
    tr, va = fileio.read_npy(ROOT / "data/split/train.npy"), fileio.read_npy(ROOT / "data/split/val.npy")
    rungs = search.ladder(args.steps, space.rungs, space.reduction_factor)
    cfg = search.trial_config(base, {}, args.steps)
    print(
        f"load average at start: {os.getloadavg()}; ladder {list(rungs)}; eval_chars {space.eval_chars:,} "
        f"of {len(va):,}",
        flush=True,
    )
    walls: dict[str, list[float]] = {"prefix": [], "whole": []}
    finals = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = TrainPaths(Path(tmp) / "best.pt", Path(tmp) / "last.pt")
        for r in range(args.repeats):
            for name in ("prefix", "whole") if r % 2 == 0 else ("whole", "prefix"):
                t0 = time.perf_counter()
                result = train(
                    cfg,
                    vocab,
                    tr,
                    va,
                    paths,
                    progress=False,
                    log=lambda _: None,
                    eval_steps=rungs,
                    eval_chars=space.eval_chars if name == "prefix" else None,
                )
                walls[name].append(time.perf_counter() - t0)
                finals[name] = result.val_history[-1][1]
                print(
                    f"repeat {r + 1} {name}: {walls[name][-1]:.1f} s, final {finals[name]:.4f}, "
                    f"load {os.getloadavg()[0]:.2f}",
                    flush=True,
                )
        model, _, _ = checkpoint.load(paths.best, torch.device("cpu"))  # the last step's (whole split)
    ids = torch.from_numpy(va.astype("int64"))
    amp = resolve_precision(cfg.train.precision, torch.device("cpu"))
    evals: dict[str, list[float]] = {"prefix": [], "whole": []}
    for _ in range(3):
        for name, part in (("prefix", ids[: space.eval_chars]), ("whole", ids)):
            t0 = time.perf_counter()
            evaluate.stream_loss(model, part, cfg.evaluate.rows, cfg.evaluate.chunk_len, amp)
            evals[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in walls.items()}
    e = {k: statistics.median(v) for k, v in evals.items()}
    print(f"\nload average at the end: {os.getloadavg()}")
    print(f"| trial of {args.steps} steps, ladder {list(rungs)} | wall s per repeat | median |")
    print("|---|---|---|")
    for name in ("whole", "prefix"):
        runs = ", ".join(f"{w:.1f}" for w in walls[name])
        print(f"| intermediate validations on the {name} | {runs} | {med[name]:.1f} |")
    print(
        f"\nsaved: {med['whole'] - med['prefix']:.1f} s of {med['whole']:.1f} s "
        f"({1 - med['prefix'] / med['whole']:.0%}); final losses equal: {finals['prefix'] == finals['whole']}"
    )
    print(
        f"one validation: whole split {e['whole']:.2f} s, prefix {e['prefix']:.2f} s (medians of 3); "
        f"a full trial saves {(len(rungs) - 1) * (e['whole'] - e['prefix']):.1f} s"
    )


if __name__ == "__main__":
    main()
