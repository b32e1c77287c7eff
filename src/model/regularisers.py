"""The dropouts a training applies, each an inverted one (scaled by 1 / (1 - p)) drawn from
src.model.masks, so eval mode and the sampling paths use the raw weights and activations unscaled.

- `dropout`: a fresh mask per element (model.dropout_kind: standard).
- `locked_dropout`: one mask per sequence row, the same at every time step (model.dropout_kind:
  locked; "variational" dropout, Gal & Ghahramani 2016, as AWD-LSTM uses it, Merity et al. 2017).
- `weight_drop`: DropConnect on a hidden-to-hidden matrix (model.weight_drop): the masked copy
  goes to the fused layer call, the parameter itself is never changed and gets the gradient.
- `embed_dropout`: whole characters dropped from the embedding table (model.embed_dropout).
Each takes p = 0 as "off" and then draws nothing, so the generator's stream is unchanged.
"""

from __future__ import annotations

from typing import Optional

import torch

from src.model.masks import dropout_mask, locked_mask, row_mask

DROPOUT_KINDS = ("standard", "locked")


def dropout(x: torch.Tensor, p: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Inverted dropout, as F.dropout in training; the mask is kept for backward as a multiply."""
    return x * dropout_mask(x.shape, p, x.dtype, x.device, generator) if p > 0.0 else x


def locked_dropout(x: torch.Tensor, p: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Dropout of a time-major x (T, B, H) with one (1, B, H) mask broadcast over the T steps."""
    return x * locked_mask(x, p, generator) if p > 0.0 else x


def weight_drop(weight: torch.Tensor, p: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """A masked copy of `weight` (DropConnect): the parameter stays as it is and gets the gradient."""
    return weight * dropout_mask(weight.shape, p, weight.dtype, weight.device, generator) if p > 0.0 else weight


def embed_dropout(table: torch.Tensor, p: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """A copy of the (vocab, dim) embedding table with whole rows (characters) zeroed, the rest scaled."""
    return table * row_mask(table, p, generator) if p > 0.0 else table
