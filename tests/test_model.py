import math

import torch
import torch.nn.functional as F

from src.config.schema import config_from_dict
from src.data.splits import split_ids
from src.data.vocab import build_vocab
from src.model.charrnn import CharRNN, ModelSpec, count_params, sizing_advice
from src.training.loop import train
from src.training.state import TrainPaths
from tests.conftest import tiny_params


def test_shapes():
    model = CharRNN(ModelSpec(vocab_size=20, embedding_dim=8, lstm_size=16, num_layers=3, dropout=0.2))
    logits, (h, c) = model(torch.zeros(4, 7, dtype=torch.long))
    assert logits.shape == (4, 7, 20)
    assert h.shape == c.shape == (3, 4, 16)


def test_each_layer_has_its_own_weights():
    model = CharRNN(ModelSpec(vocab_size=20, embedding_dim=16, lstm_size=16, num_layers=2, dropout=0.0))
    w0, w1 = model.rnn.weight_hh_l0, model.rnn.weight_hh_l1
    assert w0.data_ptr() != w1.data_ptr() and not torch.equal(w0, w1)


def test_initial_loss_is_about_ln_vocab_size():
    torch.manual_seed(0)
    vocab_size = 83
    model = CharRNN(ModelSpec(vocab_size, 64, 128, 2, 0.0))
    x = torch.randint(0, vocab_size, (8, 50))
    logits, _ = model(x)
    loss = F.cross_entropy(logits.flatten(0, 1), torch.randint(0, vocab_size, (400,)))
    assert abs(loss.item() - math.log(vocab_size)) < 0.05


def test_overfits_a_tiny_text(tmp_path):
    text = "the quick brown fox jumps over the lazy dog. " * 20
    vocab = build_vocab(text, "lf")
    split = split_ids(vocab.encode(text), 0.2, 0.0)
    cfg = config_from_dict(tiny_params(train={"max_steps": 400, "eval_interval": 100, "epochs": 1000}))
    result = train(cfg, vocab, split.train, split.val, TrainPaths(tmp_path / "b.pt", tmp_path / "l.pt"), progress=False)
    # A repeated sentence is nearly deterministic: far below ln(vocab) (~3.3 nats).
    assert result.final_train_loss < 0.3
    assert result.best_val_loss < 0.3


def test_sizing_advice_reads_the_ratio():
    assert "same order of magnitude" in sizing_advice(1_000_000, 1_000_000)
    assert "overfitting" in sizing_advice(100_000_000, 1_000_000)
    assert "underfitting" in sizing_advice(10_000, 1_000_000)
    assert count_params(torch.nn.Linear(3, 2)) == 8
