"""One character at a time through a CharRNN (any cell), for generation, on whichever GEMV is fastest here.

nn.LSTM (nn.GRU, nn.RNN) on CPU goes through oneDNN, which reorders the weights into its own
layout on every call: for one character that costs far more than the arithmetic. The Stepper
instead does a few matrix-vector products on weights prepared once, and the cell's own step
(src.model.cells) on their results. Which library does those
products fastest depends on the CPU: on the AMD EPYC Zen 5 of docs/BENCHMARKS.md numpy's OpenBLAS
reads a 2048 x 512 fp32 matrix in 25-35 us against 57-59 us for torch's MKL path (9aa2a62), while
on an Intel Xeon with AMX batch-1 sampling on the OpenBLAS path reached 29% of its GEMV floor. So the path is
not assumed: `choose_path` times every candidate on the model's own step when the first Stepper
of a shape is built (about 70 ms for a 2 x 512 model, once per process) and keeps the fastest.

Candidates (GEMV_PATHS):
- "numpy": fp32, numpy's BLAS (OpenBLAS in the wheels) on its own threads (one per core);
- "numpy-1": the same on one BLAS thread: OpenBLAS's idle threads spin, and with other
  processes on the two cores the step collapsed from 0.2 ms to 24-47 ms;
- "torch": fp32, torch's CPU matmul (MKL in the CPU build);
- "bf16": weights rounded to bf16 once, products by torch/oneDNN (half the bytes to read; fast
  where the CPU has AMX). Its logits differ from fp32 by about 1e-3, so for a given seed the text
  is not the fp32 text, only the same distribution (tests/test_fast_paths.py checks that);
- "int8": weights as int8 with a bf16 scale per row (a quarter of the bytes), products by torch's
  weight-only int8 kernel on bf16 inputs; the same distribution too (tested likewise).
Every fp32 path draws the plain loop's text for a seed, so generate() with a seed measures those
only (FP32); without one it measures every path. "bf16" and "int8" displace the fp32 one-thread
paths when faster by a little, "numpy" (threads) when faster by a little than whatever was
chosen (pick, MARGIN_TIERS). Threads collapse under load, so generation watches a threaded path
and drops it for the process when it does (THREADED, demote).
"""

from __future__ import annotations

import contextlib
import functools
import statistics
import time
from typing import Callable, ContextManager, Optional

import numpy as np
import torch
from threadpoolctl import ThreadpoolController

from src.model.cells import LayerState, Times
from src.model.charrnn import CharRNN, State

LayerStates = list[LayerState]


def _numpy_times(x: torch.Tensor, w: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x.numpy() @ w.T)  # shares memory both ways, no copies


