"""The AWD-LSTM regularisers (model.dropout_kind: locked, model.weight_drop, model.embed_dropout):
off, the model computes and draws exactly what it did without them; on, each masks what it says,
in training only, from the training's own generator (so a resumed run stays exact)."""

from __future__ import annotations

import math

import optuna
import pytest
import torch
import torch.nn.functional as F

from src.config.schema import TuneConfig, config_from_dict, section_from_dict, with_overrides
from src.model import checkpoint
from src.model.charrnn import CharRNN, ModelSpec
from src.model.masks import dropout_mask, locked_mask, row_mask
from src.training.loop import train
from src.training.state import TrainPaths, plan_resume
from src.tuning import space as search
from src.utils.errors import KarnnaError
from tests.conftest import Crash, CrashAt, tiny_params

V, E, H = 20, 8, 16
ALL_ON = {"dropout_kind": "locked", "weight_drop": 0.4, "embed_dropout": 0.2}


def _model(layers: int = 2, dropout: float = 0.0, cell: str = "lstm", **regularisers) -> CharRNN:
    """A model with the same weights and the same mask generator for the same arguments."""
    torch.manual_seed(0)
    model = CharRNN(ModelSpec(V, E, H, layers, dropout, cell, **regularisers)).train()
    model.generator = torch.Generator().manual_seed(7)
    return model


def _idx(batch: int = 3, steps: int = 11) -> torch.Tensor:
    return torch.randint(0, V, (batch, steps), generator=torch.Generator().manual_seed(1))


def _loss_and_grads(model: CharRNN, idx: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad()
    logits, _ = model(idx)
    loss = F.cross_entropy(logits.flatten(0, 1), torch.roll(idx, -1, dims=1).flatten())
    loss.backward()
    return logits.detach(), [p.grad.clone() for p in model.parameters()]


def _before_the_regularisers(model: CharRNN, idx: torch.Tensor) -> torch.Tensor:
    """The training forward as the model computed it before the regularisers existed: embedding,
    one fused call per layer with the module's weights, dropout_mask after each layer."""
    x = model.embed(idx.long().t())
    hidden = model.init_hidden(idx.size(0))
    for n in range(model.spec.num_layers):
        state = tuple(s[n : n + 1] for s in hidden)
        x, _ = model.cell.run_layer(x, state, model.layer_weights(n), True)
        x = x * dropout_mask(x.shape, model.spec.dropout, x.dtype, x.device, model.generator)
    return model.head(x).transpose(0, 1)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_off_is_the_model_without_them_bit_for_bit(cell):
    idx = _idx()
    default = _model(dropout=0.3, cell=cell)
    explicit = _model(dropout=0.3, cell=cell, dropout_kind="standard", weight_drop=0.0, embed_dropout=0.0)
    logits, grads = _loss_and_grads(default, idx)
    logits2, grads2 = _loss_and_grads(explicit, idx)
    assert torch.equal(logits, logits2) and all(torch.equal(a, b) for a, b in zip(grads, grads2))
    assert torch.equal(default.generator.get_state(), explicit.generator.get_state())
    # and the same masks, drawn in the same order, as the code before them
    reference = _model(dropout=0.3, cell=cell)
    assert torch.equal(logits, _before_the_regularisers(reference, idx).detach())
    assert torch.equal(reference.generator.get_state(), default.generator.get_state())


def test_locked_mask_is_one_per_row_and_constant_along_time():
    x = torch.ones(50, 6, 40)
    mask = locked_mask(x, 0.5, torch.Generator().manual_seed(0))
    assert mask.shape == (1, 6, 40)
    assert set(mask.unique().tolist()) == {0.0, 2.0}


def _head_input(model: CharRNN, idx: torch.Tensor) -> torch.Tensor:
    seen = []
    handle = model.head.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach()))
    model(idx)
    handle.remove()
    return seen[0]  # (T, B, H)


@pytest.mark.parametrize("layers", [1, 2])
def test_locked_dropout_drops_the_same_units_at_every_step(layers):
    idx = _idx(steps=30)
    dropped = _head_input(_model(layers, dropout=0.5, dropout_kind="locked"), idx) == 0
    assert dropped.any() and (dropped == dropped[:1]).all()
    assert 0.35 < dropped[0].float().mean() < 0.65
    # standard dropout draws a fresh mask per step: the same check tells them apart
    fresh = _head_input(_model(layers, dropout=0.5), idx) == 0
    assert not (fresh == fresh[:1]).all()


