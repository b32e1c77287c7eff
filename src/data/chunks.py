"""Reading a UTF-8 file of any size in chunks of bytes: decoded whole across chunk edges, invalid
UTF-8 reported in one line with its offset in the file. The corpus stage copies with it and the
encode stage (src/data/streaming.py) reads with it; it knows nothing of the vocabulary, so that
editing the encoding code never fetches or copies the corpus again.
"""

from __future__ import annotations

import codecs
import hashlib
from pathlib import Path
from typing import Callable, Iterator, Optional

from tqdm.auto import tqdm

from src.utils import progress as progress_line
from src.utils.errors import KarnnaError

CHUNK_BYTES = 1 << 22


def not_utf8(source: str, offset: int, byte: int) -> KarnnaError:
    """The one line for invalid UTF-8 (src.data.corpus.decode_utf8 gives the same)."""
    return KarnnaError(
        f"{source}: not UTF-8 at byte offset {offset} (byte 0x{byte:02x}); convert it, e.g. iconv -f latin1 -t utf-8"
    )


def read_chunks(
    path: Path,
    source: str,
    chunk_bytes: int = CHUNK_BYTES,
    bar: Optional[tqdm] = None,
    on_bytes: Callable[[bytes], object] = lambda data: None,
    span: Optional[tuple[int, int]] = None,
) -> Iterator[str]:
    """The file's text (its bytes span[0]:span[1] when given), decoded in chunks; a sequence split
    over two chunks is decoded whole, and invalid UTF-8 is one line with its offset in the file.
    on_bytes sees each chunk's bytes."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    begin, end = span if span is not None else (0, None)
    consumed = begin  # the file's offset of the next byte handed to the decoder
    with open(path, "rb") as f:
        f.seek(begin)
        while True:
            data = f.read(chunk_bytes if end is None else min(chunk_bytes, end - consumed))
            final = not data
            pending = len(decoder.getstate()[0])  # the tail of the last chunk, decoded with this one
            try:
                text = decoder.decode(data, final=final)
            except UnicodeDecodeError as exc:
                raise not_utf8(source, consumed - pending + exc.start, exc.object[exc.start]) from None
            consumed += len(data)
            on_bytes(data)
            if bar is not None:
                bar.update(len(data))
            if text:
                yield text
            if final:
                return


def copy_checked(
    path: Path, out: Path, source: str, chunk_bytes: int = CHUNK_BYTES, span: Optional[tuple[int, int]] = None
) -> tuple[int, str]:
    """Copy the file at `path` (its bytes span[0]:span[1] when given) to `out` in chunks, checking
    it is UTF-8 on the way (the one line of read_chunks); -> (the copy's size in bytes, its SHA-256)."""
    digest = hashlib.sha256()
    total = path.stat().st_size if span is None else span[1] - span[0]
    with open(out, "wb") as f, progress_line.bar(total, "corpus") as bar:

        def take(data: bytes) -> None:
            digest.update(data)
            f.write(data)

        for _ in read_chunks(path, source, chunk_bytes, bar, take, span):
            pass
        size = f.tell()
    return size, digest.hexdigest()
