"""The seed notebook's recipe written plainly in PyTorch: the baseline the project is timed against.

Training as the seed did it: one-hot float inputs, 2 x 512 LSTM, dropout 0.5, batches of
100 sequences x 100 steps cut by its get_batches (targets included: the last one wraps around to
the row's first character, a bug the project fixed, kept here because it is the seed's work per
batch), a fresh one-hot tensor built in numpy for every batch, Adam (1e-3) with the gradient's
global norm clipped at 5, fp32, and the loss fetched at every step (its sess.run did).

Sampling as the seed did it: batch 1, one model call per character (the prime too), and top-k
by numpy: argsort the probabilities, zero all but the k largest, renormalise, np.random.choice.

Not a module to import in the project: it exists to be measured against.
"""

from __future__ import annotations

from typing import Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.common import time_each


class SeedLSTM(nn.Module):
    def __init__(self, vocab_size: int, lstm_size: int = 512, num_layers: int = 2, dropout: float = 0.5):
        super().__init__()
        self.vocab_size = vocab_size
        self.lstm = nn.LSTM(vocab_size, lstm_size, num_layers, dropout=dropout, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(lstm_size, vocab_size)

    def forward(self, x: torch.Tensor, hidden):
        out, hidden = self.lstm(x, hidden)
        return self.fc(self.drop(out)), hidden

    def zero_state(self, batch: int):
        shape = (self.lstm.num_layers, batch, self.lstm.hidden_size)
        return torch.zeros(shape), torch.zeros(shape)


def get_batches(arr: np.ndarray, n_seqs: int, n_steps: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The seed's batch generator, unchanged in substance."""
    per_batch = n_seqs * n_steps
    n_batches = len(arr) // per_batch
    arr = arr[: n_batches * per_batch].reshape((n_seqs, -1))
    for n in range(0, arr.shape[1], n_steps):
        x = arr[:, n : n + n_steps]
        y = np.zeros_like(x)
        y[:, :-1], y[:, -1] = x[:, 1:], x[:, 0]
        yield x, y


def one_hot(x: np.ndarray, vocab_size: int) -> torch.Tensor:
    return torch.from_numpy(np.eye(vocab_size, dtype=np.float32)[x])


class SeedTrainer:
    """The seed's training loop, one step at a time so a benchmark can time each step."""

    def __init__(
        self,
        ids: np.ndarray,
        vocab_size: int,
        lstm_size: int = 512,
        num_layers: int = 2,
        dropout: float = 0.5,
        batch_size: int = 100,
        seq_len: int = 100,
        lr: float = 1e-3,
        grad_clip: float = 5.0,
        seed: int = 1234,
        amp: Optional[torch.dtype] = None,
    ):
        """amp: an autocast dtype (bf16) for the forward pass, as plain PyTorch would add it; None: fp32."""
        torch.manual_seed(seed)
        self.amp = amp
        self.model = SeedLSTM(vocab_size, lstm_size, num_layers, dropout).train()
        self.opt = torch.optim.Adam(self.model.parameters(), lr=lr)
        self.grad_clip = grad_clip
        self.ids, self.batch_size, self.seq_len = ids, batch_size, seq_len
        self.batches = self._forever()
        self.state = self.model.zero_state(batch_size)

    def _forever(self):
        while True:
            self.state = self.model.zero_state(self.batch_size)
            yield from get_batches(self.ids, self.batch_size, self.seq_len)

    def step(self) -> float:
        x, y = next(self.batches)
        inputs = one_hot(x, self.model.vocab_size)
        targets = torch.from_numpy(y.astype(np.int64))
        state = tuple(s.detach() for s in self.state)
        with torch.autocast("cpu", dtype=self.amp or torch.bfloat16, enabled=self.amp is not None):
            logits, self.state = self.model(inputs, state)
        loss = F.cross_entropy(logits.float().reshape(-1, self.model.vocab_size), targets.reshape(-1))
        self.opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.opt.step()
        return loss.item()

    def timed_steps(self, n: int) -> list[float]:
        """Seconds of each of n steps (batch building included: it is part of the seed's step)."""
        return time_each(self.step, n)


def pick_top_n(preds: np.ndarray, vocab_size: int, rng: np.random.Generator, top_n: int = 5) -> int:
    p = np.squeeze(preds).copy()
    p[np.argsort(p)[:-top_n]] = 0
    p = p / np.sum(p)
    return int(rng.choice(vocab_size, p=p))


@torch.no_grad()
def seed_sample(
    model: SeedLSTM,
    char_to_id: dict[str, int],
    id_to_char: list[str],
    prime: str,
    length: int,
    top_n: int = 5,
    seed: int = 0,
) -> str:
    """The seed's sample(): the prime fed one character per call, then one call per new character."""
    model.eval()
    rng = np.random.default_rng(seed)
    v = model.vocab_size
    state = model.zero_state(1)
    x = np.zeros((1, 1), dtype=np.int64)
    out = list(prime)
    for ch in prime:
        x[0, 0] = char_to_id[ch]
        logits, state = model(one_hot(x, v), state)
        c = pick_top_n(torch.softmax(logits, -1).numpy(), v, rng, top_n)
    out.append(id_to_char[c])
    for _ in range(length - 1):
        x[0, 0] = c
        logits, state = model(one_hot(x, v), state)
        c = pick_top_n(torch.softmax(logits, -1).numpy(), v, rng, top_n)
        out.append(id_to_char[c])
    return "".join(out)
