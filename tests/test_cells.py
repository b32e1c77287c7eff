"""Every cell of the registry (src.model.cells.CELLS) trains, resumes exactly, evaluates, samples
on both paths, saves and loads, and is served; a checkpoint of one cell is never loaded as another,
and one is loaded as the cell its spec names even where another cell's weights have its shapes."""

from __future__ import annotations

import pytest
import torch

from src.config.schema import config_from_dict
from src.generation.sampling import generate
from src.model import checkpoint
from src.model.cells import CELLS, cells_with_gates
from src.model.charrnn import CharRNN, ModelSpec, load_weights
from src.training import evaluate
from src.training.loop import train
from src.training.state import TrainPaths, plan_resume
from src.utils.errors import KarnnaError
from tests.conftest import Crash, CrashAt, tiny_params

QUIET = {"progress": False, "log": lambda _: None}


def _cfg(cell: str, **train):
    return config_from_dict(
        tiny_params(
            model={"cell": cell, "dropout": 0.3},
            train={
                "max_steps": 40,
                "checkpoint_interval": 10,
                "eval_interval": 20,
                "epochs": 5,
                "log_interval": 1,
                **train,
            },
        )
    )


@pytest.mark.parametrize("cell", list(CELLS))
def test_each_cell_trains_resumes_exactly_and_reloads(tmp_path, tiny_data, cell):
    vocab, tr, va = tiny_data
    cfg = _cfg(cell)
    full_paths = TrainPaths(tmp_path / "full-best.pt", tmp_path / "full-last.pt")
    full = train(cfg, vocab, tr, va, full_paths, **QUIET)
    assert full.train_history[-1][1] < full.train_history[0][1]  # it learns

    paths = TrainPaths(tmp_path / "best.pt", tmp_path / "last.pt")
    with pytest.raises(Crash):
        train(cfg, vocab, tr, va, paths, reporter=CrashAt(27), **QUIET)
    payload = plan_resume(cfg, tr, va, paths, log=lambda _: None)
    assert payload["resume"]["step"] == 20 and len(payload["resume"]["hidden"]) == CELLS[cell].states
    resumed = train(cfg, vocab, tr, va, paths, resume=payload, **QUIET)
    assert resumed.train_history == full.train_history and resumed.val_history == full.val_history

    model, _, saved = checkpoint.load(paths.best)
    assert model.spec.cell == cell and type(model.rnn) is CELLS[cell].module
    assert all(getattr(model.rnn, k) == v for k, v in CELLS[cell].options.items())  # e.g. nonlinearity
    # the evaluate stage's score of the best checkpoint is the validation loss training saw (fp32)
    loss = evaluate.stream_loss(model, torch.from_numpy(va.astype("int64")), cfg.evaluate.rows, cfg.evaluate.chunk_len)
    assert loss == pytest.approx(saved["val_loss"], rel=1e-5) and loss == pytest.approx(full.best_val_loss, rel=1e-5)


@pytest.mark.parametrize("cell", list(CELLS))
def test_each_cell_samples_the_same_on_the_fast_and_the_fused_path(tiny_data, cell, monkeypatch):
    vocab, _, _ = tiny_data
    torch.manual_seed(0)
    model = CharRNN(ModelSpec(vocab.size, 8, 16, 2, 0.0, cell)).eval()
    fast = generate(model, vocab, "The", 80, top_k=3, seed=11, gemv="torch")  # src.generation.stepper's Stepper
    monkeypatch.setattr("src.generation.sampling.STEPPER_BELOW", 0)  # every batch size on the fused torch call
    assert fast == generate(model, vocab, "The", 80, top_k=3, seed=11)


def test_a_gru_checkpoint_is_never_loaded_as_an_lstm(tmp_path, tiny_data):
    vocab, tr, va = tiny_data
    paths = TrainPaths(tmp_path / "best.pt", tmp_path / "last.pt")
    with pytest.raises(Crash):
        train(_cfg("gru"), vocab, tr, va, paths, reporter=CrashAt(15), **QUIET)
    gru_weights = checkpoint.load_payload(paths.last)["state_dict"]
    lstm = CharRNN(ModelSpec(vocab.size, 8, 32, 2, 0.3, "lstm"))
    with pytest.raises(KarnnaError, match=r"weights of a GRU network \(model.cell: gru\).*model.cell: lstm"):
        load_weights(lstm, gru_weights, "last.pt")
    # resuming it with model.cell: lstm says which value changed, instead of loading it
    with pytest.raises(KarnnaError, match=r"model.cell: 'gru' -> 'lstm'"):
        plan_resume(_cfg("lstm", resume="require"), tr, va, paths)
    messages = []
    assert plan_resume(_cfg("lstm"), tr, va, paths, log=messages.append) is None
    assert "model.cell" in messages[0]
    # a checkpoint whose spec was made to say lstm over GRU weights is refused the same way
    payload = checkpoint.load_payload(paths.last)
    payload["model"]["cell"] = "lstm"
    torch.save(payload, tmp_path / "mixed.pt")
    with pytest.raises(KarnnaError, match="GRU network"):
        checkpoint.load(tmp_path / "mixed.pt")


# Pairs of cells whose weights have the same shapes: only the checkpoint's spec tells them apart.
TWINS = [(a, b) for a in CELLS for b in CELLS if a != b and CELLS[a].gates == CELLS[b].gates]


