"""What weight averaging (train.ema_decay) costs a training step: the step with it off and on.

    python -m benchmarks.averaging_cost [--cycles 5] [--steps 20] [--warmup 3] [--threads 0]
                                        [--lstm-size 512] [--batch 32] [--decay 0.999] [--json PATH]

Both variants are the train stage's step on params.yaml's model and batch (2 x 512 LSTM, batch
32 x 100, train.precision auto), built by src.training.setup.new_state from the same seed on the
novel: src.training.loop.train_step (forward, backward, clipping, Adam, the schedule) and, with
averaging on, src.training.averaging's update after it, as the loop calls it. The losses stay on
the device and are fetched every 25 steps, as in the loop. A cycle runs --warmup untimed and
--steps timed steps of each variant in turn (the order alternates from cycle to cycle), so load
from other processes hits both alike. Reported: the median step of each variant over all timed
steps, and the median over cycles of each cycle's on / off ratio.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional

import torch

from benchmarks.common import (
    add_glibc_default,
    machine,
    median,
    novel_split,
    table,
    threads_arg,
    time_each,
    training_process,
    write_json,
)
from src.config.schema import config_from_dict
from src.data import batches
from src.training import averaging
from src.training.device import resolve_device, resolve_precision
from src.training.loop import train_step
from src.training.setup import new_state

LOG_INTERVAL = 25


class Stepper:
    """One variant: the loop's step, with or without the average's update after it."""

    def __init__(self, cfg, vocab, train_ids, total_steps: int):
        t = cfg.train
        self.device = resolve_device(t.device)
        self.amp = resolve_precision(t.precision, self.device, cfg.model.cell)
        self.state = new_state(cfg, vocab, total_steps, {}, self.device, None)
        self.grid = batches.batchify(batches.Ids(train_ids, self.device), t.batch_size)
        self.seq_len, self.batch_size, self.clip = t.seq_len, t.batch_size, t.grad_clip
        self.windows = self._forever()
        self.pending: list[torch.Tensor] = []

    def _forever(self):
        while True:
            self.hidden = self.state.model.init_hidden(self.batch_size, self.device)
            yield from batches.windows(self.grid, self.seq_len)

    def step(self) -> None:
        s = self.state
        x, y = next(self.windows)
        loss, _, self.hidden = train_step(s.model, s.optimizer, s.schedule, x, y, self.hidden, self.amp, self.clip)
        s.step += 1
        averaging.update(s.average, s.model, s.step)
        self.pending.append(loss)
        if len(self.pending) == LOG_INTERVAL:
            torch.stack(self.pending).tolist()
            self.pending.clear()

    def sync(self) -> None:
        if self.pending:
            torch.stack(self.pending).tolist()
            self.pending.clear()


def measure(args, vocab, train_ids) -> dict[str, Any]:
    total = args.cycles * (args.steps + args.warmup) + 1
    base = {"model": {"lstm_size": args.lstm_size}, "train": {"batch_size": args.batch, "max_steps": total}}
    configs = {
        "off": config_from_dict(base),
        "on": config_from_dict({**base, "train": {**base["train"], "ema_decay": args.decay}}),
    }
    steppers = {name: Stepper(cfg, vocab, train_ids, total) for name, cfg in configs.items()}
    times: dict[str, list[float]] = {name: [] for name in steppers}
    ratios = []
    for cycle in range(args.cycles):
        order = list(steppers) if cycle % 2 == 0 else list(reversed(steppers))
        this = {}
        for name in order:
            s = steppers[name]
            time_each(s.step, args.warmup)
            s.sync()
            this[name] = time_each(s.step, args.steps)
            s.sync()
            times[name] += this[name]
        ratios.append(median(this["on"]) / median(this["off"]))
    on = steppers["on"].state.average
    assert on is not None and on.count > 0  # the "on" variant did update its average
    return {
        "off_s": median(times["off"]),
        "on_s": median(times["on"]),
        "ratio": median(ratios),
        "ratios": ratios,
        "precision": str(steppers["off"].amp),
    }


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.averaging_cost", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="timed steps of each variant per cycle")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps of each variant before each timing")
    parser.add_argument("--threads", type=threads_arg, default=0, help="torch threads; 0: one per core")
    parser.add_argument("--lstm-size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--decay", type=float, default=0.999)
    parser.add_argument("--json", type=Path, default=None)
    add_glibc_default(parser)
    args = parser.parse_args(argv)
    _, malloc = training_process(args.threads, args.glibc_default)
    vocab, train_ids, _ = novel_split()
    print(machine(args.threads))
    print(malloc)
    r = measure(args, vocab, train_ids)
    print(
        table(
            ["averaging", "median step", "on / off (median over cycles)"],
            [
                ["off", f"{r['off_s'] * 1000:.1f} ms", "1"],
                [f"on (decay {args.decay})", f"{r['on_s'] * 1000:.1f} ms", f"{r['ratio']:.3f}"],
            ],
        )
    )
    write_json(args.json, {"machine": machine(args.threads), "args": {**vars(args), "json": None}, **r})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
