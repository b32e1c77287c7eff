"""The char-LSTM: embedding -> num_layers x LSTM(lstm_size) -> dropout -> linear to the vocabulary.

nn.LSTM builds each layer with its own weights (the seed reused one cell object for every layer,
so all its layers shared weights) and takes the fused cuDNN / oneDNN path.

Dropout on CPU is drawn here rather than by nn.LSTM / nn.Dropout: ATen's CPU `bernoulli_` falls
back on non-Intel CPUs to a serial per-element generator (~10 ns an element), which cost 13-20%
of a training step of the seed recipe (docs/BENCHMARKS.md, "Speed"). `dropout_mask` takes 16
random bits per element, four elements per 64-bit draw, and compares them in vectorised code:
about 4x faster forward and backward. CUDA keeps its fused dropout.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

Hidden = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the network; stored in every checkpoint as a plain dict."""

    vocab_size: int
    embedding_dim: int
    lstm_size: int
    num_layers: int
    dropout: float

    def to_dict(self) -> dict:
        return asdict(self)


class CharLSTM(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.embed = nn.Embedding(spec.vocab_size, spec.embedding_dim)
        self.lstm = nn.LSTM(
            spec.embedding_dim,
            spec.lstm_size,
            num_layers=spec.num_layers,
            # Time-major inside: oneDNN and cuDNN run (T, B, H) natively; batch-first made them, and
            # the head's reshape, copy every activation and its gradient once more.
            batch_first=False,
            # nn.LSTM applies this between layers only; the output gets its own dropout in forward.
            dropout=spec.dropout if spec.num_layers > 1 else 0.0,
        )
        self.head = nn.Linear(spec.lstm_size, spec.vocab_size)
        # The training's own generator for dropout masks (None: the default one). Not a parameter
        # or buffer: its state is saved with the resume state, not in the state_dict.
        self.generator: Optional[torch.Generator] = None

    def init_hidden(self, batch_size: int, device: Optional[torch.device] = None) -> Hidden:
        """Zero (h, c), each (num_layers, batch, lstm_size)."""
        device = device or self.head.weight.device
        shape = (self.spec.num_layers, batch_size, self.spec.lstm_size)
        return torch.zeros(shape, device=device), torch.zeros(shape, device=device)

    def forward(self, idx: torch.Tensor, hidden: Optional[Hidden] = None) -> tuple[torch.Tensor, Hidden]:
        """idx (B, T) int -> logits (B, T, vocab_size) (a non-contiguous view), hidden ((L, B, H), (L, B, H))."""
        if hidden is None:
            hidden = self.init_hidden(idx.size(0), idx.device)
        x = self.embed(idx.long().t())  # (T, B, E)
        p = self.spec.dropout if self.training else 0.0
        if p > 0.0 and x.device.type == "cpu":
            out, hidden = self._lstm_by_layer(x, hidden, p)
        else:
            # cuDNN's dropout between layers draws from the device's default generator: the
            # training's own generator covers the output dropout here, everything on CPU.
            out, hidden = self.lstm(x, hidden)  # (T, B, H)
            if self.generator is None or p == 0.0:
                out = F.dropout(out, p, self.training)
            else:
                out = dropout(out, p, self.generator)
        return self.head(out).transpose(0, 1), hidden  # (B, T, V), a view

    def _lstm_by_layer(self, x: torch.Tensor, hidden: Hidden, p: float) -> tuple[torch.Tensor, Hidden]:
        """nn.LSTM's computation, one layer per call, so that the dropout between layers is ours.

        ATen runs a multi-layer CPU LSTM one oneDNN layer at a time anyway, so nothing is lost.
        The weights stay nn.LSTM's own parameters (same state_dict, same cuDNN path on a GPU);
        tests/test_fast_paths.py checks that with p = 0 this gives nn.LSTM's output exactly.
        """
        h0, c0 = hidden
        hs, cs = [], []
        for n in range(self.spec.num_layers):
            weights = [getattr(self.lstm, f"{kind}_l{n}") for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            # torch.lstm(input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first)
            x, h, c = torch.lstm(x, (h0[n : n + 1], c0[n : n + 1]), weights, True, 1, 0.0, self.training, False, False)
            x = dropout(x, p, self.generator)  # between layers, and on the last layer's output as before
            hs.append(h)
            cs.append(c)
        return x, (torch.cat(hs), torch.cat(cs))


def dropout_mask(
    shape: torch.Size, p: float, dtype: torch.dtype, device: torch.device, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """Keep-mask scaled by 1 / (1 - p): each element kept with probability 1 - p, p rounded to 1/65536.

    Bits come from `generator` (the training's own, whose state a checkpoint saves), else the
    default generator.
    """
    n = math.prod(shape)
    cut = min(round(p * 65536), 65535)  # keep when a uniform 16-bit value >= cut
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), None, generator=generator)
    bits = words.view(torch.int16)[:n].view(shape)  # uniform on [-32768, 32767]
    keep = bits >= cut - 32768
    # via uint8: bool -> bfloat16 is a scalar loop on CPU, uint8 -> bfloat16 is vectorised (8x faster)
    return keep.view(torch.uint8).to(dtype).mul_(65536 / (65536 - cut))


def dropout(x: torch.Tensor, p: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Inverted dropout, as F.dropout in training; the mask is kept for backward as a multiply."""
    return x * dropout_mask(x.shape, p, x.dtype, x.device, generator) if p > 0.0 else x


def detach(hidden: Hidden) -> Hidden:
    """Cut the graph between batches (truncated BPTT) while keeping the state's values."""
    return hidden[0].detach(), hidden[1].detach()


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def sizing_advice(n_params: int, train_chars: int) -> str:
    """Karpathy's reading of parameters versus characters (char-rnn README, "Best models strategy")."""
    ratio = n_params / train_chars
    if ratio > 10.0:
        verdict = "an order of magnitude more parameters than characters: overfitting risk; raise dropout or shrink the model"
    elif ratio >= 0.1:
        verdict = "the same order of magnitude, as Karpathy advises; compare train and val loss to pick dropout"
    else:
        verdict = "an order of magnitude fewer parameters than characters: underfitting risk; a larger model should help"
    return f"{n_params:,} parameters for {train_chars:,} training characters ({ratio:.2f} per character): {verdict}"
