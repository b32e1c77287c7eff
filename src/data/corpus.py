"""Finding, fetching and reading the corpus.

The novel is never committed. Order of search when params.yaml's data.path is null:
``../shared/data/anna.txt`` beside the checkout (this environment), else a download from
Project Gutenberg (ebook 1399). With data.licence "strip" the corpus is the book alone: a
Project Gutenberg licence header or footer, wherever the text comes from, is left out.
"""

from __future__ import annotations

import hashlib
import mmap
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

from src.utils.errors import KarnnaError
from src.utils.repo import main_repo_root

# The copy of the novel that lies beside the checkout in this environment; it is the text of
# the original "Anna KaRNNa" notebook (no Gutenberg header, the licence as its footer, CRLF).
SHARED_CORPUS = Path("..") / "shared" / "data" / "anna.txt"

_START = "*** START OF"
_END = "*** END OF"
_BOM = "\ufeff".encode()


def locate(path: Optional[str], repo_root: Path) -> Optional[Path]:
    """The corpus file to use, or None when it must be fetched.

    A user-given path is relative to the repo root; it must exist. In a DVC experiment's copy of
    the repo (`dvc exp run --temp`, a queued experiment: <repo>/.dvc/tmp/exps/...), which holds
    only what git and DVC track, both are also looked for beside the repository itself.
    """
    roots = list(dict.fromkeys((repo_root, main_repo_root(repo_root))))
    if path is not None:
        p = Path(path)
        tried = [p] if p.is_absolute() else [root / p for root in roots]
        found = next((t for t in tried if t.is_file()), None)
        if found is None:
            raise KarnnaError(
                f"params.yaml: data.path: {path!r} does not exist (looked at {' and '.join(map(str, tried))}); "
                "put your UTF-8 text there or set data.path: null to use the novel"
            )
        return found
    return next((root / SHARED_CORPUS for root in roots if (root / SHARED_CORPUS).is_file()), None)


def book_bounds(data: bytes | mmap.mmap) -> Optional[tuple[int, int]]:
    """The byte offsets of the book in a text that holds Project Gutenberg's licence header or
    footer (or both): from the line after '*** START OF' (else the start) to the line end before
    '*** END OF' (else the end), blank lines at both edges left out, the book's last line end
    kept; None when neither marker is there."""
    start = data.find(_START.encode())
    begin = 0 if start < 0 else data.find(b"\n", start) + 1 or len(data)
    end = data.find(_END.encode(), begin)
    if start < 0 and end < 0:
        return None
    end = len(data) if end < 0 else end
    while begin < end and data[begin] in b"\r\n":
        begin += 1
    while end > begin and data[end - 1] in b"\r\n":
        end -= 1
    for newline in (b"\r\n", b"\n"):
        if data[end : end + len(newline)] == newline:
            return begin, end + len(newline)
    return begin, end


def book_span(path: Path) -> Optional[tuple[int, int]]:
    """book_bounds of a file, searched through a memory map: a corpus of any size is never read
    whole."""
    if path.stat().st_size == 0:
        return None
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        return book_bounds(data)


def download(url: str, timeout: float = 60.0) -> bytes:
    """Fetch the ebook; a failure says where to put the file by hand instead."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise KarnnaError(
            f"no corpus found and the download from {url} failed ({exc}); put a UTF-8 text at "
            f"{SHARED_CORPUS} beside the repo, or set data.path in params.yaml to your own file"
        ) from None


def fetch(url: str, strip: bool = True) -> bytes:
    """Download a Gutenberg plain-text ebook; -> its UTF-8 bytes (the book alone when `strip`)."""
    raw = download(url)
    decode_utf8(raw, url)
    if not strip:
        return raw
    span = book_bounds(raw)
    if span is None:
        raise KarnnaError(
            f"{url} has no '*** START OF ... ***' / '*** END OF ... ***' marker: it is not a Project "
            "Gutenberg plain-text ebook; check params.yaml data.url, or set data.licence: keep"
        )
    return raw[span[0] : span[1]].removeprefix(_BOM)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_sha256(data: bytes, expected: Optional[str], source: str) -> None:
    if expected is None:
        return
    check_digest(sha256(data), expected, source)


def check_digest(actual: str, expected: Optional[str], source: str) -> None:
    """The file's SHA-256 `actual` against params.yaml's data.sha256 (None: not checked)."""
    if expected is not None and actual != expected.lower():
        raise KarnnaError(
            f"{source}: SHA-256 is {actual}, params.yaml data.sha256 expects {expected}; "
            "the file changed or is another edition: fix the file or update data.sha256"
        )


def decode_utf8(data: bytes, source: str) -> str:
    """Decode, naming the byte offset of the first invalid sequence."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise KarnnaError(
            f"{source}: not UTF-8 at byte offset {exc.start} (byte 0x{data[exc.start]:02x}); "
            "convert it, e.g. iconv -f latin1 -t utf-8"
        ) from None


def normalise_newlines(text: str, policy: str) -> str:
    """'lf': CRLF and lone CR become LF (the seed's CRLF novel otherwise adds a useless '\\r');
    'keep': unchanged."""
    if policy == "lf":
        return text.replace("\r\n", "\n").replace("\r", "\n")
    if policy == "keep":
        return text
    raise KarnnaError(f"params.yaml: data.newline: {policy!r} is not one of 'lf' | 'keep'")