def test_weight_drop_masks_a_copy_of_weight_hh_only():
    idx = _idx()
    model = _model(weight_drop=0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    draws = torch.Generator().manual_seed(7)
    _loss_and_grads(model, idx)
    for k, v in model.state_dict().items():  # the parameters themselves are untouched
        assert torch.equal(v, before[k]), k
    # the gradient reaches the raw W_hh, zero exactly where its mask dropped a weight
    for n in range(2):
        w_ih, w_hh, b_ih, b_hh = (w.grad for w in model.layer_weights(n))
        dropped = (w_hh == 0).float().mean()
        assert 0.4 < dropped < 0.6, dropped
        assert (w_ih == 0).float().mean() < 0.05 and (b_hh == 0).float().mean() < 0.05
        # one (4H, H) mask per layer and forward call, nothing else drawn
        dropout_mask(model.rnn.weight_hh_l0.shape, 0.5, torch.float32, torch.device("cpu"), draws)
    assert torch.equal(draws.get_state(), model.generator.get_state())


def test_weight_drop_acts_through_weight_hh_alone():
    """With every W_hh zero, masking it changes nothing: the other weights are never masked."""
    idx = _idx()
    models = [_model(), _model(weight_drop=0.5)]
    for model in models:
        with torch.no_grad():
            for n in range(2):
                model.layer_weights(n)[1].zero_()
    assert torch.equal(models[0](idx)[0], models[1](idx)[0])
    assert not torch.equal(_model()(idx)[0], _model(weight_drop=0.5)(idx)[0])


def test_embed_dropout_zeroes_whole_characters():
    model = _model(embed_dropout=0.5)
    idx = torch.arange(V).repeat(5, 3)  # every character at many positions
    x = model._embed(idx.t())  # (T, B, E)
    table = model.embed.weight.detach()
    dropped = (x == 0).all(dim=-1)
    assert dropped.any() and not dropped.all()
    for char in range(V):
        rows = x[idx.t() == char]
        assert (rows == 0).all() or torch.equal(rows, (table[char] * 2).expand_as(rows)), char
    assert row_mask(table, 0.5).shape == (V, 1)
    # a dropped character gets no gradient
    logits, _ = model(idx)
    logits.sum().backward()
    grad_zero = (model.embed.weight.grad == 0).all(dim=1)
    assert grad_zero.any() and not grad_zero.all()


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_eval_mode_ignores_them(cell):
    idx = _idx()
    on, off = _model(dropout=0.3, cell=cell, **ALL_ON).eval(), _model(dropout=0.3, cell=cell).eval()
    state = on.generator.get_state()
    with torch.no_grad():
        assert torch.equal(on(idx)[0], off(idx)[0])
    assert torch.equal(on.generator.get_state(), state)  # nothing drawn


def _cfg(model: dict, **train):
    t = {"max_steps": 60, "checkpoint_interval": 10, "eval_interval": 20, "epochs": 5, "log_interval": 1}
    return config_from_dict(tiny_params(train={**t, **train}, model={"dropout": 0.3, **model}))


@pytest.mark.parametrize(
    "model",
    [{"dropout_kind": "locked"}, {"weight_drop": 0.3}, {"embed_dropout": 0.1}, ALL_ON],
    ids=["locked", "weight_drop", "embed_dropout", "all"],
)
def test_training_with_each_runs_and_learns(tmp_path, tiny_data, model):
    vocab, tr, va = tiny_data
    result = train(_cfg(model, max_steps=30), vocab, tr, va, _paths(tmp_path, "r"), progress=False, log=lambda _: None)
    losses = [loss for _, loss in result.train_history]
    assert all(math.isfinite(x) for x in losses) and math.isfinite(result.best_val_loss)
    assert losses[-1] < losses[0]
    loaded, _, payload = checkpoint.load(tmp_path / "r-best.pt")  # weights_only=True, spec included
    assert {k: payload["model"][k] for k in model} == model and loaded.spec == ModelSpec(**payload["model"])


def _paths(tmp_path, name):
    return TrainPaths(tmp_path / f"{name}-best.pt", tmp_path / f"{name}-last.pt")


def test_resume_with_them_on_gives_the_same_numbers(tmp_path, tiny_data):
    vocab, tr, va = tiny_data
    cfg = _cfg(ALL_ON)
    full = train(cfg, vocab, tr, va, _paths(tmp_path, "full"), progress=False, log=lambda _: None)
    paths = _paths(tmp_path, "crashed")
    with pytest.raises(Crash):
        train(cfg, vocab, tr, va, paths, reporter=CrashAt(27), progress=False, log=lambda _: None)
    payload = plan_resume(cfg, tr, va, paths, log=lambda _: None)
    assert payload is not None and payload["resume"]["step"] == 20
    resumed = train(cfg, vocab, tr, va, paths, progress=False, log=lambda _: None, resume=payload)
    assert resumed.train_history == full.train_history and resumed.val_history == full.val_history
    a, b = checkpoint.load_payload(paths.last), checkpoint.load_payload(_paths(tmp_path, "full").last)
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k


def test_a_last_pt_from_before_them_resumes_with_them_off(tmp_path, tiny_data):
    """A run killed before the keys existed resumes after: off, they are not in the fingerprint;
    on, they are, so a last.pt made with them off is not resumed with them on."""
    vocab, tr, va = tiny_data
    cfg = _cfg({})
    paths = _paths(tmp_path, "old")
    with pytest.raises(Crash):
        train(cfg, vocab, tr, va, paths, reporter=CrashAt(27), progress=False, log=lambda _: None)
    payload = checkpoint.load_payload(paths.last)
    assert not set(payload["resume"]["fingerprint"]) & {f"model.{k}" for k in ALL_ON}
    assert plan_resume(cfg, tr, va, paths, log=lambda _: None)["resume"]["step"] == 20
    for key, value in ALL_ON.items():
        assert plan_resume(_cfg({key: value}), tr, va, paths, log=lambda _: None) is None, key


def test_a_checkpoint_from_before_them_loads_with_them_off(tmp_path):
    model = _model(dropout=0.3)
    path = tmp_path / "old.pt"
    checkpoint.save(path, model, _vocab(), step=1)
    payload = torch.load(path, weights_only=True)
    for key in ALL_ON:
        del payload["model"][key]
    torch.save(payload, path)
    loaded, _, _ = checkpoint.load(path)
    assert (loaded.spec.dropout_kind, loaded.spec.weight_drop, loaded.spec.embed_dropout) == ("standard", 0.0, 0.0)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


def _vocab():
    from src.data.vocab import build_vocab

    return build_vocab("".join(chr(ord("a") + i) for i in range(V - 1)) + "\n", "lf")


@pytest.mark.parametrize(
    "model, expected",
    [
        ({"weight_drop": 1.0}, r"model\.weight_drop: 1\.0 is out of range; expected in \[0, 1\) \(0\.0 is off"),
        ({"weight_drop": -0.1}, r"model\.weight_drop: -0\.1 is out of range; expected in \[0, 1\)"),
        ({"embed_dropout": 1.0}, r"model\.embed_dropout: 1\.0 is out of range; expected in \[0, 1\)"),
        ({"embed_dropout": "0.1"}, r"model\.embed_dropout: expected a number, got string"),
        ({"dropout_kind": "variational"}, r"model\.dropout_kind: 'variational' is not one of 'standard' \| 'locked'"),
    ],
)
def test_bad_values_name_the_key_and_the_fix(model, expected):
    with pytest.raises(KarnnaError, match=expected) as info:
        config_from_dict({"model": model}, "params.yaml")
    assert str(info.value).startswith("params.yaml: model.") and "\n" not in str(info.value)


def test_a_checkpoint_spec_with_an_unknown_dropout_kind_is_refused():
    with pytest.raises(KarnnaError, match=r"model\.dropout_kind 'variational' is not one of standard, locked"):
        CharRNN(ModelSpec(V, E, H, 1, 0.0, dropout_kind="variational"))


def test_tune_space_searches_them_with_no_other_change():
    base = config_from_dict(tiny_params())
    table = {
        "model.weight_drop": {"low": 0.0, "high": 0.5},
        "model.embed_dropout": {"low": 0.0, "high": 0.2},
        "model.dropout_kind": {"choices": ["standard", "locked"]},
    }
    space = section_from_dict(TuneConfig, {"space": table, "enqueue": ["defaults"]}, "tune")
    search.check_space(space, base)
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    params = search.suggest(trial, space, base)
    assert set(params) == set(table) and params["model.dropout_kind"] in ("standard", "locked")
    cfg = with_overrides(base, params, "trial")
    assert cfg.model.weight_drop == params["model.weight_drop"] and 0.0 <= cfg.model.weight_drop <= 0.5
    assert [p for _, p in search.enqueued(space, base, print)] == [
        {"model.weight_drop": 0.0, "model.embed_dropout": 0.0, "model.dropout_kind": "standard"}
    ]
    bad = section_from_dict(TuneConfig, {"space": {"model.weight_drop": {"low": 0.0, "high": 1.0}}}, "tune")
    with pytest.raises(KarnnaError, match=r"tune\.space\.model\.weight_drop: 1\.0 is not a valid model\.weight_drop"):
        search.check_space(bad, base)
