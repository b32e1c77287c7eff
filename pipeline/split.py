"""Stage split: data/encoded.npy -> data/split/{train,val,test}.npy, contiguous, by character
fractions (never by batch shape), train first, validation next, test last."""

import sys

from pipeline.common import ENCODED, SPLIT_DIR, load_config, stage
from src.data.splits import split_ids
from src.utils import fileio
from src.utils.errors import KarnnaError


@stage
def main() -> None:
    cfg = load_config().split
    if not ENCODED.is_file():
        raise KarnnaError(f"{ENCODED}: missing; run `dvc repro encode` first")
    parts = split_ids(fileio.read_npy(ENCODED), cfg.val_fraction, cfg.test_fraction)
    for name in ("train", "val", "test"):
        fileio.write_npy(SPLIT_DIR / f"{name}.npy", getattr(parts, name))
    print(f"split: train {len(parts.train):,}  val {len(parts.val):,}  test {len(parts.test):,} characters")


if __name__ == "__main__":
    sys.exit(main())
