"""Stage split: data/encoded.npy -> data/split/{train,val,test}.npy, contiguous, by character
fractions (never by batch shape), train first, validation next, test last.

The ids are copied in blocks (src/utils/fileio.py), so memory stays bounded whatever the corpus
size; a progress line appears when it takes more than a few seconds."""

import sys

from pipeline.common import ENCODED, SPLIT_DIR, load_config, stage
from src.data.splits import split_sizes
from src.utils import fileio, progress
from src.utils.errors import KarnnaError


@stage
def main() -> None:
    cfg = load_config().split
    if not ENCODED.is_file():
        raise KarnnaError(f"{ENCODED}: missing; run `dvc repro encode` first")
    ids = fileio.map_npy(ENCODED)
    n, itemsize = len(ids), ids.dtype.itemsize
    del ids
    sizes = split_sizes(n, cfg.val_fraction, cfg.test_fraction)
    start = 0
    with progress.bar(n * itemsize, "split") as bar:
        for name, size in zip(("train", "val", "test"), sizes):
            fileio.write_npy_range(SPLIT_DIR / f"{name}.npy", ENCODED, start, start + size, bar.update)
            start += size
    train, val, test = sizes
    print(f"split: train {train:,}  val {val:,}  test {test:,} characters")


if __name__ == "__main__":
    sys.exit(main())
