"""This machine's matrix-multiply rate in fp32 and bf16, and the char-LSTM's FLOPs per character.

    python -m benchmarks.peak [--threads 0] [--seconds 0.5] [--lstm-size 512] [--batch 100] [--seq-len 100]

The limit the other benchmarks report utilisation against (as nanoGPT's MFU, but measured here
rather than taken from a datasheet). Each GEMM shape the LSTM runs is timed with two kernels:
torch.mm (MKL in the CPU build for fp32, oneDNN for bf16) and oneDNN's linear, the library under
nn.LSTM on CPU. They differ: on AMD CPUs MKL's fp32 GEMM takes a slower path than oneDNN's. The
peak of a precision is its fastest kernel on its fastest shape: the most this machine multiplies.
The process is set up as the train stage's (glibc keeps freed memory): with glibc's default
(--glibc-default) every product's output of 32 MiB or more is mapped afresh and faulted in, which
slows the shapes with large outputs (the input projection) and not the others.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Optional

import torch
import torch.utils.mkldnn

from benchmarks.common import add_glibc_default, fmt_rate, machine, median, table, threads_arg, training_process

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Shape:
    m: int
    k: int
    n: int
    what: str

    @property
    def flops(self) -> int:
        return 2 * self.m * self.k * self.n


def lstm_shapes(batch: int, seq_len: int, hidden: int) -> list[Shape]:
    """The GEMMs of one training step of a stacked LSTM (the upper layers' sizes)."""
    rows, gates = batch * seq_len, 4 * hidden
    return [
        Shape(rows, hidden, gates, "input projection, all steps at once"),
        Shape(batch, hidden, gates, "recurrent, one time step"),
        Shape(rows, gates, hidden, "input gradient, all steps"),
        Shape(gates, rows, hidden, "weight gradient, all steps"),
    ]


def step_gemms(
    batch: int, seq_len: int, input_dim: int, hidden: int, layers: int, vocab: int, input_grad: bool = True
) -> list[tuple[Shape, int]]:
    """Every GEMM of one training step of the char-LSTM, as (shape, times it runs).

    Per layer: the input projection of all steps at once and one recurrent product per time
    step; backward, the gradient to the layer's input (all steps), the recurrent gradient per
    time step, and the two weight gradients summed over all steps. Then the output layer's
    three. input_grad=False leaves out the first layer's input gradient (one-hot inputs need
    none). With it, the FLOPs add up to flops_per_char(...) per character.
    """
    rows, gates = batch * seq_len, 4 * hidden
    out: list[tuple[Shape, int]] = []
    for n in range(layers):
        d = input_dim if n == 0 else hidden
        out += [
            (Shape(rows, d, gates, f"layer {n}: input projection"), 1),
            (Shape(batch, hidden, gates, f"layer {n}: recurrent step"), seq_len),
        ]
        if n > 0 or input_grad:
            out.append((Shape(rows, gates, d, f"layer {n}: input gradient"), 1))
        out += [
            (Shape(batch, gates, hidden, f"layer {n}: recurrent gradient step"), seq_len),
            (Shape(gates, rows, d, f"layer {n}: input weight gradient"), 1),
            (Shape(gates, rows, hidden, f"layer {n}: recurrent weight gradient"), 1),
        ]
    out += [
        (Shape(rows, hidden, vocab, "output layer"), 1),
        (Shape(rows, vocab, hidden, "output input gradient"), 1),
        (Shape(vocab, rows, hidden, "output weight gradient"), 1),
    ]
    return out


def shape_rates(shapes: list[Shape], precision: str, seconds: float) -> dict[tuple[int, int, int], float]:
    """FLOP/s of each distinct (m, k, n), by the fastest kernel measured for it at the current threads."""
    distinct = {(s.m, s.k, s.n): Shape(s.m, s.k, s.n, f"{s.m}x{s.k}x{s.n}") for s in shapes}
    result = measure(list(distinct.values()), [precision], seconds * len(distinct))
    rates: dict[tuple[int, int, int], float] = {}
    for (_kernel, what), rate in result[precision]["rates"].items():
        key = tuple(int(d) for d in what.split("x"))
        rates[key] = max(rate, rates.get(key, 0.0))
    return rates


def roofline_seconds(gemms: list[tuple[Shape, int]], rates: dict[tuple[int, int, int], float]) -> float:
    """A step's time if it were nothing but its GEMMs, each at the fastest rate measured for its shape."""
    return sum(count * s.flops / rates[(s.m, s.k, s.n)] for s, count in gemms)


def flops_per_char(input_dim: int, hidden: int, layers: int, vocab: int, training: bool = True) -> int:
    """Multiply-adds x2 of the LSTM's gate GEMMs and the output layer, per character.

    input_dim is the first layer's input width: the embedding size (a lookup, no FLOPs) or the
    vocabulary size for one-hot inputs (a real matmul). Elementwise gate work (~40 FLOPs per
    unit) is left out. Training counts the backward pass as twice the forward (3x in all).
    """
    gates = 4 * hidden
    forward = 2 * gates * (input_dim + hidden)
    forward += (layers - 1) * 2 * gates * (hidden + hidden)
    forward += 2 * hidden * vocab
    return 3 * forward if training else forward


def _mm(shape: Shape, dtype: torch.dtype):
    a = torch.randn(shape.m, shape.k, dtype=dtype)
    b = torch.randn(shape.k, shape.n, dtype=dtype)
    return lambda: torch.mm(a, b)


def _onednn(shape: Shape, dtype: torch.dtype):
    linear = torch.utils.mkldnn.to_mkldnn(torch.nn.Linear(shape.k, shape.n, bias=False), dtype)
    x = torch.randn(shape.m, shape.k).to_mkldnn(dtype)
    return lambda: linear(x)


KERNELS = {"torch.mm": _mm, "oneDNN linear": _onednn}


def gemm_rate(fn, flops: int, seconds: float, bursts: int = 5) -> float:
    """FLOP/s: the median of `bursts` timed bursts that together last about `seconds`."""
    fn()
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-6)
    reps = max(1, int(seconds / bursts / once))
    rates = []
    for _ in range(bursts):
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        rates.append(flops * reps / (time.perf_counter() - start))
    return median(rates)


