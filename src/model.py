"""The char-LSTM: embedding -> num_layers x LSTM(lstm_size) -> dropout -> linear to the vocabulary.

nn.LSTM builds each layer with its own weights (the seed reused one cell object for every layer,
so all its layers shared weights) and takes the fused cuDNN / oneDNN path.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import torch
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
            batch_first=True,
            # nn.LSTM applies this between layers only; the output gets its own dropout below.
            dropout=spec.dropout if spec.num_layers > 1 else 0.0,
        )
        self.drop = nn.Dropout(spec.dropout)
        self.head = nn.Linear(spec.lstm_size, spec.vocab_size)

    def init_hidden(self, batch_size: int, device: Optional[torch.device] = None) -> Hidden:
        """Zero (h, c), each (num_layers, batch, lstm_size)."""
        device = device or self.head.weight.device
        shape = (self.spec.num_layers, batch_size, self.spec.lstm_size)
        return torch.zeros(shape, device=device), torch.zeros(shape, device=device)

    def forward(self, idx: torch.Tensor, hidden: Optional[Hidden] = None) -> tuple[torch.Tensor, Hidden]:
        """idx (B, T) int -> logits (B, T, vocab_size), hidden ((L, B, H), (L, B, H))."""
        if hidden is None:
            hidden = self.init_hidden(idx.size(0), idx.device)
        x = self.embed(idx.long())  # (B, T, E)
        out, hidden = self.lstm(x, hidden)  # (B, T, H)
        return self.head(self.drop(out)), hidden


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
