"""The char-RNN: embedding -> num_layers x recurrent cell (lstm_size) -> dropout -> linear to the vocabulary.

The cell is `model.cell` (an entry of src.model.cells.CELLS); `lstm_size` keeps its name, the
user's word for the width. torch's nn.LSTM / nn.GRU / nn.RNN build each layer with its own weights
(the seed reused one cell object for every layer, so all its layers shared weights) and take the
fused cuDNN / oneDNN path. The recurrent state is the model's own business: `State` is a tuple
the rest of the code creates with init_hidden, passes back, detaches and saves, never opens.

Dropout on CPU is drawn here rather than by the torch module / nn.Dropout: ATen's CPU
`bernoulli_` falls back on non-Intel CPUs to a serial per-element generator, a large share of
a training step (docs/BENCHMARKS.md, "Precision and the training step"). `dropout_mask` takes 16 random bits per element,
four elements per 64-bit draw, and compares them in vectorised code. CUDA keeps its fused dropout.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from src.model.cells import CELLS, cells_with_gates
from src.utils.errors import KarnnaError

# The network's recurrent state: (h, c) for an LSTM, (h,) for a GRU or RNN; each (num_layers, batch, lstm_size).
State = tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the network; stored in every checkpoint as a plain dict."""

    vocab_size: int
    embedding_dim: int
    lstm_size: int
    num_layers: int
    dropout: float
    cell: str = "lstm"  # a checkpoint spec without a cell is an LSTM's

    def to_dict(self) -> dict:
        return asdict(self)


