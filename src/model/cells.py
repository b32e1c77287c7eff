"""The recurrent cells a model can use (`model.cell`): one `Cell` entry each in CELLS.

Everything that differs between cells lives in its entry: the torch module and the arguments it
is built with (its own initialisation comes with it), the one-layer function the CPU dropout path
calls, the number of gate blocks in its weights, how many state tensors it carries (an LSTM two,
(h, c); the others one) and one step of one layer for the sampling stepper. Everything else reads
the entry: the params schema's choices for `model.cell`, the bf16 probe (src.training.device),
the tests, which run every cell. Adding a cell is one entry. Gate layouts are torch's: LSTM
(input, forget, cell, output), GRU (reset, update, new).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import nn

# A layer's state for one character: (h, c) for an LSTM, (h,) otherwise; each (N, H).
LayerState = tuple[torch.Tensor, ...]
# (x (N, in), a weight (out, in) prepared by the sampler) -> x @ w.T, a new (N, out) tensor
Times = Callable[[torch.Tensor, Any], torch.Tensor]
StepResult = tuple[torch.Tensor, LayerState]


def _lstm_step(xw: torch.Tensor, state: LayerState, w_hh: Any, b_hh: torch.Tensor, times: Times) -> StepResult:
    h, c = state
    gates = times(h, w_hh).add_(xw)  # xw holds both biases
    # One sigmoid over all four gates (the cell gate's share is wasted) and one tanh for the cell
    # gate: at one character a step, each op's fixed cost outweighs its arithmetic.
    i, f, _, o = gates.sigmoid().chunk(4, dim=1)
    g = gates[:, 2 * h.size(1) : 3 * h.size(1)].tanh()
    c = torch.addcmul(f * c, i, g)
    h = o * c.tanh()
    return h, (h, c)


def _gru_step(xw: torch.Tensor, state: LayerState, w_hh: Any, b_hh: torch.Tensor, times: Times) -> StepResult:
    (h,) = state
    size = h.size(1)
    gh = times(h, w_hh).add_(b_hh)  # the reset gate scales W_hn h + b_hn: b_hh stays apart
    r, z = (xw[:, : 2 * size] + gh[:, : 2 * size]).sigmoid().chunk(2, dim=1)
    n = torch.addcmul(xw[:, 2 * size :], r, gh[:, 2 * size :]).tanh()
    h = torch.addcmul(n, z, h - n)  # (1 - z) * n + z * h
    return h, (h,)


def _elman_step(activation: Callable[[torch.Tensor], torch.Tensor]) -> Callable[..., StepResult]:
    """The plain RNN's step, h = activation(W_hh h + W_ih x + b), with an in-place activation."""

    def step(xw: torch.Tensor, state: LayerState, w_hh: Any, b_hh: torch.Tensor, times: Times) -> StepResult:
        (h,) = state
        h = activation(times(h, w_hh).add_(xw))  # xw holds both biases
        return h, (h,)

    return step


@dataclass(frozen=True)
class Cell:
    name: str
    module: type[nn.RNNBase]  # nn.LSTM, nn.GRU, nn.RNN
    layer: Callable  # torch.lstm / torch.gru / torch.rnn_tanh: one layer over a sequence
    gates: int  # blocks of `lstm_size` rows in weight_ih / weight_hh
    states: int  # state tensors carried: 2 for (h, c), else 1
    # One character through one layer for the sampler: (input projection with its biases, the
    # layer's state, W_hh as the sampler prepared it, b_hh, the sampler's matrix product).
    step: Callable[[torch.Tensor, LayerState, Any, torch.Tensor, Times], StepResult]
    # Whether b_hh is added with the input projection (it may be folded into the embedding
    # table) or inside the step (the GRU's reset gate multiplies it).
    fold_hidden_bias: bool = True
    # Constructor arguments of `module` beyond the sizes, e.g. nn.RNN's nonlinearity.
    options: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def build(self, input_size: int, hidden_size: int, **kwargs: Any) -> nn.RNNBase:
        """The torch module of this cell, with the entry's own arguments."""
        return self.module(input_size, hidden_size, **self.options, **kwargs)

    def run_layer(self, x: torch.Tensor, state: LayerState, weights: list[torch.Tensor], train: bool):
        """One layer over x (T, N, in) from state ((1, N, H), ...); -> (output (T, N, H), new state)."""
        # torch.<cell>(input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first)
        if self.states == 2:
            out, h, c = self.layer(x, state, weights, True, 1, 0.0, train, False, False)
            return out, (h, c)
        out, h = self.layer(x, state[0], weights, True, 1, 0.0, train, False, False)
        return out, (h,)


CELLS: dict[str, Cell] = {
    "lstm": Cell("lstm", nn.LSTM, torch.lstm, gates=4, states=2, step=_lstm_step),
    "gru": Cell("gru", nn.GRU, torch.gru, gates=3, states=1, step=_gru_step, fold_hidden_bias=False),
    "rnn": Cell("rnn", nn.RNN, torch.rnn_tanh, gates=1, states=1, step=_elman_step(torch.Tensor.tanh_)),
    "rnn_relu": Cell(
        "rnn_relu",
        nn.RNN,
        torch.rnn_relu,
        gates=1,
        states=1,
        step=_elman_step(torch.Tensor.relu_),
        options={"nonlinearity": "relu"},
    ),
}


def cells_with_gates(gates: int) -> list[str]:
    """The cells whose weights hold `gates` blocks of rows: the shapes alone cannot tell them apart."""
    return [c.name for c in CELLS.values() if c.gates == gates]
