"""Generating text one character at a time from a prime string, with top-k and temperature.

The command over it is src/sample.py.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Iterator, Optional

import torch

from src.config.schema import SEED_EXPECT, SEED_MAX, TEMPERATURE_EXPECT, TEMPERATURES
from src.data.vocab import Vocab
from src.generation.stepper import CHECK_EVERY, FP32, Stepper, demote
from src.model.charrnn import CharRNN, State, count_params
from src.utils.errors import KarnnaError


class FusedStepper:
    """The Stepper's interface over the model itself: one fused torch RNN call per character (the
    torch module's own LSTM / GRU / RNN kernel), for batches and GPUs."""

    def __init__(self, model: CharRNN):
        self.model = model
        self.limit = None  # one fused call a character: no threaded path to watch

    @staticmethod
    def states(hidden: State) -> State:
        return hidden

    @staticmethod
    def threads() -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def __call__(self, idx: torch.Tensor, states: State) -> tuple[torch.Tensor, State]:
        logits, hidden = self.model(idx.view(-1, 1), states)
        return logits[:, -1], hidden


# oneDNN's repacking of the weights at every call is a fixed cost that a batch shares, and its
# GEMMs are faster than the Stepper's GEMVs: from about 64 samples at once the fused call wins on
# CPU, below it the Stepper does (docs/BENCHMARKS.md, "Sampling"). On a GPU one cuDNN call beats
# the Stepper's many small kernels.
STEPPER_BELOW = 64


def check_request(
    length: int, top_k: int, temperature: float, seed: Optional[int], num_samples: int = 1, option: bool = False
) -> None:
    """One line for a value generation cannot use, before anything runs; option: named as the
    command line's --options."""

    def name(key: str) -> str:
        return "--" + key.replace("_", "-") if option else key

    if length < 1:
        raise KarnnaError(f"{name('length')} is {length}; ask for at least 1 character, e.g. 500")
    if top_k < 0:
        raise KarnnaError(f"{name('top_k')} is {top_k}; use 0 (no cut), 1 (greedy) or more, e.g. 5")
    if not TEMPERATURES[0] <= temperature <= TEMPERATURES[1]:  # NaN included
        raise KarnnaError(f"{name('temperature')} is {temperature:g}; use {TEMPERATURE_EXPECT}")
    if seed is not None and not 0 <= seed <= SEED_MAX:
        raise KarnnaError(f"{name('seed')} is {seed}; use {SEED_EXPECT}")
    if num_samples < 1:
        raise KarnnaError(f"{name('num_samples')} is {num_samples}; ask for at least 1")


def generate(
    model: CharRNN,
    vocab: Vocab,
    prime: str,
    length: int,
    top_k: int = 5,
    temperature: float = 1.0,
    seed: Optional[int] = None,
    num_samples: int = 1,
    gemv: Optional[str] = None,
) -> list[str]:
    """-> num_samples continuations of `prime`, each prime + `length` new characters.

    top_k=1 is greedy; top_k=0 samples from the whole distribution. The prime is read in one
    call; then one step per character for all samples at once (a batch of num_samples). The
    same seed gives the same text on the same kind of device (the draws come from a generator
    on the model's device: the CPU's for MPS). `gemv` names the Stepper's matrix-vector path
    (src.generation.stepper.GEMV_PATHS, or "fp32": the fastest fp32 one); None measures which is fastest
    here, once per process: among the fp32 paths when a seed is given, as they all draw the
    plain loop's text for a seed, and among all of them without one (bf16 and int8 weights draw
    from the same distribution, not the same text).
    """
    pieces = list(stream(model, vocab, prime, length, top_k, temperature, seed, num_samples, gemv, piecewise=False))
    return ["".join(texts) for texts in zip(*pieces)]


def stream(
    model: CharRNN,
    vocab: Vocab,
    prime: str,
    length: int,
    top_k: int = 5,
    temperature: float = 1.0,
    seed: Optional[int] = None,
    num_samples: int = 1,
    gemv: Optional[str] = None,
    piecewise: bool = True,
) -> Iterator[list[str]]:
    """generate()'s text as it is drawn: the prime of each sample first, then each stretch of
    new characters (CHECK_EVERY at a time; with piecewise False, the rest in one piece unless a
    watched path runs in stretches anyway); joined, they are generate()'s texts. Bad input is
    refused here, before the first piece."""
    check_request(length, top_k, temperature, seed, num_samples)
    prime_ids = vocab.encode_prime(prime)
    k = top_k if 0 < top_k < vocab.size else 0
    return _pieces(model, vocab, prime, prime_ids, Draws(length, k, temperature, seed, num_samples, gemv, piecewise))