def measure(shapes: list[Shape], precisions: list[str], seconds: float) -> dict[str, dict]:
    """-> {precision: {"peak": FLOP/s, "rates": {(kernel, shape.what): FLOP/s}}} at the current threads."""
    out = {}
    with torch.no_grad():
        for name in precisions:
            rates = {}
            for kernel, make in KERNELS.items():
                for shape in shapes:
                    try:
                        fn = make(shape, DTYPES[name])
                    except RuntimeError:  # a build without oneDNN: that kernel is left out
                        continue
                    rates[(kernel, shape.what)] = gemm_rate(fn, shape.flops, seconds / len(shapes))
            out[name] = {"peak": max(rates.values()), "rates": rates}
    return out


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.peak", description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=threads_arg, default="0", help="torch threads; 0: torch's default")
    p.add_argument("--seconds", type=float, default=0.5, help="timing per kernel and precision (default: %(default)s)")
    p.add_argument("--lstm-size", type=int, default=512)
    p.add_argument("--embedding-dim", type=int, default=64)
    p.add_argument("--num-layers", type=int, default=2)
    p.add_argument("--vocab-size", type=int, default=83)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--seq-len", type=int, default=100)
    add_glibc_default(p)
    args = p.parse_args(argv)
    _, setup = training_process(args.threads, args.glibc_default)
    print(machine(args.threads))
    print(setup)
    shapes = lstm_shapes(args.batch, args.seq_len, args.lstm_size)
    result = measure(shapes, list(DTYPES), args.seconds)
    rows = []
    for shape in shapes:
        row = [f"{shape.m} x {shape.k} x {shape.n}", shape.what]
        for name in DTYPES:
            for kernel in KERNELS:
                rate = result[name]["rates"].get((kernel, shape.what))
                row.append("-" if rate is None else f"{rate / 1e9:.0f}")
        rows.append(row)
    headers = ["m x k x n", "GEMM"] + [f"{name} {kernel}, GFLOP/s" for name in DTYPES for kernel in KERNELS]
    print()
    print(table(headers, rows))
    fp32, bf16 = result["fp32"]["peak"], result["bf16"]["peak"]
    print(f"\npeak: fp32 {fmt_rate(fp32)}FLOP/s, bf16 {fmt_rate(bf16)}FLOP/s (bf16/fp32 {bf16 / fp32:.2f}x)")
    n_layers, h, v = args.num_layers, args.lstm_size, args.vocab_size
    print()
    print(
        table(
            ["model", "forward FLOPs/char", "training FLOPs/char", "fp32-peak chars/s", "bf16-peak chars/s"],
            [
                [
                    label,
                    f"{flops_per_char(d, h, n_layers, v, False) / 1e6:.2f}M",
                    f"{flops_per_char(d, h, n_layers, v) / 1e6:.2f}M",
                    fmt_rate(fp32 / flops_per_char(d, h, n_layers, v)),
                    fmt_rate(bf16 / flops_per_char(d, h, n_layers, v)),
                ]
                for label, d in (
                    (f"project: embedding {args.embedding_dim} -> {n_layers}x{h} LSTM -> {v}", args.embedding_dim),
                    (f"reference: one-hot {v} -> {n_layers}x{h} LSTM -> {v}", v),
                )
            ],
        )
    )
    print()
    print(roofline_table(args.batch, args.seq_len, args.embedding_dim, h, n_layers, v, args.seconds / 4))
    return 0


def roofline_table(
    batch: int, seq_len: int, embedding_dim: int, hidden: int, layers: int, vocab: int, seconds: float
) -> str:
    """Each model's training step at its own roofline, per precision (the shapes timed here and now)."""
    models = {
        "project": step_gemms(batch, seq_len, embedding_dim, hidden, layers, vocab),
        "reference": step_gemms(batch, seq_len, vocab, hidden, layers, vocab, input_grad=False),
    }
    rows = []
    for name in DTYPES:
        rates = shape_rates([s for g in models.values() for s, _ in g], name, seconds)
        for model, gemms in models.items():
            t = roofline_seconds(gemms, rates)
            flops = sum(c * s.flops for s, c in gemms)
            rows.append(
                [model, name, f"{t * 1e3:.0f} ms", fmt_rate(batch * seq_len / t), f"{fmt_rate(flops / t)}FLOP/s"]
            )
    return table(["training step", "precision", "roofline step time", "roofline chars/s", "roofline mean rate"], rows)


if __name__ == "__main__":
    raise SystemExit(main())
