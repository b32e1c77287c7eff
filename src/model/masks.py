"""Dropout keep-masks, drawn from the training's own generator.

ATen's CPU `bernoulli_` falls back on non-Intel CPUs to a serial per-element generator, a large
share of a training step (docs/BENCHMARKS.md, "Precision and the training step"). `dropout_mask`
takes 16 random bits per element, four elements per 64-bit draw, and compares them in vectorised
code; the bits come from the generator whose state the resume checkpoint saves, so a resumed run
draws the masks an uninterrupted one draws. The other masks are dropout_mask of another shape, a
shape broadcast against the tensor it scales.
"""

from __future__ import annotations

import math
from typing import Optional

import torch


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


def locked_mask(x: torch.Tensor, p: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One mask per sequence row for a time-major x (T, B, H): shape (1, B, H), the same at every step."""
    return dropout_mask(torch.Size((1, *x.shape[1:])), p, x.dtype, x.device, generator)


def row_mask(table: torch.Tensor, p: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One draw per row of a (rows, columns) table: shape (rows, 1), each row kept or dropped whole."""
    return dropout_mask(torch.Size((table.size(0), 1)), p, table.dtype, table.device, generator)