def _torch_times(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.linear(x, w)


def _bf16_times(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.linear(x.to(torch.bfloat16), w).float()


def _int8_prepare(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output row, on the bf16 scale the product multiplies by."""
    scales = (w.abs().amax(dim=1).clamp_min(1e-12) / 127).to(torch.bfloat16)
    return torch.round(w / scales.float()[:, None]).clamp_(-127, 127).to(torch.int8), scales


def _int8_times(x: torch.Tensor, w: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return torch._weight_int8pack_mm(x.to(torch.bfloat16), *w).float()


@functools.cache
def _int8_kernel_works() -> bool:
    """torch's weight-only int8 kernel is private: a build or CPU may lack it or refuse it. One
    small product against its fp32 value, once per process."""
    w = torch.linspace(-1, 1, 64 * 32).reshape(64, 32)
    x = torch.linspace(1, -1, 32).reshape(1, 32)
    try:
        got = _int8_times(x, _int8_prepare(w))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False
    return bool(torch.allclose(got, x @ w.T, atol=0.05))


def int8_fits(in_features: int) -> bool:
    """Whether torch's weight-only int8 kernel takes an input of this width: on torch 2.13's x86
    kernel a width that is not a multiple of 16 read past the row (garbage for 24, a crash for
    500), so the path is offered only for multiples of 32 (every lstm_size of the search space)."""
    return in_features % 32 == 0 and _int8_kernel_works()


# name -> (prepare an fp32 weight once, the product); prepared weights never copy back.
GEMV_PATHS: dict[str, tuple[Callable[[torch.Tensor], object], Times]] = {
    "numpy": (lambda w: w.numpy(), _numpy_times),
    "numpy-1": (lambda w: w.numpy(), _numpy_times),
    "torch": (lambda w: w, _torch_times),
    "bf16": (lambda w: w.to(torch.bfloat16), _bf16_times),
    "int8": (_int8_prepare, _int8_times),
}
EXACT_PATHS = ("numpy", "numpy-1", "torch")  # fp32: the plain path's arithmetic up to summation order
# (paths, margin), tier by tier: the fastest of a tier displaces the choice so far (the faster
# of numpy-1 and torch) only when faster by the tier's margin. bf16 and int8 by a little, so that
# a near tie keeps fp32's arithmetic (generate() offers them only without a seed: they change a
# seed's text). BLAS on several threads by as much over whatever was chosen, int8 included, so
# that a near tie keeps one thread; a collapse under load is THREADED's to catch.
MARGIN_TIERS: tuple[tuple[tuple[str, ...], float], ...] = ((("bf16", "int8"), 1.1), (("numpy",), 1.1))
NEEDS_MARGIN = tuple(p for tier, _ in MARGIN_TIERS for p in tier)
# Paths on BLAS's own threads: the fastest on a quiet machine, but slower than one thread, up to
# 100-200x (20-47 ms a step), while other processes keep the cores busy. So generation watches
# them (src.sample), CHECK_EVERY characters at a time, and where a stretch ran slower per
# character than SLOWER_THAN times the best one-thread path's measured step, demote() drops them
# for the rest of the process: a collapse costs one stretch, not the rest of the text, and a
# threaded path needs no extra margin to be taken. (Measuring again under load chooses worse:
# the measurement's own spinning BLAS threads slow the one-thread paths it times; docs/BENCHMARKS.md.)
THREADED = ("numpy",)
CHECK_EVERY = 64
SLOWER_THAN = 1.5


def paths_for(model: CharRNN) -> tuple[str, ...]:
    """The GEMV paths this model's shapes can take (int8 needs a width int8_fits)."""
    return tuple(p for p in GEMV_PATHS if p != "int8" or int8_fits(model.spec.lstm_size))


_BLAS: Optional[ThreadpoolController] = None


def blas_threads(path: str) -> ContextManager:
    """The BLAS thread setting a path runs under: one thread for "numpy-1", as it is otherwise."""
    global _BLAS
    if path != "numpy-1":
        return contextlib.nullcontext()
    _BLAS = _BLAS or ThreadpoolController()  # scans the loaded libraries once
    return _BLAS.limit(limits=1, user_api="blas")


# (weight shapes, torch threads) -> chosen path and the timings that chose it, per process.
_CHOSEN: dict[tuple, tuple[str, dict[str, float]]] = {}


# Stepper(model, FP32): the fastest of EXACT_PATHS, for text that must be the same on a rerun.
FP32 = "fp32"


class Stepper:
    """Advances a CharRNN by one character per call; a snapshot of its weights.

    The first layer's input is always one of vocab_size embeddings, so its input projection and
    biases become a (vocab, gates x H) table, looked up per step; the cell's step (src.model.cells)
    does the rest, gates in torch's order. No dropout, as in eval mode. `path` names a
    GEMV_PATHS entry; None measures them all (choose_path), FP32 ("fp32") the fp32 ones only.
    Calls run inside `with stepper.threads():` (the BLAS thread setting of the path). Build a
    new Stepper after the weights change.
    """

    def __init__(self, model: CharRNN, path: Optional[str] = None):
        self.exact = path == FP32
        self.path = choose_path(model, self.exact) if path in (None, FP32) else path
        # seconds a character beyond which a measured threaded path has collapsed (THREADED)
        self.limit = collapse_limit(model, self.exact) if path in (None, FP32) else None
        if self.path not in paths_for(model):
            raise ValueError(
                f"GEMV path {self.path!r} is not one for lstm_size {model.spec.lstm_size}: "
                f"use one of {', '.join(paths_for(model))}, {FP32!r} or None (measured)"
            )
        prepare, self.times = GEMV_PATHS[self.path]
        self.cell = model.cell
        self.layers = []
        for n in range(model.spec.num_layers):
            w_ih, w_hh, b_ih, b_hh = (w.detach() for w in model.layer_weights(n))
            # the input projection carries b_hh too where the cell adds it there (not the GRU's)
            bias_in = b_ih + b_hh if self.cell.fold_hidden_bias else b_ih
            self.layers.append((prepare(w_ih), prepare(w_hh), bias_in, b_hh))
        w_ih0 = model.layer_weights(0)[0].detach()
        self.table = torch.nn.functional.linear(model.embed.weight.detach(), w_ih0, self.layers[0][2])
        self.head = model.head

    def threads(self) -> ContextManager:
        return blas_threads(self.path)

    @staticmethod
    def states(hidden: State) -> LayerStates:
        """The model's state, each tensor (L, N, H) -> one state per layer, what __call__ carries."""
        return [tuple(s[n] for s in hidden) for n in range(hidden[0].size(0))]

    def __call__(self, idx: torch.Tensor, states: LayerStates) -> tuple[torch.Tensor, LayerStates]:
        """idx (N,) int -> logits (N, vocab_size) of the next character, and the new states."""
        new, x, times = [], idx, self.times
        for n, (state, (w_ih, w_hh, bias_in, b_hh)) in enumerate(zip(states, self.layers)):
            xw = self.table[x] if n == 0 else times(x, w_ih).add_(bias_in)
            x, state = self.cell.step(xw, state, w_hh, b_hh, times)
            new.append(state)
        return self.head(x), new


def time_paths(
    model: CharRNN, paths: Optional[tuple] = None, rounds: int = 5, steps: int = 8, warm: int = 2
) -> dict[str, float]:
    """Median seconds of one batch-1 step of `model` on each path (default: every path its shapes
    fit), the paths interleaved per round, each round's `steps` timed after `warm` untimed ones.

    The untimed steps matter: generation calls one path back to back, but here another path ran
    just before, and OpenBLAS's threads had gone to sleep meanwhile. Timed cold, "numpy" measured
    160-170 us a step against 121-128 us alone (AVX2-capped EPYC, docs/BENCHMARKS.md), and lost
    to the one-thread paths it beats by 1.4x in generation."""
    steppers = {p: Stepper(model, p) for p in paths or paths_for(model)}
    states = Stepper.states(model.init_hidden(1))
    idx = torch.zeros(1, dtype=torch.long)
    times: dict[str, list[float]] = {p: [] for p in steppers}
    with torch.inference_mode():
        for step in steppers.values():
            step(idx, states)  # warm-up: first calls build kernels
        for _ in range(rounds):
            for p, step in steppers.items():
                with step.threads():
                    for _ in range(warm):
                        step(idx, states)
                    start = time.perf_counter()
                    for _ in range(steps):
                        step(idx, states)
                    times[p].append((time.perf_counter() - start) / steps)
    return {p: statistics.median(t) for p, t in times.items()}


def pick(times: dict[str, float]) -> str:
    """The faster of the paths without a margin (numpy-1, torch), displaced by the fastest of each
    MARGIN_TIERS tier in turn where that is faster than the choice so far by the tier's margin."""
    choice = min((p for p in times if p not in NEEDS_MARGIN), key=times.get, default=None)
    for tier, margin in MARGIN_TIERS:
        fastest = min((p for p in tier if p in times), key=times.get, default=None)
        if fastest is not None and (choice is None or times[fastest] * margin < times[choice]):
            choice = fastest
    if choice is None:
        raise ValueError(f"no GEMV path was timed: {times}")
    return choice


def _key(model: CharRNN, exact: bool) -> tuple:
    shapes = tuple(tuple(p.shape) for p in model.rnn.parameters())
    return (model.spec.cell, shapes, torch.get_num_threads(), exact)


def choose_path(model: CharRNN, exact: bool = False) -> str:
    """The GEMV path for this model's shapes at the current torch thread count, measured once per
    process (demote may change it later); exact: among the fp32 paths only (EXACT_PATHS), whose
    text for a seed is the plain loop's whichever wins the timing."""
    key = _key(model, exact)
    if key not in _CHOSEN:
        times = time_paths(model, EXACT_PATHS if exact else None)
        _CHOSEN[key] = (pick(times), times)
    return _CHOSEN[key][0]


def _one_thread(times: dict[str, float]) -> str:
    return pick({p: t for p, t in times.items() if p not in THREADED})


def collapse_limit(model: CharRNN, exact: bool = False) -> Optional[float]:
    """Seconds per generated character above which choose_path's choice counts as collapsed:
    SLOWER_THAN x the best one-thread path's measured step; None where the choice is not THREADED."""
    path, times = _CHOSEN[_key(model, exact)]
    return SLOWER_THAN * times[_one_thread(times)] if path in THREADED else None


def demote(model: CharRNN, exact: bool = False) -> str:
    """Drop the threaded path choose_path chose for this model (it collapsed while generating) for
    the rest of the process: -> the best measured one-thread path, choose_path's answer from now on."""
    key = _key(model, exact)
    times = _CHOSEN[key][1]
    _CHOSEN[key] = (_one_thread(times), times)
    return _CHOSEN[key][0]


def chosen() -> dict[tuple, tuple[str, dict[str, float]]]:
    """What choose_path picked so far in this process, with its timings (for benchmarks and logs)."""
    return dict(_CHOSEN)
