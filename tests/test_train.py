import math

import numpy as np
import torch

from src.config.schema import config_from_dict
from src.model import checkpoint
from src.training import evaluate
from src.training.loop import train
from src.training.setup import lr_factor
from src.training.state import TrainPaths
from tests.conftest import assert_no_temp_files, tiny_params


def _run(tmp_path, cfg, tiny_data, name="a"):
    vocab, tr, va = tiny_data
    paths = TrainPaths(tmp_path / f"{name}-best.pt", tmp_path / f"{name}-last.pt")
    return train(cfg, vocab, tr, va, paths, progress=False, log=lambda _: None), paths


def test_smoke_run_writes_best_and_last(tmp_path, tiny_config, tiny_data):
    result, paths = _run(tmp_path, tiny_config, tiny_data)
    assert result.steps == 30
    assert [s for s, _ in result.val_history] == [10, 20, 30]
    assert len(result.train_history) == 30
    best = checkpoint.load_payload(paths.best)
    assert best["val_loss"] == result.best_val_loss == min(v for _, v in result.val_history)
    assert best["step"] == result.best_step
    assert checkpoint.load_payload(paths.last)["step"] == 30
    assert result.n_params > 0 and result.train_chars == len(tiny_data[1])
    assert_no_temp_files(tmp_path)


def test_same_params_same_numbers_on_cpu(tmp_path, tiny_config, tiny_data):
    a, _ = _run(tmp_path, tiny_config, tiny_data, "a")
    b, _ = _run(tmp_path, tiny_config, tiny_data, "b")
    assert a.train_history == b.train_history
    assert a.val_history == b.val_history


def test_validation_score_does_not_depend_on_training_shape(tmp_path, tiny_data):
    """The evaluation layout is fixed by evaluate.*; the chunk length does not change the score."""
    vocab, _, va = tiny_data
    cfg = config_from_dict(tiny_params())
    result, paths = _run(tmp_path, cfg, tiny_data)
    model, _, _ = checkpoint.load(paths.best)
    ids = torch.from_numpy(va.astype(np.int64))
    a = evaluate.stream_loss(model, ids, rows=4, chunk_len=7)
    b = evaluate.stream_loss(model, ids, rows=4, chunk_len=1000)
    assert math.isclose(a, b, rel_tol=1e-5)
    assert math.isclose(a, result.best_val_loss, rel_tol=1e-5)


def test_evaluation_does_not_touch_training_mode(tiny_data):
    from src.model.charrnn import CharRNN, ModelSpec

    vocab, _, va = tiny_data
    model = CharRNN(ModelSpec(vocab.size, 4, 8, 1, 0.5)).train()
    evaluate.stream_loss(model, torch.from_numpy(va.astype(np.int64)), 2, 16)
    assert model.training


def test_cosine_schedule():
    assert lr_factor(0, 100, 0, "cosine", 0.1) == 1.0
    assert math.isclose(lr_factor(100, 100, 0, "cosine", 0.1), 0.1)
    assert math.isclose(lr_factor(50, 100, 0, "cosine", 0.1), 0.55)
    assert lr_factor(0, 100, 10, "cosine", 0.1) == 0.1
    assert lr_factor(70, 100, 0, "none", 0.1) == 1.0


def test_divergence_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path, tiny_data, monkeypatch):
    """A NaN loss from step 16 on (injected into the real model's output) stops training."""
    import pytest

    import src.training.setup as build_module
    from src.model.charrnn import CharRNN, ModelSpec
    from src.utils.errors import KarnnaError

    def poisoned_model(cfg, vocab, generator=None):
        model = CharRNN(
            ModelSpec(vocab.size, cfg.model.embedding_dim, cfg.model.lstm_size, cfg.model.num_layers, cfg.model.dropout)
        )
        calls = {"n": 0}

        def hook(module, inputs, output):
            if module.training:
                calls["n"] += 1
                if calls["n"] >= 16:
                    return output * float("nan")
            return output

        model.head.register_forward_hook(hook)
        return model

    monkeypatch.setattr(build_module, "build_model", poisoned_model)
    cfg = config_from_dict(tiny_params())
    with pytest.raises(KarnnaError, match=r"training loss is nan at step 16: training diverged; lower train\.lr"):
        _run(tmp_path, cfg, tiny_data)
    assert checkpoint.load_payload(tmp_path / "a-best.pt")["step"] == 10


def test_a_tuners_eval_steps_and_prefix_scores(tmp_path, tiny_config, tiny_data, monkeypatch):
    """eval_steps replaces eval_interval (the last step always validates); with eval_chars the
    validations before the last score a prefix, are passed to the hooks, and never become the best."""
    from src.training.report import Reporter

    vocab, tr, va = tiny_data
    seen, logged = [], []

    class Recorder(Reporter):
        def log_metrics(self, metrics, step):
            if "val_chars_scored" in metrics:
                logged.append((step, metrics["val_chars_scored"]))

    import src.training.loop as train_module

    best_saves, save = [], train_module.checkpoint.save
    monkeypatch.setattr(
        train_module.checkpoint,
        "save",
        lambda path, model, vocab, step, extra=None, **kw: (
            best_saves.append(step) if path.name == "best.pt" else None,
            save(path, model, vocab, step, extra, **kw),
        ),
    )
    paths = TrainPaths(tmp_path / "best.pt", tmp_path / "last.pt")
    result = train(
        tiny_config,
        vocab,
        tr,
        va,
        paths,
        reporter=Recorder(),
        progress=False,
        log=lambda _: None,
        on_eval=[lambda step, loss: seen.append((step, loss))],
        eval_steps={4, 12},
        eval_chars=60,
    )
    assert best_saves == [30]
    assert [s for s, _ in seen] == [4, 12, 30] and seen == result.val_history
    assert logged == [(4, 60), (12, 60), (30, len(va))]
    assert result.best_step == 30  # the only whole-split score
    model, _, _ = checkpoint.load(paths.best)
    whole = evaluate.stream_loss(model, torch.from_numpy(va.astype(np.int64)), 4, 32)
    assert math.isclose(whole, seen[-1][1], rel_tol=1e-6)
