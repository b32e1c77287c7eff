"""Generating text one character at a time from a prime string, with top-k and temperature.

Also a tool:  python -m src.sample --checkpoint models/best.pt --prime Far --length 500
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch

from src import checkpoint
from src.cells import LayerState
from src.config import SampleConfig
from src.errors import KarnnaError
from src.model import CharRNN, State, count_params
from src.vocab import Vocab

LayerStates = list[LayerState]


class MatVecStepper:
    """Advances a CharRNN by one character per call, for generation; a snapshot of its weights.

    The torch module on CPU goes through oneDNN, which reorders the weights into its own layout
    on every call: for one character that costs far more than the arithmetic. Here a step is a
    few matrix-vector products on weights prepared once, by numpy's BLAS (faster than torch's
    path for one character here: docs/BENCHMARKS.md, "Sampling"), and the cell's own step
    (src.cells). The first layer's input is always one of vocab_size embeddings, so its input
    projection and biases become a (vocab, gates x H) table, looked up per step. No dropout, as in
    eval mode. Build a new one after the weights change.
    """

    def __init__(self, model: CharRNN):
        self.cell = model.cell
        self.layers = []
        for n in range(model.spec.num_layers):
            w_ih, w_hh, b_ih, b_hh = (w.detach() for w in model.layer_weights(n))
            bias_in = b_ih + b_hh if self.cell.fold_hidden_bias else b_ih
            self.layers.append((w_ih.numpy(), w_hh.numpy(), bias_in, b_hh))
        w_ih0, bias_in0 = model.layer_weights(0)[0].detach(), self.layers[0][2]
        self.table = torch.nn.functional.linear(model.embed.weight.detach(), w_ih0, bias_in0)
        self.head = model.head

    @staticmethod
    def states(hidden: State) -> LayerStates:
        """The model's state, each tensor (L, N, H) -> one state per layer, what __call__ carries."""
        return [tuple(s[n] for s in hidden) for n in range(hidden[0].size(0))]

    def __call__(self, idx: torch.Tensor, states: LayerStates) -> tuple[torch.Tensor, LayerStates]:
        """idx (N,) int -> logits (N, vocab_size) of the next character, and the new states."""
        new, x = [], idx
        for n, (state, (w_ih, w_hh, bias_in, b_hh)) in enumerate(zip(states, self.layers)):
            xw = self.table[x] if n == 0 else _times_t(x, w_ih).add_(bias_in)
            x, state = self.cell.step(xw, state, w_hh, b_hh, _times_t)
            new.append(state)
        return self.head(x), new


def _times_t(x: torch.Tensor, w: np.ndarray) -> torch.Tensor:
    """x (N, in) @ w.T for w (out, in), by numpy's BLAS; shares memory both ways, no copies."""
    return torch.from_numpy(x.numpy() @ w.T)


class FusedStepper:
    """MatVecStepper's interface over the model itself: one fused torch RNN call per character."""

    def __init__(self, model: CharRNN):
        self.model = model

    @staticmethod
    def states(hidden: State) -> State:
        return hidden

    def __call__(self, idx: torch.Tensor, states: State) -> tuple[torch.Tensor, State]:
        logits, hidden = self.model(idx.view(-1, 1), states)
        return logits[:, -1], hidden


# oneDNN's repacking of the weights at every call is a fixed cost that a batch shares, and its
# GEMMs are faster than the MatVecStepper's: from about 64 samples at once the fused call wins on
# CPU, below it the MatVecStepper does (docs/BENCHMARKS.md, "Sampling"). On a GPU one cuDNN call
# beats the MatVecStepper's many small kernels.
STEPPER_BELOW = 64


