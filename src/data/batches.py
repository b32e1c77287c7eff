"""Laying the training split out in batches of windows, the hidden state carried between them.

Training layout (the seed's, without its wrap-around bug). The train ids are cut into
``batch_size`` contiguous rows; the model reads them ``seq_len`` columns at a time, and the
hidden state of row r after window k is the initial state of row r in window k+1:

    stream:  a b c d e f g h i j k l m n o p q r s t u v w x       (24 ids, batch_size=3)
    rows:    a b c d e f g h        row_len = 24 // 3 = 8
             i j k l m n o p
             q r s t u v w x
    seq_len = 3:   window 0      window 1      window 2
    inputs:        a b c         d e f         g
    targets:       b c d         e f g         h        <- the next character, always

Targets are the inputs shifted by one inside the row, so the last position of a window is
predicted from the next window's first character, never from the row's first (the seed's
``y[:, -1] = x[:, 0]``). The last window of each row is shorter rather than padded.
"""

from __future__ import annotations

from typing import Iterator

import torch

from src.utils.errors import KarnnaError


def batchify(ids: torch.Tensor, rows: int) -> torch.Tensor:
    """(n,) -> (rows, n // rows): contiguous rows, the remainder dropped."""
    row_len = len(ids) // rows
    if row_len < 2:
        raise KarnnaError(
            f"{len(ids)} characters cannot fill {rows} rows of at least 2 characters; "
            "lower train.batch_size (or evaluate.rows) or use a longer text"
        )
    return ids[: rows * row_len].view(rows, row_len)


def windows(grid: torch.Tensor, seq_len: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive (inputs, targets) windows of a (rows, row_len) grid; views, not copies."""
    row_len = grid.size(1)
    for i in range(start * seq_len, row_len - 1, seq_len):
        n = min(seq_len, row_len - 1 - i)
        yield grid[:, i : i + n], grid[:, i + 1 : i + 1 + n]


def num_windows(row_len: int, seq_len: int) -> int:
    """The windows of a row, so the optimiser steps of one epoch (row_len: chars // rows)."""
    return (row_len - 1 + seq_len - 1) // seq_len
