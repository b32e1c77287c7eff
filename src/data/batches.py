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

A split can stay where it is (`Ids`: a memory-mapped .npy in its own small integer type): it is
laid out in rows without a copy, and only the window read is copied, as int64, to the device, so
a corpus far larger than memory trains with what the OS pages in. The windows hold the same ids
as those of the split loaded whole as an int64 tensor, so the losses are the same.
"""

from __future__ import annotations

from typing import Iterator, Union

import numpy as np
import torch

from src.utils.errors import KarnnaError


class Grid:
    """A (rows, row_len) layout of ids that stay where they are; indexing copies the part asked
    for, as an int64 tensor on `device`."""

    def __init__(self, array: np.ndarray, device: torch.device):
        self.array, self.device = array, device

    def size(self, dim: int) -> int:
        return self.array.shape[dim]

    def __getitem__(self, key) -> torch.Tensor:
        window = torch.from_numpy(self.array[key].astype(np.int64))
        if self.device.type == "cuda":
            # From pinned memory the copy is queued behind the running step, not waited for.
            return window.pin_memory().to(self.device, non_blocking=True)
        return window.to(self.device)


class Ids:
    """A 1-D id array (a memory map, or any numpy array) read a window at a time on `device`."""

    def __init__(self, array: np.ndarray, device: Union[torch.device, str] = "cpu"):
        self.array, self.device = array, torch.device(device)

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, key: slice) -> "Ids":
        return Ids(self.array[key], self.device)

    def view(self, rows: int, row_len: int) -> Grid:
        return Grid(self.array.reshape(rows, row_len), self.device)


def batchify(ids: Union[torch.Tensor, Ids], rows: int) -> Union[torch.Tensor, Grid]:
    """(n,) -> (rows, n // rows): contiguous rows, the remainder dropped."""
    row_len = len(ids) // rows
    if row_len < 2:
        raise KarnnaError(
            f"{len(ids)} characters cannot fill {rows} rows of at least 2 characters; "
            "lower train.batch_size (or evaluate.rows) or use a longer text"
        )
    return ids[: rows * row_len].view(rows, row_len)


def windows(
    grid: Union[torch.Tensor, Grid], seq_len: int, start: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive (inputs, targets) windows of a (rows, row_len) grid; views of a tensor's,
    int64 copies of a Grid's."""
    row_len = grid.size(1)
    for i in range(start * seq_len, row_len - 1, seq_len):
        n = min(seq_len, row_len - 1 - i)
        yield grid[:, i : i + n], grid[:, i + 1 : i + 1 + n]


def num_windows(row_len: int, seq_len: int) -> int:
    """The windows of a row, so the optimiser steps of one epoch (row_len: chars // rows)."""
    return (row_len - 1 + seq_len - 1) // seq_len