@pytest.mark.parametrize("cell,twin", TWINS)
def test_a_checkpoint_loads_as_the_cell_its_spec_names(tmp_path, tiny_data, cell, twin):
    vocab, _, _ = tiny_data
    torch.manual_seed(2)
    model = CharRNN(ModelSpec(vocab.size, 8, 16, 2, 0.0, cell)).eval()
    checkpoint.save(tmp_path / "best.pt", model, vocab, 3)
    loaded, _, _ = checkpoint.load(tmp_path / "best.pt")
    idx = torch.randint(0, vocab.size, (2, 9), generator=torch.Generator().manual_seed(4))
    assert loaded.spec.cell == cell and torch.equal(loaded(idx)[0], model(idx)[0])
    # the same weights in the twin cell's model load as that cell: another function of them
    other = CharRNN(ModelSpec(vocab.size, 8, 16, 2, 0.0, twin)).eval()
    load_weights(other, model.state_dict(), "best.pt")
    assert not torch.equal(other(idx)[0], model(idx)[0])


def test_weights_of_another_cell_or_size_are_named_by_their_shapes(tiny_data):
    vocab, _, _ = tiny_data
    lstm = CharRNN(ModelSpec(vocab.size, 8, 32, 2, 0.0, "lstm"))
    narrow_gru = CharRNN(ModelSpec(vocab.size, 8, 16, 2, 0.0, "gru")).state_dict()  # 48 rows: 1.5 x 32
    with pytest.raises(KarnnaError, match=r"^x.pt: holds the weights of a GRU network \(model.cell: gru\)"):
        load_weights(lstm, narrow_gru, "x.pt")
    twins = " or ".join(cells_with_gates(CELLS["rnn"].gates))  # every cell with an RNN's weight shapes
    for name in cells_with_gates(CELLS["rnn"].gates):
        weights = CharRNN(ModelSpec(vocab.size, 8, 32, 2, 0.0, name)).state_dict()
        with pytest.raises(
            KarnnaError, match=rf"\(model.cell: {twins}\), .*has model.cell: lstm; set model.cell: {twins}"
        ):
            load_weights(lstm, weights, "x.pt")
    narrow_lstm = CharRNN(ModelSpec(vocab.size, 8, 16, 2, 0.0, "lstm")).state_dict()
    with pytest.raises(KarnnaError, match=r"^x.pt: the weights do not fit the model \(.*size mismatch"):
        load_weights(lstm, narrow_lstm, "x.pt")


def test_the_schema_and_the_search_space_take_every_cell_of_the_registry():
    from src.config.schema import TuneConfig, section_from_dict
    from src.tuning.space import check_space, distribution

    for cell in CELLS:
        assert config_from_dict(tiny_params(model={"cell": cell})).model.cell == cell
    listed = r" \| ".join(repr(name) for name in CELLS)
    with pytest.raises(KarnnaError, match=rf"model.cell: 'lsmt' is not one of {listed}$"):
        config_from_dict(tiny_params(model={"cell": "lsmt"}))
    space = section_from_dict(TuneConfig, {"space": {"model.cell": {"choices": list(CELLS)}}}, "params.yaml: tune")
    base = config_from_dict(tiny_params())
    check_space(space, base)
    assert distribution("model.cell", space.space["model.cell"], base).choices == tuple(CELLS)


@pytest.mark.parametrize("cell", list(CELLS))
def test_each_cell_trains_in_bf16_where_torch_runs_it_and_is_refused_where_not(tmp_path, tiny_data, cell):
    from src.training.device import cpu_bf16_fails, resolve_precision

    vocab, tr, va = tiny_data
    cfg = _cfg(cell, precision="bf16", max_steps=6, eval_interval=3, checkpoint_interval=3)
    if cpu_bf16_fails(cell):
        with pytest.raises(KarnnaError, match=rf"cannot run a bf16 {cell.upper()} on this CPU"):
            resolve_precision("bf16", torch.device("cpu"), cell)
        return
    result = train(cfg, vocab, tr, va, TrainPaths(tmp_path / "best.pt", tmp_path / "last.pt"), **QUIET)
    assert result.precision == "bf16" and len(result.train_history) == 6
    assert all(loss == loss for _, loss in result.train_history)  # no NaN


def test_a_checkpoint_from_before_cells_loads_as_an_lstm(tmp_path, tiny_data):
    """Checkpoints written before model.cell existed name no cell and call the layers `lstm.*`."""
    vocab, _, _ = tiny_data
    model = CharRNN(ModelSpec(vocab.size, 8, 16, 2, 0.0))
    checkpoint.save(tmp_path / "new.pt", model, vocab, 3)
    payload = checkpoint.load_payload(tmp_path / "new.pt")
    del payload["model"]["cell"]
    payload["state_dict"] = {k.replace("rnn.", "lstm.", 1): v for k, v in payload["state_dict"].items()}
    torch.save(payload, tmp_path / "old.pt")
    old, _, _ = checkpoint.load(tmp_path / "old.pt")
    assert old.spec.cell == "lstm"
    assert all(torch.equal(a, b) for a, b in zip(old.state_dict().values(), model.state_dict().values()))


@pytest.mark.parametrize("cell", list(CELLS))
def test_each_cell_is_served_by_the_mlflow_model(tmp_path, tiny_data, cell):
    import mlflow.pyfunc

    from src.serving import registry

    vocab, _, _ = tiny_data
    torch.manual_seed(1)
    model = CharRNN(ModelSpec(vocab.size, 8, 16, 2, 0.0, cell))
    checkpoint.save(tmp_path / "best.pt", model, vocab, 5)
    registry.save_served_model(tmp_path / "served", tmp_path / "best.pt", {"prime": "The", "length": 5})
    served = mlflow.pyfunc.load_model(str(tmp_path / "served"))
    (text,) = served.predict({"prime": "Happy", "length": 40, "seed": 3})
    assert text == generate(model.eval(), vocab, "Happy", 40, top_k=5, seed=3)[0]
