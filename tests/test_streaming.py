"""The streaming encode (src/data/streaming.py) gives the in-memory path's files byte for byte,
whatever falls on a chunk edge, and reports bad input in one line with its offset in the file."""

from __future__ import annotations

import io

import numpy as np
import pytest

from src.data import corpus
from src.data.streaming import encode_file
from src.data.vocab import Vocab, build_vocab
from src.utils.errors import KarnnaError
from tests.conftest import SHARED_CORPUS, TINY_TEXT


def in_memory(raw: bytes, newline: str, max_chars=None) -> tuple[Vocab, bytes]:
    """What the encode stage wrote before it streamed: (vocabulary, the .npy's bytes)."""
    text = corpus.normalise_newlines(corpus.decode_utf8(raw, "corpus.txt"), newline)
    if max_chars is not None:
        text = text[:max_chars]
    vocab = build_vocab(text, newline)
    buf = io.BytesIO()
    np.save(buf, vocab.encode(text), allow_pickle=False)
    return vocab, buf.getvalue()


def streamed(tmp_path, raw: bytes, newline: str = "lf", chunk_bytes: int = 7, max_chars=None) -> tuple[Vocab, bytes]:
    src = tmp_path / "corpus.txt"
    src.write_bytes(raw)
    out = tmp_path / "encoded.npy"
    vocab, n = encode_file(src, out, "corpus.txt", newline, max_chars, chunk_bytes, progress=False)
    assert n == len(np.load(out))
    return vocab, out.read_bytes()


@pytest.mark.skipif(not SHARED_CORPUS.is_file(), reason="the novel is not beside the checkout")
@pytest.mark.parametrize("chunk_bytes", [1 << 22, (1 << 16) + 1])
def test_the_novel_encodes_to_the_same_files_as_in_memory(tmp_path, chunk_bytes):
    raw = SHARED_CORPUS.read_bytes()
    vocab, npy = streamed(tmp_path, raw, chunk_bytes=chunk_bytes)
    ref_vocab, ref_npy = in_memory(raw, "lf")
    vocab.save(tmp_path / "vocab.json")
    ref_vocab.save(tmp_path / "ref.json")
    assert (tmp_path / "vocab.json").read_bytes() == (tmp_path / "ref.json").read_bytes()
    assert npy == ref_npy


MIXED = ("Анна\r\nКаренина: «счастливые»\rсемьи — 春天 🎉 naïve\r\n\r\n" + TINY_TEXT[:200].replace("\n", "\r\n")) * 3


@pytest.mark.parametrize("newline", ["lf", "keep"])
@pytest.mark.parametrize("chunk_bytes", [1, 2, 3, 5, 7, 64])
def test_every_chunk_edge_gives_the_in_memory_result(tmp_path, newline, chunk_bytes):
    """Chunks of 1 to 7 bytes split every multi-byte character (2, 3 and 4 bytes) and every CRLF."""
    raw = MIXED.encode("utf-8")
    vocab, npy = streamed(tmp_path, raw, newline, chunk_bytes)
    assert (vocab, npy) == in_memory(raw, newline)


def test_a_crlf_split_over_two_chunks_is_one_newline(tmp_path):
    vocab, npy = streamed(tmp_path, b"ab\r\ncd\r", chunk_bytes=3)  # chunks b"ab\r" | b"\ncd" | b"\r"
    assert vocab.decode(np.load(io.BytesIO(npy))) == "ab\ncd\n"


@pytest.mark.parametrize("max_chars", [1, 5, 40, 10_000])
def test_max_chars_cuts_the_normalised_text(tmp_path, max_chars):
    raw = MIXED.encode("utf-8")
    assert streamed(tmp_path, raw, "lf", 5, max_chars) == in_memory(raw, "lf", max_chars)


@pytest.mark.parametrize(
    "raw, offset, byte",
    [
        (b"abc\xff\xfedef", 3, 0xFF),
        ("Анна".encode() + b"x" * 50 + b"\xe9t\xc3", 58, 0xE9),  # a latin-1 byte in a later chunk
        (b"x" * 40 + "é".encode()[:1], 40, 0xC3),  # a sequence cut short by the end of the file
        (b"x" * 23 + b"\xe2\x82" + b"x", 23, 0xE2),  # a 3-byte sequence broken across chunks
    ],
)
def test_invalid_utf8_is_one_line_with_its_offset_in_the_file(tmp_path, raw, offset, byte):
    with pytest.raises(KarnnaError) as exc:
        streamed(tmp_path, raw, chunk_bytes=8)
    message = str(exc.value)
    assert message == (
        f"corpus.txt: not UTF-8 at byte offset {offset} (byte 0x{byte:02x}); convert it, e.g. iconv -f latin1 -t utf-8"
    )
    with pytest.raises(KarnnaError) as ref:
        corpus.decode_utf8(raw, "corpus.txt")
    assert str(ref.value) == message


def test_an_empty_corpus_is_one_line(tmp_path):
    with pytest.raises(KarnnaError, match="the corpus is empty"):
        streamed(tmp_path, b"")


def test_ids_of_a_vocabulary_past_256_characters_are_uint16(tmp_path):
    raw = "".join(chr(0x4E00 + i) for i in range(300)).encode()
    vocab, npy = streamed(tmp_path, raw, chunk_bytes=10)
    assert np.load(io.BytesIO(npy)).dtype == np.uint16
    assert (vocab, npy) == in_memory(raw, "lf")


def test_the_corpus_copy_is_exact_and_checked_in_chunks(tmp_path):
    import hashlib

    from src.data.chunks import copy_checked

    raw = MIXED.encode("utf-8")
    (tmp_path / "in.txt").write_bytes(raw)
    size, digest = copy_checked(tmp_path / "in.txt", tmp_path / "out.txt", "in.txt", chunk_bytes=5)
    assert (tmp_path / "out.txt").read_bytes() == raw
    assert (size, digest) == (len(raw), hashlib.sha256(raw).hexdigest())
    (tmp_path / "bad.txt").write_bytes(raw + b"\xff")
    with pytest.raises(KarnnaError, match=rf"bad.txt: not UTF-8 at byte offset {len(raw)} \(byte 0xff\)"):
        copy_checked(tmp_path / "bad.txt", tmp_path / "out2.txt", "bad.txt", chunk_bytes=5)


def test_a_span_of_the_corpus_is_copied_and_checked_in_file_offsets(tmp_path):
    import hashlib

    from src.data.chunks import copy_checked

    raw = MIXED.encode("utf-8")
    (tmp_path / "in.txt").write_bytes(b"head\n" + raw + b"\xfftail")
    span = (5, 5 + len(raw))
    size, digest = copy_checked(tmp_path / "in.txt", tmp_path / "out.txt", "in.txt", chunk_bytes=5, span=span)
    assert (tmp_path / "out.txt").read_bytes() == raw
    assert (size, digest) == (len(raw), hashlib.sha256(raw).hexdigest())
    with pytest.raises(KarnnaError, match=rf"in.txt: not UTF-8 at byte offset {5 + len(raw)} \(byte 0xff\)"):
        copy_checked(tmp_path / "in.txt", tmp_path / "out2.txt", "in.txt", chunk_bytes=5, span=(5, 6 + len(raw)))
