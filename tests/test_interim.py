"""evaluate.interim_chars (src/training/interim.py): the validations before the last score a prefix
of the validation split and compete for best.pt on it; the last one scores the whole split, where
the prefix's best is scored again, so best.pt is the better of the two on the whole split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from src.config.schema import config_from_dict
from src.data import batches
from src.model import checkpoint
from src.training import evaluate
from src.training.loop import train
from src.training.state import TrainPaths
from src.utils.errors import KarnnaError
from tests.conftest import TINY_TEXT, tiny_params


def run(tmp_path, name, cfg, vocab, tr, va, **kw):
    paths = TrainPaths(tmp_path / f"{name}-best.pt", tmp_path / f"{name}-last.pt")
    lines = []
    result = train(cfg, vocab, tr, va, paths, progress=False, log=lines.append, **kw)
    return result, paths


def whole_score(path, va) -> float:
    model, _, _ = checkpoint.load(path)
    return evaluate.stream_loss(model, batches.Ids(va), 4, 32)


def test_a_prefix_as_long_as_the_split_changes_nothing(tmp_path, tiny_data):
    vocab, tr, va = tiny_data
    cfg = config_from_dict(tiny_params())
    whole, _ = run(tmp_path, "whole", cfg, vocab, tr, va)
    for n in (len(va), len(va) + 1, 200_000):
        same, _ = run(tmp_path, f"p{n}", cfg, vocab, tr, va, interim_chars=n)
        assert (same.val_history, same.best_step, same.best_val_loss) == (
            whole.val_history,
            whole.best_step,
            whole.best_val_loss,
        )


@pytest.fixture
def overfitting():
    """Training text and a validation text (the same characters shuffled) it stops fitting after
    step 30 of 60: the prefix's best comes before the end."""
    vocab = tiny_data_vocab()
    ids = vocab.encode(TINY_TEXT)
    val = np.random.default_rng(0).permutation(ids)[:600]
    cfg = config_from_dict(tiny_params(train={"lr": 3.0e-2, "max_steps": 60, "epochs": 100}))
    return cfg, vocab, ids, val


def tiny_data_vocab():
    from src.data.vocab import build_vocab

    return build_vocab(TINY_TEXT, "lf")


def test_interim_validations_score_the_prefix_and_the_last_the_whole_split(tmp_path, overfitting):
    cfg, vocab, tr, va = overfitting
    prefixed, paths = run(tmp_path, "p", cfg, vocab, tr, va, interim_chars=300)
    # The same training with the tuner's prefix (which never competes) scores the same prefix.
    tuner, _ = run(tmp_path, "t", cfg, vocab, tr, va, eval_chars=300)
    assert prefixed.val_history == tuner.val_history
    assert prefixed.train_history == tuner.train_history
    whole, _ = run(tmp_path, "w", cfg, vocab, tr, va)
    assert prefixed.val_history[:-1] != whole.val_history[:-1]
    assert prefixed.val_history[-1] == whole.val_history[-1]


def test_the_prefixs_best_is_scored_again_on_the_whole_split(tmp_path, overfitting):
    cfg, vocab, tr, va = overfitting
    result, paths = run(tmp_path, "p", cfg, vocab, tr, va, interim_chars=300)
    assert result.best_step == 30 < result.steps  # chosen on the prefix, better on the whole split too
    best = checkpoint.load_payload(paths.best)
    assert best["step"] == 30
    score = whole_score(paths.best, va)
    assert best["val_loss"] == result.best_val_loss == pytest.approx(score, rel=1e-6)
    assert result.best_val_loss < result.val_history[-1][1]  # the final model's whole-split score


def test_the_final_model_wins_when_better_on_the_whole_split(tmp_path, tiny_data):
    vocab, tr, va = tiny_data
    cfg = config_from_dict(tiny_params())
    result, paths = run(tmp_path, "p", cfg, vocab, tr, va, interim_chars=60)
    assert result.best_step == result.steps == 30
    assert checkpoint.load_payload(paths.best)["val_loss"] == result.best_val_loss == result.val_history[-1][1]


def test_interim_chars_below_2_is_refused():
    with pytest.raises(KarnnaError, match=r"evaluate\.interim_chars: 1 is out of range"):
        config_from_dict(tiny_params(evaluate={"interim_chars": 1}))
    assert config_from_dict(tiny_params(evaluate={"interim_chars": None})).evaluate.interim_chars is None


def test_stream_loss_progress_does_not_change_the_score(tiny_data):
    vocab, _, va = tiny_data
    from src.model.charrnn import CharRNN, ModelSpec

    model = CharRNN(ModelSpec(vocab.size, 4, 8, 1, 0.0))
    ids = torch.from_numpy(va.astype(np.int64))
    assert evaluate.stream_loss(model, ids, 4, 32, progress="val") == evaluate.stream_loss(model, ids, 4, 32)
