"""What each AWD-LSTM regulariser costs a training step: off against each one on, side by side.

    python -m benchmarks.regularisers [--steps 20] [--repeats 5] [--warmup 3] [--threads 0] [--precision auto] [--json PATH]

The step: src.training.loop.train_step (forward, backward, clipping, Adam) on params.yaml's model,
2 x 512 LSTM, 64-wide embedding, dropout 0.25, batches of 32 x 100 characters (random ids over
83 characters: the cost does not depend on the text). Variants: all off (params.yaml as
committed, the baseline), model.dropout_kind: locked, model.weight_drop, model.embed_dropout,
and all three. Each repeat runs --steps timed steps of every variant, in an order that rotates
from repeat to repeat, so load from other processes hits every variant alike; each variant first
runs --warmup untimed steps (oneDNN builds its kernels on first use). Reported: the median step
over all timed steps, and its ratio to the baseline's median from the same run. The process is
set up as the train stage's (benchmarks.common.training_process).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Optional

import torch

from benchmarks.common import (
    add_glibc_default,
    fmt_rate,
    machine,
    median,
    table,
    threads_arg,
    training_process,
    write_json,
)
from src.config.schema import ModelConfig, config_from_dict
from src.data import batches
from src.data.vocab import Vocab
from src.training.device import resolve_precision
from src.training.loop import train_step
from src.training.setup import build_model, generators

VOCAB_SIZE = 83
CPU = torch.device("cpu")


def variants(weight_drop: float, embed_dropout: float) -> dict[str, dict]:
    """model.* overrides of each variant, by the name the table shows."""
    return {
        "off": {},
        "locked": {"dropout_kind": "locked"},
        f"weight_drop {weight_drop:g}": {"weight_drop": weight_drop},
        f"embed_dropout {embed_dropout:g}": {"embed_dropout": embed_dropout},
        "all three": {"dropout_kind": "locked", "weight_drop": weight_drop, "embed_dropout": embed_dropout},
    }


class Trainer:
    """One variant's model, optimiser and batches, stepped as the training loop steps them."""

    def __init__(self, args: argparse.Namespace, model_overrides: dict):
        model = {"embedding_dim": args.embedding_dim, "lstm_size": args.lstm_size, "num_layers": args.num_layers}
        cfg = config_from_dict(
            {
                "model": {**model, **model_overrides},
                "train": {"batch_size": args.batch, "seq_len": args.seq_len, "precision": args.precision},
            }
        )
        init, drop = generators(cfg.train.seed, CPU)
        vocab = Vocab(tuple(chr(32 + i) for i in range(VOCAB_SIZE)), "lf")
        self.model = build_model(cfg, vocab, init).train()
        self.model.generator = drop
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.train.lr)
        self.amp = resolve_precision(cfg.train.precision, CPU, cfg.model.cell)
        ids = torch.randint(0, VOCAB_SIZE, (args.batch * args.seq_len * 50 + 1,), generator=init)
        self.grid, self.seq_len, self.batch = batches.batchify(ids, args.batch), args.seq_len, args.batch
        self.windows = self._forever()
        self.clip = cfg.train.grad_clip

    def _forever(self):
        while True:
            self.hidden = self.model.init_hidden(self.batch, CPU)
            yield from batches.windows(self.grid, self.seq_len)

    def step(self) -> float:
        """Seconds of one step, the loss fetched (as the loop does every log_interval steps)."""
        x, y = next(self.windows)
        t0 = time.perf_counter()
        loss, _, self.hidden = train_step(self.model, self.opt, None, x, y, self.hidden, self.amp, self.clip)
        loss.item()
        return time.perf_counter() - t0


def run(args: argparse.Namespace) -> dict[str, list[float]]:
    trainers = {name: Trainer(args, o) for name, o in variants(args.weight_drop, args.embed_dropout).items()}
    for t in trainers.values():
        for _ in range(args.warmup):
            t.step()
    steps: dict[str, list[float]] = {name: [] for name in trainers}
    order = list(trainers)
    for r in range(args.repeats):
        for name in order[r % len(order) :] + order[: r % len(order)]:
            steps[name].extend(trainers[name].step() for _ in range(args.steps))
        print(f"repeat {r + 1}/{args.repeats}: " + ", ".join(f"{n} {median(s) * 1e3:.1f} ms" for n, s in steps.items()))
    return steps


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.regularisers", description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=threads_arg, default="0", help="torch threads; 0: torch's default")
    p.add_argument("--steps", type=int, default=20, help="timed steps per variant and repeat (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=5, help="rounds over the variants (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per variant first (default: %(default)s)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    p.add_argument("--weight-drop", type=float, default=0.5, help="model.weight_drop when on (default: %(default)s)")
    p.add_argument("--embed-dropout", type=float, default=0.1, help="model.embed_dropout when on (%(default)s)")
    p.add_argument("--lstm-size", type=int, default=512)
    p.add_argument("--num-layers", type=int, default=2)
    p.add_argument("--embedding-dim", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=100)
    p.add_argument("--json", type=Path, default=None, help="also write every timed step here")
    add_glibc_default(p)
    args = p.parse_args(argv)
    _, setup = training_process(args.threads, args.glibc_default)
    print(machine(args.threads))
    print(setup)
    print(f"load before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    steps = run(args)
    base = median(steps["off"])
    chars = args.batch * args.seq_len
    rows = [
        [name, f"{median(s) * 1e3:.1f}", fmt_rate(chars / median(s)), f"{median(s) / base:.3f}"]
        for name, s in steps.items()
    ]
    print()
    print(table(["variant", "median step, ms", "chars/s", "ratio to off"], rows))
    print(
        f"\n{args.num_layers}x{args.lstm_size} LSTM, dropout {ModelConfig().dropout:g}, batch {args.batch} x {args.seq_len}, "
        f"precision {args.precision}; {args.repeats} x {args.steps} timed steps per variant after {args.warmup} "
        f"warm-up; load after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    write_json(args.json, {"args": {k: str(v) for k, v in vars(args).items()}, "steps_s": steps, "base_s": base})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
