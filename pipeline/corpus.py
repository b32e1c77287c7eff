"""Stage corpus: find the text (data.path, ../shared/data/anna.txt, or a Gutenberg download) and
keep a copy in data/corpus.txt (the book alone, with data.licence: strip), so the later stages
read a file DVC tracks."""

import sys

from pipeline.common import CORPUS, ROOT, load_config, stage
from src.data import chunks, corpus
from src.utils import fileio


@stage
def main() -> None:
    cfg = load_config().data
    found = corpus.locate(cfg.path, ROOT)
    if found is None:
        print(f"corpus: no local copy; downloading {cfg.url}")
        raw = corpus.fetch(cfg.url, strip=cfg.licence == "strip")
        source = cfg.url
        corpus.check_sha256(raw, cfg.sha256, source)
        fileio.write_bytes(CORPUS, raw)
        size, digest = len(raw), corpus.sha256(raw)
    else:
        # Copied in chunks, checked on the way: a local corpus of any size in bounded memory.
        source = str(found)
        span = corpus.book_span(found) if cfg.licence == "strip" else None
        if span is not None:
            dropped = found.stat().st_size - (span[1] - span[0])
            print(
                f"corpus: {source}: Project Gutenberg's licence left out ({dropped:,} bytes; data.licence: keep keeps it)"
            )
        with fileio.atomic_path(CORPUS) as tmp:
            size, digest = chunks.copy_checked(found, tmp, source, span=span)
            corpus.check_digest(digest, cfg.sha256, source)
    print(f"corpus: {size:,} bytes from {source} (sha256 {digest[:16]}...) -> {CORPUS.relative_to(ROOT)}")


if __name__ == "__main__":
    sys.exit(main())
