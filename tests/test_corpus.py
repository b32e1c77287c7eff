import functools
import http.server
import threading

import pytest

from src.data import corpus
from src.utils.errors import KarnnaError

GUTENBERG = (
    "\ufeffThe Project Gutenberg eBook of Anna Karenina\r\n\r\nThis eBook is for the use of anyone...\r\n"
    "*** START OF THE PROJECT GUTENBERG EBOOK ANNA KARENINA ***\r\n\r\n\r\n"
    "Chapter 1\r\n\r\nHappy families are all alike.\r\n\r\n"
    "*** END OF THE PROJECT GUTENBERG EBOOK ANNA KARENINA ***\r\nLicence text...\r\n"
)


@pytest.mark.parametrize(
    "text, book",
    [
        (GUTENBERG, "Chapter 1\r\n\r\nHappy families are all alike.\r\n"),
        # The copy beside the checkout: no header, the licence as its footer.
        (
            "Chapter 1\r\n\r\nThe end.\r\n\r\n\r\n*** END OF THIS PROJECT GUTENBERG EBOOK ***\r\nA Word",
            "Chapter 1\r\n\r\nThe end.\r\n",
        ),
        ("*** START OF X ***\nBook\n", "Book\n"),
        ("line one\nline two *** END OF", "line one\nline two "),
    ],
)
def test_book_span_leaves_out_the_licence(tmp_path, text, book):
    path = tmp_path / "book.txt"
    path.write_bytes(text.encode())
    begin, end = corpus.book_span(path)
    assert path.read_bytes()[begin:end] == book.encode()
    assert corpus.book_bounds(text.encode()) == (begin, end)  # a download's bytes: the same rule


@pytest.mark.parametrize("text", ["", "A text of my own.\n", "*** no marker here ***\n"])
def test_book_span_of_a_text_without_the_markers_is_none(tmp_path, text):
    path = tmp_path / "mine.txt"
    path.write_text(text)
    assert corpus.book_span(path) is None


def test_decode_names_the_byte_offset():
    with pytest.raises(KarnnaError, match=r"corpus.txt: not UTF-8 at byte offset 3 \(byte 0xe9\)"):
        corpus.decode_utf8(b"abc\xe9def", "corpus.txt")


def test_locate(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    assert corpus.locate(None, repo) is None
    shared = tmp_path / "shared" / "data"
    shared.mkdir(parents=True)
    (shared / "anna.txt").write_text("x")
    assert corpus.locate(None, repo).resolve() == (shared / "anna.txt").resolve()
    (repo / "mine.txt").write_text("y")
    assert corpus.locate("mine.txt", repo) == repo / "mine.txt"
    with pytest.raises(KarnnaError, match=r"data.path: 'missing.txt' does not exist"):
        corpus.locate("missing.txt", repo)


def test_locate_from_a_dvc_experiment_copy(tmp_path):
    """`dvc exp run --temp` and queued experiments run in <repo>/.dvc/tmp/exps/...: the novel beside
    the repository, and a data.path that only the repository holds, are found from there too."""
    repo = tmp_path / "repo"
    copy = repo / ".dvc" / "tmp" / "exps" / "run" / "exp-1a2b3"
    copy.mkdir(parents=True)
    assert corpus.locate(None, copy) is None
    shared = tmp_path / "shared" / "data"
    shared.mkdir(parents=True)
    (shared / "anna.txt").write_text("x")
    assert corpus.locate(None, copy).resolve() == (shared / "anna.txt").resolve()
    (repo / "mine.txt").write_text("y")
    assert corpus.locate("mine.txt", copy) == repo / "mine.txt"
    (copy / "mine.txt").write_text("z")
    assert corpus.locate("mine.txt", copy) == copy / "mine.txt"  # the copy's own first
    with pytest.raises(KarnnaError, match=r"looked at .*exp-1a2b3/gone.txt and .*repo/gone.txt"):
        corpus.locate("gone.txt", copy)


def test_checksum():
    corpus.check_sha256(b"abc", None, "x")
    corpus.check_sha256(b"abc", corpus.sha256(b"abc"), "x")
    with pytest.raises(KarnnaError, match="SHA-256"):
        corpus.check_sha256(b"abd", corpus.sha256(b"abc"), "x")


@pytest.fixture
def http_root(tmp_path):
    """A real HTTP server on loopback serving tmp_path."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_fetch_downloads_and_strips(http_root):
    root, base = http_root
    (root / "pg1399.txt").write_bytes(GUTENBERG.encode("utf-8"))
    assert corpus.fetch(f"{base}/pg1399.txt") == b"Chapter 1\r\n\r\nHappy families are all alike.\r\n"
    # A byte-order mark before the book (an ebook with only the footer) is not part of it.
    (root / "footer.txt").write_bytes("\ufeffBook\n*** END OF X ***\n".encode())
    assert corpus.fetch(f"{base}/footer.txt") == b"Book\n"


def test_fetch_rejects_a_text_without_the_markers(http_root):
    root, base = http_root
    (root / "mine.txt").write_bytes(b"just some text")
    with pytest.raises(KarnnaError, match=r"mine.txt has no .* marker: it is not a Project Gutenberg"):
        corpus.fetch(f"{base}/mine.txt")
    assert corpus.fetch(f"{base}/mine.txt", strip=False) == b"just some text"


def test_fetch_keeps_the_licence_when_asked(http_root):
    root, base = http_root
    (root / "pg1399.txt").write_bytes(GUTENBERG.encode("utf-8"))
    assert corpus.fetch(f"{base}/pg1399.txt", strip=False) == GUTENBERG.encode("utf-8")


def test_fetch_failure_says_where_to_put_the_file(http_root):
    _, base = http_root
    with pytest.raises(KarnnaError, match=r"download from .* failed .*put a UTF-8 text at"):
        corpus.fetch(f"{base}/missing.txt")
