"""Where a training step of the seed recipe spends its time, against the step's own roofline.

    python -m benchmarks.profile_step [--precision bf16] [--steps 3] [--threads 1] [--top 25]

torch.profiler over a few steps of benchmarks.train_speed's ProjectTrainer (the pieces of
src/training/loop.py's loop), after two warm-up steps. Prints the ops by self time, the time per
category (oneDNN LSTM forward and backward, the other GEMMs, dropout masks, dtype casts,
elementwise and reductions, optimiser, clipping) and, beside the measured step, the time its
GEMMs alone would take at the fastest rate measured for each shape (benchmarks.peak.step_gemms).
Self times are the main thread's: run it on one thread for figures that add up. The process is set up
as the train stage's (glibc keeps freed memory; --glibc-default leaves it off to see that cost).
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from typing import Optional

from torch.profiler import ProfilerActivity, profile

from benchmarks import peak
from benchmarks.common import add_glibc_default, machine, novel_split, table, threads_arg, training_process
from benchmarks.train_speed import BATCH, SEQ_LEN, ProjectTrainer, step_gemms

# First matching pattern wins; op names as torch.profiler reports them.
CATEGORIES = [
    ("oneDNN LSTM backward", ("mkldnn_rnn_layer_backward",)),
    ("oneDNN LSTM forward", ("mkldnn_rnn_layer", "aten::lstm")),
    ("other GEMMs (output layer, its gradients)", ("addmm", "aten::mm", "aten::bmm", "aten::linear")),
    ("dropout masks (random bits, compare, scale)", ("random_", "aten::ge", "aten::bitwise")),
    ("dtype casts and copies", ("aten::to", "_to_copy", "aten::copy_", "clone", "contiguous")),
    ("optimiser (Adam)", ("_foreach", "adam", "Optimizer")),
    ("gradient clipping (norms)", ("norm", "clip", "aten::stack")),
    ("loss (log-softmax, NLL)", ("log_softmax", "nll_loss", "cross_entropy")),
    ("embedding", ("embedding",)),
    (
        "elementwise (mul, add, zero, fill)",
        ("aten::mul", "aten::add", "aten::zero", "aten::fill", "aten::div", "aten::sum", "aten::cat", "aten::empty"),
    ),
]


def category(name: str) -> str:
    low = name.lower()
    return next((label for label, pats in CATEGORIES if any(p.lower() in low for p in pats)), "other")


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile_step", description=__doc__.splitlines()[0])
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--steps", type=int, default=3, help="profiled steps (default: %(default)s)")
    p.add_argument("--threads", type=threads_arg, default="1", help="torch threads (default: %(default)s)")
    p.add_argument("--top", type=int, default=25, help="ops listed (default: %(default)s)")
    add_glibc_default(p)
    args = p.parse_args(argv)
    _, setup = training_process(args.threads, args.glibc_default)
    print(machine(args.threads))
    print(setup)
    vocab, train_ids, _ = novel_split()
    trainer = ProjectTrainer(train_ids, vocab.size, args.precision)
    trainer.timed_steps(2)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        trainer.timed_steps(args.steps)
    events = prof.key_averages()
    self_us = {e.key: e.self_cpu_time_total / args.steps for e in events}
    total = sum(self_us.values())
    print(f"\n{args.precision}, {args.steps} steps profiled: {total / 1e3:.0f} ms per step (sum of self times)\n")
    top = sorted(self_us.items(), key=lambda kv: -kv[1])[: args.top]
    print(
        table(
            ["op", "ms per step", "share", "category"],
            [[k, f"{v / 1e3:.1f}", f"{v / total * 100:.1f}%", category(k)] for k, v in top],
        )
    )
    by_cat: dict[str, float] = defaultdict(float)
    for k, v in self_us.items():
        by_cat[category(k)] += v
    gemms = step_gemms(vocab.size)["project"]
    rates = peak.shape_rates([s for s, _ in gemms], args.precision, 0.1)
    roof = peak.roofline_seconds(gemms, rates)
    lstm = [(s, c) for s, c in gemms if s.what.startswith("layer")]
    forward = [(s, c) for s, c in lstm if s.what.endswith(("input projection", "recurrent step"))]
    backward = [g for g in lstm if g not in forward]
    print()
    print(
        table(
            ["category", "ms per step", "share of the step"],
            [
                [k, f"{v / 1e3:.1f}", f"{v / total * 100:.1f}%"]
                for k, v in sorted(by_cat.items(), key=lambda kv: -kv[1])
            ],
        )
    )
    print(
        f"\nroofline of the step: {roof * 1e3:.0f} ms ({BATCH * SEQ_LEN / roof / 1e3:.1f}k chars/s), of which the LSTM "
        f"layers' GEMMs {peak.roofline_seconds(lstm, rates) * 1e3:.0f} ms; measured step {total / 1e3:.0f} ms: "
        f"{roof / (total / 1e6) * 100:.0f}% of the roofline"
    )
    for label, part, cat in (
        ("forward", forward, "oneDNN LSTM forward"),
        ("backward", backward, "oneDNN LSTM backward"),
    ):
        t = peak.roofline_seconds(part, rates) * 1e6
        print(
            f"oneDNN LSTM {label}: {by_cat[cat] / 1e3:.0f} ms against {t / 1e3:.0f} ms for its GEMMs at their best "
            f"rates: {t / by_cat[cat] * 100:.0f}%, {(by_cat[cat] - t) / 1e3:.0f} ms lost"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
