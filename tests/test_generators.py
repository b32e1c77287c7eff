"""Each training draws from its own generators: the same params and seed give the same losses
alone or beside another training in a thread of the same process (`src.tune --n-jobs 2`)."""

from __future__ import annotations

import threading

import torch

from src.config.schema import config_from_dict
from src.training.loop import train
from src.training.setup import build_model, generators
from src.training.state import TrainPaths
from tests.conftest import tiny_params


def _cfg(seed=1234):
    # dropout on: masks are drawn at every step, so any shared generator shows at once
    return config_from_dict(tiny_params(model={"dropout": 0.3}, train={"max_steps": 25, "seed": seed}))


def _train(cfg, data, tmp_path, name):
    vocab, tr, va = data
    paths = TrainPaths(tmp_path / f"{name}-best.pt", tmp_path / f"{name}-last.pt")
    return train(cfg, vocab, tr, va, paths, progress=False, log=lambda _: None)


def test_same_losses_alone_and_beside_another_training(tmp_path, tiny_data):
    alone = _train(_cfg(), tiny_data, tmp_path, "alone")
    # Something else drawing from the process-wide generator must not matter either.
    torch.manual_seed(99)
    torch.rand(1000)
    results = {}

    def run(name, seed):
        results[name] = _train(_cfg(seed), tiny_data, tmp_path, name)

    threads = [threading.Thread(target=run, args=("twin", 1234)), threading.Thread(target=run, args=("other", 7))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results["twin"].train_history == alone.train_history
    assert results["twin"].val_history == alone.val_history
    assert results["other"].train_history != alone.train_history


def test_initialisation_comes_from_the_given_generator(tiny_data):
    vocab = tiny_data[0]
    cfg = _cfg()
    a = build_model(cfg, vocab, generators(5, torch.device("cpu"))[0])
    torch.manual_seed(0)
    b = build_model(cfg, vocab, generators(5, torch.device("cpu"))[0])
    c = build_model(cfg, vocab, generators(6, torch.device("cpu"))[0])
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb), name
        assert not torch.equal(pa, pc), name
    # torch's default scales: the embedding N(0, 1), the LSTM and head within 1/sqrt(H)
    bound = 1 / cfg.model.lstm_size**0.5
    assert 0.8 < a.embed.weight.std() < 1.2
    assert a.rnn.weight_hh_l0.abs().max() <= bound and a.head.bias.abs().max() <= bound