class CharRNN(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        if spec.cell not in CELLS:
            raise KarnnaError(f"model.cell {spec.cell!r} is not one of {', '.join(CELLS)}")
        self.spec = spec
        self.cell = CELLS[spec.cell]
        self.embed = nn.Embedding(spec.vocab_size, spec.embedding_dim)
        self.rnn = self.cell.build(
            spec.embedding_dim,
            spec.lstm_size,
            num_layers=spec.num_layers,
            # Time-major inside: oneDNN and cuDNN run (T, B, H) natively; batch-first would have them, and
            # the head's reshape, copy every activation and its gradient once more.
            batch_first=False,
            # The torch module applies this between layers only; the output gets its own dropout in forward.
            dropout=spec.dropout if spec.num_layers > 1 else 0.0,
        )
        self.head = nn.Linear(spec.lstm_size, spec.vocab_size)
        # The training's own generator for dropout masks (None: the default one). Not a parameter
        # or buffer: its state is saved with the resume state, not in the state_dict.
        self.generator: Optional[torch.Generator] = None

    def init_hidden(self, batch_size: int, device: Optional[torch.device] = None) -> State:
        """The zero state for `batch_size` rows."""
        device = device or self.head.weight.device
        shape = (self.spec.num_layers, batch_size, self.spec.lstm_size)
        return tuple(torch.zeros(shape, device=device) for _ in range(self.cell.states))

    def forward(self, idx: torch.Tensor, hidden: Optional[State] = None) -> tuple[torch.Tensor, State]:
        """idx (B, T) int -> logits (B, T, vocab_size) (a non-contiguous view), the next state."""
        if hidden is None:
            hidden = self.init_hidden(idx.size(0), idx.device)
        x = self.embed(idx.long().t())  # (T, B, E)
        p = self.spec.dropout if self.training else 0.0
        if p > 0.0 and x.device.type == "cpu":
            out, hidden = self._by_layer(x, hidden, p)
        else:
            # cuDNN's dropout between layers draws from the device's default generator: the
            # training's own generator covers the output dropout here, everything on CPU.
            out, h = self.rnn(x, hidden if self.cell.states == 2 else hidden[0])  # (T, B, H)
            hidden = tuple(h) if self.cell.states == 2 else (h,)
            if self.generator is None or p == 0.0:
                out = F.dropout(out, p, self.training)
            else:
                out = dropout(out, p, self.generator)
        return self.head(out).transpose(0, 1), hidden  # (B, T, V), a view

    def layer_weights(self, n: int) -> list[torch.Tensor]:
        """Layer n's (weight_ih, weight_hh, bias_ih, bias_hh), the torch module's own parameters."""
        return [getattr(self.rnn, f"{kind}_l{n}") for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]

    def _by_layer(self, x: torch.Tensor, hidden: State, p: float) -> tuple[torch.Tensor, State]:
        """The torch module's computation, one layer per call, so that the dropout between layers is ours.

        ATen runs a multi-layer CPU RNN one oneDNN layer at a time anyway, so nothing is lost.
        The weights stay the module's own parameters (same state_dict, same cuDNN path on a GPU);
        tests/test_fast_paths.py checks that with p = 0 this gives the module's output exactly.
        """
        layers = []
        for n in range(self.spec.num_layers):
            state = tuple(s[n : n + 1] for s in hidden)
            x, state = self.cell.run_layer(x, state, self.layer_weights(n), self.training)
            x = dropout(x, p, self.generator)  # between layers, and on the last layer's output
            layers.append(state)
        return x, tuple(torch.cat(parts) for parts in zip(*layers))


def load_weights(model: CharRNN, state_dict: dict[str, torch.Tensor], where: str) -> None:
    """model.load_state_dict into the model of the cell its spec names (a checkpoint's own
    `model.cell`); weights that do not fit get an error, naming the cell they are from where the
    number of gate blocks tells it."""
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:
        raise KarnnaError(f"{where}: {_misfit(model, state_dict) or _does_not_fit(exc)}") from None


def _does_not_fit(exc: Exception) -> str:
    # torch's message is a header line ("Error(s) in loading state_dict ...") over one line per misfit
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
    return f"the weights do not fit the model ({lines[min(1, len(lines) - 1)][:160]}); check model.* against the checkpoint, or retrain"


def _misfit(model: CharRNN, state_dict: dict[str, torch.Tensor]) -> Optional[str]:
    """What the first layer's W_hh, (gates x H, H) whatever H, says about weights of another cell."""
    weight = state_dict.get("rnn.weight_hh_l0")
    if weight is None or weight.dim() != 2 or weight.size(1) == 0:
        return None
    gates = weight.size(0) // weight.size(1)
    names = cells_with_gates(gates)
    if gates == model.cell.gates or not names:
        return None
    return (
        f"holds the weights of a {' or '.join(n.upper() for n in names)} network (model.cell: {' or '.join(names)}), "
        f"but the model to load them into has model.cell: {model.spec.cell}; "
        f"set model.cell: {' or '.join(names)} or retrain"
    )


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
    # via uint8: bool -> bfloat16 is a scalar loop on CPU, uint8 -> bfloat16 is vectorised
    return keep.view(torch.uint8).to(dtype).mul_(65536 / (65536 - cut))


def dropout(x: torch.Tensor, p: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Inverted dropout, as F.dropout in training; the mask is kept for backward as a multiply."""
    return x * dropout_mask(x.shape, p, x.dtype, x.device, generator) if p > 0.0 else x


def detach(hidden: State) -> State:
    """Cut the graph between batches (truncated BPTT) while keeping the state's values."""
    return tuple(t.detach() for t in hidden)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def sizing_advice(n_params: int, train_chars: int) -> str:
    """Karpathy's reading of parameters versus characters (char-rnn README, "Best models strategy")."""
    ratio = n_params / train_chars
    if ratio > 10.0:
        verdict = (
            "an order of magnitude more parameters than characters: overfitting risk; raise dropout or shrink the model"
        )
    elif ratio >= 0.1:
        verdict = "the same order of magnitude, as Karpathy advises; compare train and val loss to pick dropout"
    else:
        verdict = (
            "an order of magnitude fewer parameters than characters: underfitting risk; a larger model should help"
        )
    return f"{n_params:,} parameters for {train_chars:,} training characters ({ratio:.2f} per character): {verdict}"
