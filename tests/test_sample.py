import os
import re
import select
import signal
import subprocess
import sys
import time

import pytest
import torch

from src.data.vocab import build_vocab
from src.generation.sampling import generate
from src.generation.stepper import CHECK_EVERY
from src.model import checkpoint
from src.model.charrnn import CharRNN, ModelSpec
from src.sample import main
from src.utils.errors import KarnnaError
from tests.conftest import TINY_TEXT


@pytest.fixture
def model_vocab():
    vocab = build_vocab(TINY_TEXT, "lf")
    torch.manual_seed(0)
    return CharRNN(ModelSpec(vocab.size, 8, 16, 2, 0.0)).eval(), vocab


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
    model = CharRNN(ModelSpec(vocab.size, 8, 16, 2, 0.0)).eval()
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


BAD_REQUESTS = [
    # NaN and inf make NaN draws; 1e308 is inf as a float32 divisor, 1e-300 is 0; 1e-40 overflows fp32 logits
    ({"temperature": float("nan")}, r"temperature is nan; use a number from 0\.001 to 1000, e\.g\. 0\.8"),
    ({"temperature": float("inf")}, r"temperature is inf; use a number from 0\.001 to 1000"),
    ({"temperature": 1e308}, r"temperature is 1e\+308; use a number from 0\.001 to 1000"),
    ({"temperature": 1e-300}, r"temperature is 1e-300; use a number from 0\.001 to 1000"),
    ({"temperature": 1e-40}, r"temperature is 1e-40; use"),
    ({"temperature": 0.0}, r"temperature is 0; use"),
    ({"temperature": -1.0}, r"temperature is -1; use"),
    # torch takes a seed modulo 2**64: -1 would draw seed 2**64 - 1's text, 2**64 is a ValueError
    ({"seed": -1}, r"seed is -1; use an integer from 0 to 18446744073709551615, e\.g\. 1234"),
    ({"seed": 2**64}, r"seed is 18446744073709551616; use an integer from 0"),
    ({"top_k": -1}, r"top_k is -1; use 0 \(no cut\), 1 \(greedy\) or more"),
    ({"length": 0}, r"length is 0; ask for at least 1"),
]


@pytest.mark.parametrize("bad, message", BAD_REQUESTS)
def test_generate_refuses_what_it_cannot_sample(model_vocab, bad, message):
    model, vocab = model_vocab
    request = {"prime": "a", "length": 5, "top_k": 5, "temperature": 1.0, "seed": 1, **bad}
    with pytest.raises(KarnnaError, match=message) as info:
        generate(model, vocab, **request)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("temperature", [1e-3, 1e3])
def test_the_ends_of_the_temperature_range_sample(model_vocab, temperature):
    model, vocab = model_vocab
    (text,) = generate(model, vocab, "a", 50, top_k=0, temperature=temperature, seed=2)
    assert len(text) == 51 and not set(text) - set(vocab.chars)


@pytest.mark.parametrize("bad, message", BAD_REQUESTS)
def test_cli_refuses_in_one_line_naming_the_option(model_vocab, tmp_path, capsys, bad, message):
    """`python -m src.sample --temperature nan` and the like: exit 2, one line, nothing printed."""
    model, vocab = model_vocab
    path = tmp_path / "m.pt"
    checkpoint.save(path, model, vocab, step=1)
    ((key, value),) = bad.items()
    option = "--" + key.replace("_", "-")
    assert main(["--checkpoint", str(path), "--length", "5", "--seed", "1", f"{option}={value}"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert re.match("error: " + message.replace(key, option, 1), err), err


def test_cli_prints_generates_text(model_vocab, tmp_path, capsys):
    """Streamed piece by piece (one sample) or at the end (several): generate()'s text, byte for byte."""
    model, vocab = model_vocab
    path = tmp_path / "m.pt"
    checkpoint.save(path, model, vocab, step=1)
    for n in (1, 3):
        argv = ["--checkpoint", str(path), "--prime", "The", "--length", "300", "--seed", "4", "--num-samples", str(n)]
        assert main(argv) == 0
        assert capsys.readouterr().out == "\n\n".join(generate(model, vocab, "The", 300, seed=4, num_samples=n)) + "\n"


@pytest.mark.slow
def test_a_long_text_reaches_stdout_as_it_is_drawn(model_vocab, tmp_path):
    """`python -m src.sample --length 100000000` (hours here): its first characters arrive through
    a pipe within seconds, while it runs; a reader that closes the pipe (`| head`) ends it quietly."""
    model, vocab = model_vocab
    path = tmp_path / "m.pt"
    checkpoint.save(path, model, vocab, step=1)
    argv = ["--checkpoint", str(path), "--prime", "The", "--length", "100000000", "--seed", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "src.sample", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    try:
        first, deadline = b"", time.monotonic() + 60
        while len(first) < 3 + 2 * CHECK_EVERY:  # the prime, then stretches of new characters
            ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, f"after 60 s, only {first!r} on stdout"
            first += os.read(proc.stdout.fileno(), 1 << 16)
        assert first.startswith(b"The") and proc.poll() is None  # still drawing
        proc.stdout.close()
        assert proc.wait(timeout=60) == 128 + signal.SIGPIPE
        assert proc.stderr.read() == b""
    finally:
        proc.kill()
        proc.wait()
