"""Do the reduced-precision sampling paths keep the trained model's distribution? Side by side.

    python -m benchmarks.sample_precision [--model models/best.pt] [--chars 3000]

The model of the train stage (`dvc repro train`, or `dvc pull train`) reads the first --chars
characters of the validation split (data/split/val.npy) one at a time through the sampling
Stepper on each GEMV path (src.generation.stepper.paths_for), teacher-forced: every path sees the same
text. For each reduced-precision path against fp32 ("torch"): the total variation between the
two next-character distributions (mean and max over the characters; 0.01 takes about 10,000
draws to notice) and the cross-entropy of the true next character (nats/char), which is the
number a user would see change if the path changed the model.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

import torch

from benchmarks.common import machine, table
from src.generation.stepper import EXACT_PATHS, Stepper, paths_for
from src.model import checkpoint
from src.utils import fileio

ROOT = Path(__file__).resolve().parents[1]


def walk(model, ids: torch.Tensor, path: str) -> tuple[torch.Tensor, float]:
    """-> (next-character probabilities (T-1, V), mean cross-entropy) along ids on one path."""
    step = Stepper(model, path)
    states, rows = step.states(model.init_hidden(1)), []
    with torch.inference_mode(), step.threads():
        logits, states = step(ids[:1], states)  # the distribution of ids[1]
        for t in range(1, ids.numel() - 1):
            rows.append(logits)
            logits, states = step(ids[t : t + 1], states)
        rows.append(logits)
    logp = torch.log_softmax(torch.cat(rows), -1)
    loss = torch.nn.functional.nll_loss(logp, ids[1:]).item()
    return logp.exp(), loss


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sample_precision", description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=ROOT / "models" / "best.pt")
    p.add_argument("--chars", type=int, default=3000, help="validation characters walked (default: %(default)s)")
    args = p.parse_args(argv)
    model, _, _ = checkpoint.load(args.model, torch.device("cpu"))
    model.eval()
    ids = torch.from_numpy(fileio.read_npy(ROOT / "data" / "split" / "val.npy")[: args.chars].astype("int64"))
    print(f"{machine()}; {args.model} ({model.spec.num_layers}x{model.spec.lstm_size} {model.spec.cell})")
    probs, losses = {}, {}
    for path in ("torch",) + tuple(q for q in paths_for(model) if q not in EXACT_PATHS):
        probs[path], losses[path] = walk(model, ids, path)
    rows = []
    for path in probs:
        tv = 0.5 * (probs[path] - probs["torch"]).abs().sum(-1)
        rows.append([path, f"{tv.mean():.5f}", f"{tv.max():.5f}", f"{losses[path]:.5f}"])
    print(f"\n{ids.numel() - 1:,} next characters of the validation split, teacher-forced:\n")
    print(table(["GEMV path", "TV vs fp32, mean", "TV vs fp32, max", "cross-entropy (nats/char)"], rows))


if __name__ == "__main__":
    main()
