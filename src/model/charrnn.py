"""The char-RNN: embedding -> num_layers x recurrent cell (lstm_size) -> dropout -> linear to the vocabulary.

The cell is `model.cell` (an entry of src.model.cells.CELLS); `lstm_size` keeps its name, the
user's word for the width. torch's nn.LSTM / nn.GRU / nn.RNN build each layer with its own weights
(the seed reused one cell object for every layer, so all its layers shared weights) and take the
fused cuDNN / oneDNN path. The recurrent state is the model's own business: `State` is a tuple
the rest of the code creates with init_hidden, passes back, detaches and saves, never opens.

Dropout on CPU is drawn by src.model.masks rather than by the torch module / nn.Dropout (ATen's
CPU `bernoulli_` is slow on non-Intel CPUs); CUDA keeps its fused dropout unless a regulariser of
src.model.regularisers is on (model.dropout_kind: locked, model.weight_drop, model.embed_dropout):
then every device runs `_by_layer`, one fused layer call at a time, with masks from the
training's own generator. All of them act in training only: eval mode and the sampling paths
see the raw weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from src.model.cells import CELLS, cells_with_gates
from src.model.regularisers import DROPOUT_KINDS, dropout, embed_dropout, locked_dropout, weight_drop
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
    # Training-only regularisers; a checkpoint spec from before them has them off.
    dropout_kind: str = "standard"
    weight_drop: float = 0.0
    embed_dropout: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


class CharRNN(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        if spec.cell not in CELLS:
            raise KarnnaError(f"model.cell {spec.cell!r} is not one of {', '.join(CELLS)}")
        if spec.dropout_kind not in DROPOUT_KINDS:
            raise KarnnaError(f"model.dropout_kind {spec.dropout_kind!r} is not one of {', '.join(DROPOUT_KINDS)}")
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
        x = self._embed(idx.long().t())  # (T, B, E)
        p = self.spec.dropout if self.training else 0.0
        if (p > 0.0 and x.device.type == "cpu") or self._regularised():
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

    def _regularised(self) -> bool:
        """Whether a training-only regulariser beyond standard dropout acts on this call."""
        s = self.spec
        locked = s.dropout_kind == "locked" and s.dropout > 0.0
        return self.training and (locked or s.weight_drop > 0.0 or s.embed_dropout > 0.0)

    def _embed(self, idx: torch.Tensor) -> torch.Tensor:
        if not self.training or self.spec.embed_dropout == 0.0:
            return self.embed(idx)
        return F.embedding(idx, embed_dropout(self.embed.weight, self.spec.embed_dropout, self.generator))

    def layer_weights(self, n: int) -> list[torch.Tensor]:
        """Layer n's (weight_ih, weight_hh, bias_ih, bias_hh), the torch module's own parameters."""
        return [getattr(self.rnn, f"{kind}_l{n}") for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]

    def _by_layer(self, x: torch.Tensor, hidden: State, p: float) -> tuple[torch.Tensor, State]:
        """The torch module's computation, one layer per call, so that the dropout between layers is ours.

        ATen runs a multi-layer CPU RNN one oneDNN layer at a time anyway, so nothing is lost.
        The weights stay the module's own parameters (same state_dict, same cuDNN path on a GPU);
        tests/test_fast_paths.py checks that with p = 0 this gives the module's output exactly.
        model.weight_drop masks each layer's W_hh (a copy, drawn once per call) before the same call.
        """
        drop = locked_dropout if self.spec.dropout_kind == "locked" else dropout
        p_hh = self.spec.weight_drop if self.training else 0.0
        layers = []
        for n in range(self.spec.num_layers):
            state = tuple(s[n : n + 1] for s in hidden)
            w_ih, w_hh, b_ih, b_hh = self.layer_weights(n)
            weights = [w_ih, weight_drop(w_hh, p_hh, self.generator), b_ih, b_hh]
            x, state = self.cell.run_layer(x, state, weights, self.training)
            x = drop(x, p, self.generator)  # between layers, and on the last layer's output
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
