import pytest
import torch

from src import checkpoint
from src.errors import KarnnaError
from src.model import CharLSTM, ModelSpec
from src.sample import generate, main
from src.vocab import build_vocab
from tests.conftest import TINY_TEXT


@pytest.fixture
def model_vocab():
    vocab = build_vocab(TINY_TEXT, "lf")
    torch.manual_seed(0)
    return CharLSTM(ModelSpec(vocab.size, 8, 16, 2, 0.0)).eval(), vocab


def test_same_seed_same_text(model_vocab):
    model, vocab = model_vocab
    a = generate(model, vocab, "The", 80, top_k=5, seed=7)
    b = generate(model, vocab, "The", 80, top_k=5, seed=7)
    c = generate(model, vocab, "The", 80, top_k=5, seed=8)
    assert a == b and a != c
    assert a[0].startswith("The") and len(a[0]) == 83


def test_greedy_ignores_the_seed(model_vocab):
    model, vocab = model_vocab
    assert generate(model, vocab, "a", 40, top_k=1, seed=1) == generate(model, vocab, "a", 40, top_k=1, seed=2)


def test_top_k_limits_the_choices(model_vocab):
    model, vocab = model_vocab
    prime = "e"
    with torch.no_grad():
        logits, _ = model(torch.as_tensor(vocab.encode(prime), dtype=torch.long).view(1, -1))
    allowed = {vocab.chars[i] for i in logits[0, -1].topk(2).indices.tolist()}
    firsts = {generate(model, vocab, prime, 1, top_k=2, seed=s)[0][1] for s in range(30)}
    assert firsts <= allowed


def test_batched_samples_are_independent(model_vocab):
    model, vocab = model_vocab
    texts = generate(model, vocab, "The", 60, top_k=0, seed=3, num_samples=4)
    assert len(texts) == 4 and len(set(texts)) > 1


def test_unknown_prime_characters_are_named(model_vocab):
    model, vocab = model_vocab
    with pytest.raises(KarnnaError, match=r"prime 'Zoë'.*'Z', 'ë'"):
        generate(model, vocab, "Zoë", 10)


@pytest.mark.parametrize("length", [0, -5])
def test_non_positive_length(model_vocab, length):
    model, vocab = model_vocab
    with pytest.raises(KarnnaError, match="at least 1"):
        generate(model, vocab, "a", length)


def test_cli(model_vocab, tmp_path, capsys):
    model, vocab = model_vocab
    path = tmp_path / "m.pt"
    checkpoint.save(path, model, vocab, step=1)
    argv = ["--checkpoint", str(path), "--prime", "The", "--length", "30", "--seed", "5", "--top-k", "3"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert main(argv) == 0
    assert capsys.readouterr().out == first and first.startswith("The")
    assert main(["--checkpoint", str(path), "--prime", "Zz", "--length", "5"]) == 2
    assert "Z" in capsys.readouterr().err
    assert main(["--checkpoint", str(path), "--greedy", "--prime", "a", "--length", "5"]) == 0
