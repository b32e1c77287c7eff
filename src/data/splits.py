"""The encoded stream cut into train | validation | test, contiguous, by character fractions: the
same characters land in the same split whatever the batch shape or the model."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from src.utils.errors import KarnnaError


@dataclass(frozen=True)
class Split:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def split_ids(ids: np.ndarray, val_fraction: float, test_fraction: float) -> Split:
    """Contiguous train | val | test by character fractions: never depends on the batch shape."""
    n_train, n_val, _ = split_sizes(len(ids), val_fraction, test_fraction)
    return Split(train=ids[:n_train], val=ids[n_train : n_train + n_val], test=ids[n_train + n_val :])


def split_sizes(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """(train, val, test) characters of a stream of n."""
    n_test = int(round(n * test_fraction))
    n_val = int(round(n * val_fraction))
    n_train = n - n_val - n_test
    if n_val < 2 or n_train < 2 or (test_fraction > 0 and n_test < 2):
        raise KarnnaError(
            f"the text has {n} characters: too short to split into train/val/test with "
            f"split.val_fraction={val_fraction:g}, split.test_fraction={test_fraction:g}; use a longer text"
        )
    return n_train, n_val, n_test
