"""Splitting the encoded stream and laying it out in batches.

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

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from src.errors import KarnnaError


@dataclass(frozen=True)
class Split:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def split_ids(ids: np.ndarray, val_fraction: float, test_fraction: float) -> Split:
    """Contiguous train | val | test by character fractions: never depends on the batch shape."""
    n = len(ids)
    n_test = int(round(n * test_fraction))
    n_val = int(round(n * val_fraction))
    n_train = n - n_val - n_test
    if n_val < 2 or n_train < 2 or (test_fraction > 0 and n_test < 2):
        raise KarnnaError(
            f"the text has {n} characters: too short to split into train/val/test with "
            f"split.val_fraction={val_fraction:g}, split.test_fraction={test_fraction:g}; use a longer text"
        )
    return Split(train=ids[:n_train], val=ids[n_train : n_train + n_val], test=ids[n_train + n_val :])


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
    return (row_len - 1 + seq_len - 1) // seq_len
