"""Encoding a corpus of any size in bounded memory: the text is read in chunks of bytes, twice.

The first pass collects the vocabulary and counts the characters, the second writes the ids
straight into the output .npy with plain file writes, so the process holds one chunk and its ids
at a time (about 20 bytes per character of a chunk: a few tens of MB) whatever the corpus size.
The result is the in-memory path's byte for byte (src.data.corpus.decode_utf8 and
normalise_newlines, src.data.vocab.build_vocab and Vocab.encode, fileio.write_npy): the chunk
edges are invisible, as UTF-8 sequences and CRLF pairs split over two chunks are joined first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

import numpy as np
from tqdm.auto import tqdm

from src.data.chunks import CHUNK_BYTES, read_chunks
from src.data.vocab import Vocab
from src.utils import progress as progress_line
from src.utils.errors import KarnnaError


def check_newline(policy: str) -> None:
    if policy not in ("lf", "keep"):
        raise KarnnaError(f"params.yaml: data.newline: {policy!r} is not one of 'lf' | 'keep'")


def normalised_chunks(chunks: Iterator[str], policy: str) -> Iterator[str]:
    """normalise_newlines over a stream: a CR that ends a chunk waits for the next one, which may
    start with its LF."""
    check_newline(policy)
    if policy == "keep":
        yield from chunks
        return
    held = ""
    for text in chunks:
        text = held + text
        held = "\r" if text.endswith("\r") else ""
        text = text[: len(text) - len(held)]
        if text:
            yield text.replace("\r\n", "\n").replace("\r", "\n")
    if held:
        yield "\n"


def limited(chunks: Iterator[str], max_chars: Optional[int]) -> Iterator[str]:
    """The first max_chars characters of the stream (all when None)."""
    left = max_chars
    for text in chunks:
        if left is not None:
            text = text[:left]
            left -= len(text)
        if text:
            yield text
        if left == 0:
            return


def text_chunks(
    path: Path, source: str, newline: str, max_chars: Optional[int], chunk_bytes: int, bar: Optional[tqdm] = None
) -> Iterator[str]:
    return limited(normalised_chunks(read_chunks(path, source, chunk_bytes, bar), newline), max_chars)


def scan(
    path: Path, source: str, newline: str, max_chars: Optional[int] = None, chunk_bytes: int = CHUNK_BYTES, bar=None
) -> tuple[Vocab, int]:
    """The first pass: (the vocabulary, the number of characters)."""
    seen: set[str] = set()
    n = 0
    for text in text_chunks(path, source, newline, max_chars, chunk_bytes, bar):
        seen.update(text)
        n += len(text)
    if n == 0:
        raise KarnnaError("the corpus is empty; point data.path at a non-empty UTF-8 text")
    return Vocab(chars=tuple(sorted(seen)), newline=newline), n


def lookup_table(vocab: Vocab) -> np.ndarray:
    """Code point -> id, -1 for a character outside the vocabulary (4.4 MB, whatever the corpus)."""
    table = np.full(0x110000, -1, dtype=np.int32)
    table[[ord(c) for c in vocab.chars]] = np.arange(vocab.size, dtype=np.int32)
    return table


def write_ids(
    path: Path,
    out: Path,
    vocab: Vocab,
    n: int,
    source: str,
    max_chars: Optional[int] = None,
    chunk_bytes: int = CHUNK_BYTES,
    bar=None,
) -> None:
    """The second pass: the ids of the text at `path` into a new .npy at `out`, np.save's bytes."""
    # open_memmap writes np.save's header and sizes the file; the ids then go in with plain
    # writes, so no page of the output stays mapped in this process.
    header = np.lib.format.open_memmap(out, mode="w+", dtype=vocab.dtype, shape=(n,))
    offset = header.offset
    del header
    table = lookup_table(vocab)
    written = 0
    with open(out, "r+b") as f:
        f.seek(offset)
        for text in text_chunks(path, source, vocab.newline, max_chars, chunk_bytes, bar):
            ids = table[np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)]
            if written + len(ids) > n or (ids < 0).any():
                raise KarnnaError(f"{source}: changed while it was being encoded; run the encode stage again")
            f.write(ids.astype(vocab.dtype).tobytes())
            written += len(ids)
    if written != n:
        raise KarnnaError(f"{source}: changed while it was being encoded; run the encode stage again")


def encode_file(
    path: Path,
    out: Path,
    source: str,
    newline: str,
    max_chars: Optional[int] = None,
    chunk_bytes: int = CHUNK_BYTES,
    progress: bool = True,
) -> tuple[Vocab, int]:
    """Both passes: the ids of the text at `path` into the .npy `out`; -> (vocabulary, characters).
    A progress line (two passes over the file's bytes) appears when it takes more than a few seconds."""
    with progress_line.bar(2 * path.stat().st_size, "encode", enabled=progress) as bar:
        vocab, n = scan(path, source, newline, max_chars, chunk_bytes, bar)
        write_ids(path, out, vocab, n, source, max_chars, chunk_bytes, bar)
    return vocab, n