@dataclass(frozen=True)
class Draws:
    """A checked request: how many characters, for how many samples, drawn how."""

    length: int
    k: int  # top-k, 0 for the whole distribution
    temperature: float
    seed: Optional[int]
    num_samples: int
    gemv: Optional[str]  # the Stepper's path; None: the fastest measured here
    piecewise: bool  # CHECK_EVERY characters a piece, else one piece unless a path is watched


@torch.inference_mode()
def _pieces(model: CharRNN, vocab: Vocab, prime: str, prime_ids, draws: Draws) -> Iterator[list[str]]:
    yield [prime] * draws.num_samples
    model.eval()
    device = model.head.weight.device
    with _threads_for(device, draws.num_samples * count_params(model)):
        for ids in _stretches(model, prime_ids, draws):
            yield [vocab.decode(row.tolist()) for row in ids]


# Below this many multiply-adds per step, a second torch thread costs more in hand-offs than it
# saves: on 2 cores, 1 and 4 samples of a 2x512 model ran no faster on two threads, and 10-100x
# slower while another process kept a core busy. Larger batches keep torch's setting. (Where the
# Stepper's products go through numpy, its BLAS threads are the path's own choice: src/generation/stepper.py.)
ONE_THREAD_BELOW = 32_000_000


@contextlib.contextmanager
def _threads_for(device: torch.device, macs_per_step: int) -> Iterator[None]:
    before = torch.get_num_threads()
    if device.type != "cpu" or macs_per_step >= ONE_THREAD_BELOW or before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _draw_one(probs: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """(N, V) probabilities -> (N, 1) indices: torch.multinomial(probs, 1)'s own method and draws
    (the argmax of p / q, q ~ Exp(1)) without its input checks, which wait for the device."""
    return (probs / torch.empty_like(probs).exponential_(generator=gen)).argmax(dim=-1, keepdim=True)


def _stretches(model: CharRNN, prime_ids, draws: Draws) -> Iterator[torch.Tensor]:
    """-> (num_samples, n) ids on the CPU, CHECK_EVERY characters at a time (piecewise, or on a
    watched path), else all at once. How the draws are cut into stretches changes nothing else:
    each stretch steps past its last draw for the next."""
    device = model.head.weight.device
    # On the model's device (CUDA's or the CPU's), so that a draw never waits for a copy to the host.
    draw_on = device if device.type in ("cpu", "cuda") else torch.device("cpu")
    gen = torch.Generator(device=draw_on)
    if draws.seed is not None:
        gen.manual_seed(draws.seed)
    else:
        gen.seed()
    idx = torch.as_tensor(prime_ids, dtype=torch.long, device=device).unsqueeze(0).expand(draws.num_samples, -1)
    logits, hidden = model(idx)
    if device.type == "cpu" and draws.num_samples < STEPPER_BELOW:
        # a seed asks for its text: an fp32 path
        step = Stepper(model, draws.gemv or (FP32 if draws.seed is not None else None))
    else:
        step = FusedStepper(model)
    states, last = step.states(hidden), logits[:, -1]
    length = draws.length
    while length > 0:
        # a measured threaded path is watched stretch by stretch (src/generation/stepper.py)
        n = min(length, CHECK_EVERY) if draws.piecewise or step.limit is not None else length
        start = time.perf_counter()
        with step.threads():
            ids, last, states = _loop(step, states, last, n, draws.k, draws.temperature, gen, draw_on, n < length)
        seconds = time.perf_counter() - start  # before the yield: a slow reader is not a slow path
        yield ids
        length -= n
        if step.limit is not None and seconds / n > step.limit:
            step = Stepper(model, demote(model, step.exact))  # an fp32 one for a seed: the same text


def _loop(
    step,
    states,
    last: torch.Tensor,
    length: int,
    k: int,
    temperature: float,
    gen: torch.Generator,
    draw_on: torch.device,
    more: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, object]:
    """-> (N, length) ids on the CPU, the last logits and states: draw from `last`, step, repeat;
    more: also step past the last draw (another stretch follows)."""
    device = last.device
    out = []
    for i in range(length):
        if k == 1:
            nxt = last.argmax(dim=-1)
        else:
            scores = last if temperature == 1.0 else last / temperature
            if k:
                top_vals, top_idx = scores.topk(k, dim=-1)
                choice = _draw_one(torch.softmax(top_vals, dim=-1).to(draw_on), gen).to(device)
                nxt = top_idx.gather(-1, choice).squeeze(-1)
            else:
                nxt = _draw_one(torch.softmax(scores, dim=-1).to(draw_on), gen).squeeze(-1).to(device)
        out.append(nxt)
        if more or i + 1 < length:
            last, states = step(nxt, states)
    return torch.stack(out, dim=1).cpu(), last, states
