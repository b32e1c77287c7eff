"""One character at a time through a CharLSTM, for generation, on whichever GEMV is fastest here.

nn.LSTM on CPU goes through oneDNN, which reorders the weights into its own layout on every
call: for one character that costs milliseconds, over ten times the arithmetic. The Stepper
instead does a few matrix-vector products on weights prepared once. Which library does those
products fastest depends on the CPU: on the AMD EPYC of docs/BENCHMARKS.md numpy's OpenBLAS read
a 2048 x 512 fp32 matrix in 25 us against 54 us for torch's MKL path, while on an Intel Xeon
with AMX batch-1 sampling on the OpenBLAS path reached only 29% of its GEMV floor. So the path is
not assumed: `choose_path` times every candidate on the model's own step when the first Stepper
of a shape is built (about 40 ms for a 2 x 512 model, once per process) and keeps the fastest.

Candidates (GEMV_PATHS):
- "numpy": fp32, numpy's BLAS (OpenBLAS in the wheels) on its own threads (one per core);
- "numpy-1": the same on one BLAS thread: OpenBLAS's idle threads spin, and with other
  processes on the two cores the step collapsed from 0.2 ms to 24-47 ms;
- "torch": fp32, torch's CPU matmul (MKL in the CPU build);
- "bf16": weights rounded to bf16 once, products by torch/oneDNN (half the bytes to read; fast
  where the CPU has AMX). Its logits differ from fp32 by about 1e-3, so for a given seed the text
  is not the fp32 text, only the same distribution (tests/test_fast_paths.py checks that).
"bf16" and "numpy" are taken only when they beat every other path by MARGIN (pick): a gap timing
noise does not cross, so a seed's text stays stable from run to run, and a path that collapses
under load is not taken for a small gain measured in a quiet moment.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from typing import Callable, ContextManager, Optional

import numpy as np
import torch
from threadpoolctl import ThreadpoolController

from src.model import CharLSTM, Hidden

LayerStates = list[tuple[torch.Tensor, torch.Tensor]]
Times = Callable[[torch.Tensor, object], torch.Tensor]  # (x (N, in), prepared w) -> x @ w.T (N, out)


def _numpy_times(x: torch.Tensor, w: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x.numpy() @ w.T)  # shares memory both ways, no copies


def _torch_times(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.linear(x, w)


def _bf16_times(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.linear(x.to(torch.bfloat16), w).float()


# name -> (prepare an fp32 weight once, the product); prepared weights never copy back.
GEMV_PATHS: dict[str, tuple[Callable[[torch.Tensor], object], Times]] = {
    "numpy": (lambda w: w.numpy(), _numpy_times),
    "numpy-1": (lambda w: w.numpy(), _numpy_times),
    "torch": (lambda w: w, _torch_times),
    "bf16": (lambda w: w.to(torch.bfloat16), _bf16_times),
}
EXACT_PATHS = ("numpy", "numpy-1", "torch")  # fp32: the plain path's arithmetic up to summation order
# Taken only when faster than the best of the others by MARGIN: bf16 changes a seed's text, so
# noise must not flip it in and out; BLAS on several threads was 1.25x faster than on one on a
# quiet machine but 100-200x slower (20-47 ms a step) while other processes kept the cores busy.
NEEDS_MARGIN = ("bf16", "numpy")
MARGIN = 1.3

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


class Stepper:
    """Advances a CharLSTM by one character per call; a snapshot of its weights.

    The first layer's input is always one of vocab_size embeddings, so its input projection and
    both biases become a (vocab, 4H) table, looked up per step. Gates in nn.LSTM's order (input,
    forget, cell, output); no dropout, as in eval mode. `path` names a GEMV_PATHS entry; None
    measures them (choose_path). Calls run inside `with stepper.threads():` (the BLAS thread
    setting of the path). Build a new Stepper after the weights change.
    """

    def __init__(self, model: CharLSTM, path: Optional[str] = None):
        self.path = path or choose_path(model)
        prepare, self.times = GEMV_PATHS[self.path]
        lstm = model.lstm
        self.layers = []
        for n in range(model.spec.num_layers):
            w_ih, w_hh, b_ih, b_hh = (
                getattr(lstm, f"{kind}_l{n}").detach() for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
            )
            self.layers.append((prepare(w_ih), prepare(w_hh), b_ih + b_hh))
        self.table = torch.nn.functional.linear(model.embed.weight.detach(), lstm.weight_ih_l0.detach(), self.layers[0][2])
        self.head = model.head

    def threads(self) -> ContextManager:
        return blas_threads(self.path)

    @staticmethod
    def states(hidden: Hidden) -> LayerStates:
        """nn.LSTM's (h, c), each (L, N, H) -> [(h, c)] per layer, what __call__ carries."""
        return list(zip(hidden[0].unbind(0), hidden[1].unbind(0)))

    def __call__(self, idx: torch.Tensor, states: LayerStates) -> tuple[torch.Tensor, LayerStates]:
        """idx (N,) int -> logits (N, vocab_size) of the next character, and the new states."""
        new, x, times = [], idx, self.times
        for n, ((h, c), (w_ih, w_hh, bias)) in enumerate(zip(states, self.layers)):
            inputs = self.table[x] if n == 0 else times(x, w_ih).add_(bias)
            gates = times(h, w_hh).add_(inputs)
            # One sigmoid over all four gates (the cell gate's share is wasted) and one tanh for the
            # cell gate: at one character a step, each op's fixed cost outweighs its arithmetic.
            i, f, _, o = gates.sigmoid().chunk(4, dim=1)
            g = gates[:, 2 * h.size(1) : 3 * h.size(1)].tanh()
            c = torch.addcmul(f * c, i, g)
            x = o * c.tanh()
            new.append((x, c))
        return self.head(x), new


def time_paths(model: CharLSTM, paths=tuple(GEMV_PATHS), rounds: int = 5, steps: int = 8) -> dict[str, float]:
    """Median seconds of one batch-1 step of `model` on each path, the paths interleaved per round."""
    steppers = {p: Stepper(model, p) for p in paths}
    states = Stepper.states(model.init_hidden(1))
    idx = torch.zeros(1, dtype=torch.long)
    times: dict[str, list[float]] = {p: [] for p in paths}
    with torch.inference_mode():
        for step in steppers.values():
            step(idx, states)  # warm-up: first calls build kernels
        for _ in range(rounds):
            for p, step in steppers.items():
                with step.threads():
                    start = time.perf_counter()
                    for _ in range(steps):
                        step(idx, states)
                    times[p].append((time.perf_counter() - start) / steps)
    return {p: statistics.median(t) for p, t in times.items()}


def pick(times: dict[str, float]) -> str:
    """The fastest path; one of NEEDS_MARGIN only where it beats every other path by MARGIN."""
    safe = [p for p in times if p not in NEEDS_MARGIN]
    best = min(safe, key=times.get) if safe else min(times, key=times.get)
    fastest = min(times, key=times.get)
    return fastest if times[fastest] * MARGIN < times[best] else best


def choose_path(model: CharLSTM) -> str:
    """The GEMV path for this model's shapes at the current torch thread count, measured once per process."""
    key = (tuple(tuple(p.shape) for p in model.lstm.parameters()), torch.get_num_threads())
    if key not in _CHOSEN:
        times = time_paths(model)
        _CHOSEN[key] = (pick(times), times)
    return _CHOSEN[key][0]


def chosen() -> dict[tuple, tuple[str, dict[str, float]]]:
    """What choose_path picked so far in this process, with its timings (for benchmarks and logs)."""
    return dict(_CHOSEN)
