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


def _sharp_model(vocab, seed=0, scale=8.0):
    """A random model with logits spread wide enough that the top-k sets are clear cut."""
    torch.manual_seed(seed)
    model = CharLSTM(ModelSpec(vocab.size, 8, 16, 2, 0.0)).eval()
    with torch.no_grad():
        model.head.weight.mul_(scale)
    return model


def _logits_along(model, vocab, text: str) -> torch.Tensor:
    """(len(text), V): the logits of the character after each prefix of `text`, in one call."""
    with torch.no_grad():
        logits, _ = model(torch.as_tensor(vocab.encode(text), dtype=torch.long).view(1, -1))
    return logits[0]


def test_top_k_holds_at_every_step(model_vocab):
    """Beyond the first character: each generated character is among the k likeliest at its step."""
    _, vocab = model_vocab
    model = _sharp_model(vocab)
    prime, k = "The", 3
    for seed in range(3):
        (text,) = generate(model, vocab, prime, 150, top_k=k, seed=seed)
        logits = _logits_along(model, vocab, text)
        for i in range(len(prime), len(text)):
            scores = logits[i - 1]
            kth, next_out = scores.topk(k + 1).values[-2:]
            if kth - next_out < 1e-3:
                continue  # a near tie at the cut: either side is right within float error
            allowed = set(scores.topk(k).indices.tolist())
            assert vocab.encode(text[i])[0] in allowed, (seed, i)


def test_low_temperature_approaches_greedy(model_vocab):
    _, vocab = model_vocab
    model = _sharp_model(vocab, seed=1)
    greedy = generate(model, vocab, "a", 120, top_k=1)
    assert generate(model, vocab, "a", 120, top_k=0, temperature=1e-3, seed=5) == greedy
    assert generate(model, vocab, "a", 120, top_k=0, temperature=1.0, seed=5) != greedy


def test_frequencies_at_temperature_1_match_the_softmax(model_vocab):
    """top_k 0, T = 1: over 40,000 samples, the first and second characters' frequencies are the
    model's softmax within a total variation distance of 0.03 (the sampling noise is ~0.01)."""
    _, vocab = model_vocab
    model = _sharp_model(vocab, seed=3, scale=25.0)  # a commonest first character (28%), to condition on
    n, prime = 40_000, "Th"
    texts = generate(model, vocab, prime, 2, top_k=0, temperature=1.0, seed=11, num_samples=n)
    firsts = torch.tensor([vocab.encode(t[2])[0] for t in texts])
    probs = torch.softmax(_logits_along(model, vocab, prime)[-1], dim=-1)
    assert 0.5 * (torch.bincount(firsts, minlength=vocab.size) / n - probs).abs().sum() < 0.03
    # The second character, given the commonest first one.
    common = int(torch.bincount(firsts).argmax())
    seconds = torch.tensor([vocab.encode(t[3])[0] for t in texts if vocab.encode(t[2])[0] == common])
    probs = torch.softmax(_logits_along(model, vocab, prime + vocab.chars[common])[-1], dim=-1)
    tv = 0.5 * (torch.bincount(seconds, minlength=vocab.size) / len(seconds) - probs).abs().sum()
    assert len(seconds) > 5000 and tv < 0.05
