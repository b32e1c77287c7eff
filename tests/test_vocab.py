import numpy as np
import pytest

from src.data import corpus
from src.data.vocab import PRIME_PARAM, Vocab, build_vocab
from src.utils.errors import KarnnaError
from tests.conftest import TINY_TEXT


def test_vocab_is_sorted_and_stable():
    a = build_vocab("hello world", "lf")
    b = build_vocab("dlrow olleh", "lf")
    assert a == b
    assert list(a.chars) == sorted(set("hello world"))


def test_round_trip_and_dtype():
    vocab = build_vocab(TINY_TEXT, "lf")
    ids = vocab.encode(TINY_TEXT)
    assert ids.dtype == np.uint8
    assert vocab.decode(ids) == TINY_TEXT
    assert ids.max() == vocab.size - 1


def test_non_ascii_round_trip():
    text = "Анна — Каренина ‘ok’ é\n"
    vocab = build_vocab(text, "lf")
    assert vocab.decode(vocab.encode(text)) == text


def test_unknown_characters_are_named():
    vocab = build_vocab("abc", "lf")
    with pytest.raises(KarnnaError, match=r"'z', 'é'"):
        vocab.encode("abz é")


def test_newline_policy():
    raw = "one\r\ntwo\rthree\nfour"
    assert corpus.normalise_newlines(raw, "lf") == "one\ntwo\nthree\nfour"
    assert corpus.normalise_newlines(raw, "keep") == raw
    assert "\r" not in build_vocab(corpus.normalise_newlines(raw, "lf"), "lf").chars


def test_vocab_json_records_newline_policy(tmp_path):
    vocab = build_vocab("a\r\nb", "keep")
    vocab.save(tmp_path / "vocab.json")
    loaded = Vocab.load(tmp_path / "vocab.json")
    assert loaded == vocab and loaded.newline == "keep"


def test_empty_text_is_an_error():
    with pytest.raises(KarnnaError, match="empty"):
        build_vocab("", "lf")


def test_a_prime_outside_the_vocabulary_is_one_line_with_a_prime_from_the_corpus():
    text = "第一章\n春天来了，山上的花都开了。" * 3
    vocab = build_vocab(text, "lf")
    with pytest.raises(KarnnaError) as info:
        vocab.encode_prime("Far", PRIME_PARAM, text=text)
    assert str(info.value) == (
        "params.yaml: sample.prime 'Far': characters not in the vocabulary: 'F', 'a', 'r'; "
        "set a prime from your corpus, e.g. `dvc exp run -S 'sample.prime=\"第一章\"'`"
    )
    assert vocab.encode_prime("春天", PRIME_PARAM).tolist() == vocab.encode("春天").tolist()
    # without a text, letters of the vocabulary; a long run of letters (no spaces) is cut to 4
    assert not vocab.missing(vocab.suggest_prime()) and vocab.suggest_prime()
    assert vocab.suggest_prime("春天来了山上的花都开了山上的花") == "春天来了"
    assert vocab.suggest_prime(text, prefer="Far") == "第一章" and vocab.suggest_prime(text, prefer="山上") == "山上"
