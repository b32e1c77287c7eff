"""Stage encode: data/corpus.txt -> data/vocab.json (sorted characters + newline policy) and
data/encoded.npy (the ids, in the smallest unsigned integer type that holds them).

The corpus is read in chunks, twice (src/data/streaming.py), so memory stays bounded whatever
its size; a progress line appears when it takes more than a few seconds."""

import sys
import time

from pipeline.common import CORPUS, ENCODED, ROOT, VOCAB, load_config, stage
from src.data import streaming
from src.utils import fileio
from src.utils.errors import KarnnaError


@stage
def main() -> None:
    cfg = load_config().data
    if not CORPUS.is_file():
        raise KarnnaError(f"{CORPUS}: missing; run `dvc repro corpus` first")
    t0 = time.perf_counter()
    source = str(CORPUS.relative_to(ROOT))
    with fileio.atomic_path(ENCODED) as tmp:
        vocab, n = streaming.encode_file(CORPUS, tmp, source, cfg.newline, cfg.max_chars)
    seconds = time.perf_counter() - t0
    vocab.save(VOCAB)
    print(f"encode: {n:,} characters, {vocab.size} distinct, newline={cfg.newline}, {seconds:.2f} s")


if __name__ == "__main__":
    sys.exit(main())
