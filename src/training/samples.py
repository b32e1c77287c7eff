"""A short text at every validation, so that a run shows what its loss means for the text.

At each validation the model writes train.sample_chars characters after sample.prime, with
sample.top_k, sample.temperature and sample.seed. The draws come from a generator of their own
and the model's train / eval mode is put back, so the training's random streams, its losses and
its exact resume are those of a run without samples. The first line is printed under the
validation line; the reporter keeps each text as `samples/step_000500.txt` and all of them, in
order, as `samples/all.txt`.

The draws are src.generation.sampling's (top-k, temperature, the argmax of p / Exp(1) noise, a
generator on the model's device), the steps its fp32 ones (each cell's own step, src.model.cells):
for a seed, the text that `python -m src.sample --seed` writes from that checkpoint (a test holds
them equal). The train stage does not import the sampling code, so editing the served model never
retrains (tests/test_stage_deps.py).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from src.config.schema import Config
from src.data.vocab import Vocab
from src.model.charrnn import CharRNN
from src.training.report import Reporter
from src.training.state import TrainState

FOLDER = "samples"
ALL = f"{FOLDER}/all.txt"


def step_file(step: int) -> str:
    """The artifact of one validation's text, e.g. samples/step_000500.txt (sorted by name = by step)."""
    return f"{FOLDER}/step_{step:06d}.txt"


@torch.no_grad()
def draw(model: CharRNN, prime_ids, length: int, top_k: int, temperature: float, seed: int) -> list[int]:
    """`length` ids after the prime, drawn as src.generation.sampling draws them for a seed; the
    model's mode is restored and no process-wide generator is used."""
    was_training = model.training
    model.eval()
    try:
        device = model.head.weight.device
        draw_on = device if device.type in ("cpu", "cuda") else torch.device("cpu")
        gen = torch.Generator(device=draw_on).manual_seed(seed)
        k = top_k if 0 < top_k < model.spec.vocab_size else 0
        logits, hidden = model(torch.as_tensor(prime_ids, dtype=torch.long, device=device).unsqueeze(0))
        last, out = logits[:, -1].float(), []
        states = [tuple(s[n] for s in hidden) for n in range(model.spec.num_layers)]
        for i in range(length):
            if k == 1:
                nxt = last.argmax(dim=-1)
            else:
                scores = last if temperature == 1.0 else last / temperature
                vals, idx = scores.topk(k, dim=-1) if k else (scores, None)
                probs = torch.softmax(vals, dim=-1).to(draw_on)
                choice = (probs / torch.empty_like(probs).exponential_(generator=gen)).argmax(dim=-1, keepdim=True)
                choice = choice.to(device)
                nxt = (idx.gather(-1, choice) if k else choice).squeeze(-1)
            out.append(nxt)
            if i + 1 < length:
                last, states = _step(model, nxt, states)
        return torch.cat(out).tolist()
    finally:
        model.train(was_training)


def _step(model: CharRNN, idx: torch.Tensor, states: list) -> tuple[torch.Tensor, list]:
    """One character through the model by its cell's own step (src.model.cells), plain fp32
    products: an nn.LSTM call per character took 16x longer on CPU (oneDNN repacks the weights
    at every call; docs/BENCHMARKS.md). -> (logits (1, vocab), the layers' new states)."""
    cell, x, new = model.cell, model.embed(idx), []
    for n, state in enumerate(states):
        w_ih, w_hh, b_ih, b_hh = model.layer_weights(n)
        xw = F.linear(x, w_ih, b_ih + b_hh if cell.fold_hidden_bias else b_ih)
        x, state = cell.step(xw, state, w_hh, b_hh, F.linear)
        new.append(state)
    return model.head(x).float(), new


def all_text(samples: list[tuple[int, float, str]]) -> str:
    """What samples/all.txt holds: each validation's text under its step and loss, in order."""
    return "".join(f"--- step {step} (val {loss:.4f} nats) ---\n{text}\n\n" for step, loss, text in samples)


class ValidationSamples:
    """Called by the loop after each validation's line (a no-op with train.sample_chars 0). What
    was written so far is in the training state (state.samples, saved in last.pt), so a resumed
    run rewrites all.txt whole from it, and a step it validates again (after the checkpoint it
    resumed from) replaces that step's file in the store, never adds one."""

    def __init__(self, cfg: Config, vocab: Vocab, reporter: Reporter):
        self.chars, self.sample, self.reporter, self.vocab = cfg.train.sample_chars, cfg.sample, reporter, vocab
        # The train stage stops on a prime its corpus lacks before training; a training started
        # otherwise (a notebook, a test on another text) samples from a prime this vocabulary
        # has, as the registered model's example request does, rather than fail for its samples.
        self.prime = vocab.suggest_prime(prefer=cfg.sample.prime)
        self.prime_ids = vocab.encode(self.prime)

    def __call__(self, state: TrainState, say: Callable[[str], None]) -> None:
        if not self.chars:
            return
        s = self.sample
        ids = draw(state.model, self.prime_ids, self.chars, s.top_k, s.temperature, s.seed)
        text = self.prime + self.vocab.decode(ids)
        say(f"  sample: {(text.splitlines() or [''])[0]}")
        state.samples.append((state.step, state.last_val, text))
        self.reporter.log_text(text, step_file(state.step))
        self.reporter.log_text(all_text(state.samples), ALL)
