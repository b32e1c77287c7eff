"""Stage encode: data/corpus.txt -> data/vocab.json (sorted characters + newline policy) and
data/encoded.npy (the ids, in the smallest unsigned integer type that holds them)."""

import sys
import time

from pipeline.common import CORPUS, ENCODED, ROOT, VOCAB, load_config, stage
from src.data import corpus
from src.data.vocab import build_vocab
from src.utils import fileio
from src.utils.errors import KarnnaError


@stage
def main() -> None:
    cfg = load_config().data
    if not CORPUS.is_file():
        raise KarnnaError(f"{CORPUS}: missing; run `dvc repro corpus` first")
    t0 = time.perf_counter()
    text = corpus.decode_utf8(CORPUS.read_bytes(), str(CORPUS.relative_to(ROOT)))
    text = corpus.normalise_newlines(text, cfg.newline)
    if cfg.max_chars is not None:
        text = text[: cfg.max_chars]
    vocab = build_vocab(text, cfg.newline)
    ids = vocab.encode(text)
    seconds = time.perf_counter() - t0
    fileio.write_npy(ENCODED, ids)
    vocab.save(VOCAB)
    print(f"encode: {len(ids):,} characters, {vocab.size} distinct, newline={cfg.newline}, {seconds:.2f} s")


if __name__ == "__main__":
    sys.exit(main())