@torch.inference_mode()
def generate(
    model: CharRNN,
    vocab: Vocab,
    prime: str,
    length: int,
    top_k: int = 5,
    temperature: float = 1.0,
    seed: Optional[int] = None,
    num_samples: int = 1,
) -> list[str]:
    """-> num_samples continuations of `prime`, each prime + `length` new characters.

    top_k=1 is greedy; top_k=0 samples from the whole distribution. The prime is read in one
    call; then one step per character for all samples at once (a batch of num_samples). The
    same seed gives the same text on the same kind of device (the draws come from a generator
    on the model's device: the CPU's for MPS).
    """
    if length < 1:
        raise KarnnaError(f"sample length is {length}; ask for at least 1 character")
    if not prime:
        raise KarnnaError("the prime is empty; give at least one character, e.g. --prime Far")
    if temperature <= 0:
        raise KarnnaError(f"temperature is {temperature}; use a positive number (1.0 leaves the distribution as is)")
    try:
        prime_ids = vocab.encode(prime)
    except KarnnaError as exc:
        raise KarnnaError(f"prime {prime!r}: {exc}") from None
    model.eval()
    device = model.head.weight.device
    k = top_k if 0 < top_k < vocab.size else 0
    with _threads_for(device, num_samples * count_params(model)):
        out = _draw(model, prime_ids, length, k, temperature, seed, num_samples)
    return [prime + vocab.decode(row.tolist()) for row in out]


# Below this many multiply-adds per step, a second torch thread costs more in hand-offs than it
# saves: on 2 cores, 1 and 4 samples of a 2x512 model ran no faster on two threads, and 10-100x
# slower while another process kept a core busy. Larger batches keep torch's setting. (The
# MatVecStepper's products run on numpy's OpenBLAS threads, OPENBLAS_NUM_THREADS, which did not
# collapse that way.)
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


def _draw(
    model: CharRNN, prime_ids, length: int, k: int, temperature: float, seed: Optional[int], num_samples: int
) -> torch.Tensor:
    """-> (num_samples, length) ids on the CPU."""
    device = model.head.weight.device
    # On the model's device (CUDA's or the CPU's), so that a draw never waits for a copy to the host.
    draw_on = device if device.type in ("cpu", "cuda") else torch.device("cpu")
    gen = torch.Generator(device=draw_on)
    if seed is not None:
        gen.manual_seed(seed)
    else:
        gen.seed()
    idx = torch.as_tensor(prime_ids, dtype=torch.long, device=device).unsqueeze(0).expand(num_samples, -1)
    logits, hidden = model(idx)
    last = logits[:, -1]  # (N, V)
    step = MatVecStepper(model) if device.type == "cpu" and num_samples < STEPPER_BELOW else FusedStepper(model)
    states = step.states(hidden)
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
        if i + 1 < length:
            last, states = step(nxt, states)
    return torch.stack(out, dim=1).cpu()


def main(argv: Optional[list[str]] = None) -> int:
    d = SampleConfig()
    p = argparse.ArgumentParser(prog="python -m src.sample", description="Generate text from a karnna checkpoint.")
    p.add_argument("--checkpoint", type=Path, default=Path("models/best.pt"), help="default: %(default)s")
    p.add_argument("--prime", default=d.prime, help="text to start from (default: %(default)r)")
    p.add_argument("--length", type=int, default=d.length, help="new characters to write (default: %(default)s)")
    p.add_argument("--top-k", type=int, default=d.top_k, help="sample among the k likeliest; 0: all (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=d.temperature, help="default: %(default)s")
    p.add_argument("--seed", type=int, default=None, help="fix the random draws (default: a fresh seed)")
    p.add_argument("--greedy", action="store_true", help="always take the likeliest character (top-k 1)")
    p.add_argument("--num-samples", type=int, default=1, help="independent samples, generated as one batch")
    p.add_argument("--device", default="cpu", help="cpu, cuda or mps (default: %(default)s)")
    args = p.parse_args(argv)
    try:
        if args.num_samples < 1:
            raise KarnnaError(f"--num-samples is {args.num_samples}; ask for at least 1")
        if args.top_k < 0:
            raise KarnnaError(f"--top-k is {args.top_k}; use 0 (no cut), 1 (greedy) or more")
        model, vocab, _ = checkpoint.load(args.checkpoint, args.device)
        texts = generate(
            model, vocab, args.prime, args.length,
            top_k=1 if args.greedy else args.top_k,
            temperature=args.temperature, seed=args.seed, num_samples=args.num_samples,
        )
    except KarnnaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n\n".join(texts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
