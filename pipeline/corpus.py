"""Stage corpus: find the text (data.path, ../shared/data/anna.txt, or a Gutenberg download) and
keep an exact copy in data/corpus.txt, so the later stages read a file DVC tracks."""

import sys

from pipeline.common import CORPUS, ROOT, load_config, stage
from src.data import corpus
from src.utils import fileio


@stage
def main() -> None:
    cfg = load_config().data
    found = corpus.locate(cfg.path, ROOT)
    if found is None:
        print(f"corpus: no local copy; downloading {cfg.url}")
        raw = corpus.fetch(cfg.url)
        source = cfg.url
    else:
        raw = found.read_bytes()
        source = str(found)
    corpus.decode_utf8(raw, source)
    corpus.check_sha256(raw, cfg.sha256, source)
    fileio.write_bytes(CORPUS, raw)
    print(
        f"corpus: {len(raw):,} bytes from {source} (sha256 {corpus.sha256(raw)[:16]}...) -> {CORPUS.relative_to(ROOT)}"
    )


if __name__ == "__main__":
    sys.exit(main())
