"""Weight averaging (train.ema_decay, train.ema_start; src/training/averaging.py): off changes
nothing, on validates and keeps in best.pt the average while training the raw weights, resumes
exactly, is searchable, and bad values stop in one line."""

from __future__ import annotations

import optuna
import pytest
import torch

from src.config.schema import TuneConfig, config_from_dict, section_from_dict, with_overrides
from src.model import checkpoint
from src.training import averaging, evaluate
from src.training.loop import train
from src.training.state import TrainPaths, fingerprint, plan_resume
from src.tuning import runner
from src.tuning import space as search
from src.tuning.storage import storage_for
from src.utils.errors import KarnnaError
from tests.conftest import Crash, CrashAt, tiny_params

QUIET = {"progress": False, "log": lambda _: None}
# The resume state's keys before averaging existed: an ema-off last.pt must keep exactly these.
RESUME_KEYS = {
    "fingerprint",
    "total_steps",
    "step",
    "epoch",
    "window",
    "chars_seen",
    "hidden",
    "optimizer",
    "scheduler",
    "rng",
    "best_val",
    "best_step",
    "train_history",
    "val_history",
    "samples",
}


def _cfg(model=None, **train):
    return config_from_dict(
        tiny_params(
            model={"dropout": 0.3, **(model or {})},
            train={"max_steps": 40, "checkpoint_interval": 10, "eval_interval": 20, "epochs": 5, **train},
        )
    )


def _run(tmp_path, name, cfg, tiny_data, **kw):
    vocab, tr, va = tiny_data
    paths = TrainPaths(tmp_path / f"{name}-best.pt", tmp_path / f"{name}-last.pt")
    return train(cfg, vocab, tr, va, paths, **QUIET, **kw), paths


def _weights(path):
    return checkpoint.load_payload(path)["state_dict"]


def _val(tiny_data):
    return torch.from_numpy(tiny_data[2].astype("int64"))


def test_the_average_is_the_bias_corrected_moving_average_of_the_weights_after_ema_start():
    model = torch.nn.Linear(3, 2)
    avg = averaging.WeightAverage(decay=0.9, start=2)
    seen = []
    for step in range(1, 8):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        avg.update(model, step)
        if step > 2:
            seen.append([p.detach().double().clone() for p in model.parameters()])
        if step == 2:
            assert avg.count == 0 and avg.shadow is None  # before ema_start: nothing averaged
        if step == 3:  # the first update is a copy
            assert all(torch.equal(a, p) for a, p in zip(avg.shadow, model.parameters()))
    n = len(seen)
    weights = [0.9 ** (n - 1 - i) for i in range(n)]
    for k, a in enumerate(avg.shadow):
        expected = sum(w * s[k] for w, s in zip(weights, seen)) / sum(weights)
        assert a.dtype == torch.float32
        torch.testing.assert_close(a.double(), expected, rtol=1e-5, atol=1e-6)
        assert not torch.equal(a, list(model.parameters())[k].detach())


def test_the_swap_puts_the_raw_weights_back_bit_for_bit_even_when_the_block_raises():
    model = torch.nn.LSTM(4, 5, 2)
    avg = averaging.WeightAverage(0.5, 0)
    for step in (1, 2, 3):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1.1).add_(0.01)
        avg.update(model, step)
    raw = [p.detach().clone() for p in model.parameters()]
    with averaging.swapped(avg, model):
        assert all(torch.equal(p, a) for p, a in zip(model.parameters(), avg.shadow))
        assert not all(torch.equal(p, r) for p, r in zip(model.parameters(), raw))
    assert all(torch.equal(p, r) for p, r in zip(model.parameters(), raw))
    with pytest.raises(RuntimeError), averaging.swapped(avg, model):
        raise RuntimeError("pruned")
    assert all(torch.equal(p, r) for p, r in zip(model.parameters(), raw))


def test_off_changes_nothing_and_keeps_the_resume_state_as_before(tmp_path, tiny_data):
    default, paths = _run(tmp_path, "default", _cfg(), tiny_data)
    # with averaging off, ema_start does nothing and is not part of the fingerprint
    other, other_paths = _run(tmp_path, "other", _cfg(ema_start=7), tiny_data)
    assert other.train_history == default.train_history and other.val_history == default.val_history
    assert all(torch.equal(a, b) for a, b in zip(_weights(paths.best).values(), _weights(other_paths.best).values()))
    resume = checkpoint.load_payload(paths.last)["resume"]
    assert set(resume) == RESUME_KEYS  # a last.pt from before averaging is what an ema-off run writes
    assert not any(k.startswith("train.ema") for k in resume["fingerprint"])


def test_an_ema_off_last_pt_from_before_averaging_resumes(tmp_path, tiny_data):
    vocab, tr, va = tiny_data
    cfg = _cfg()
    paths = TrainPaths(tmp_path / "best.pt", tmp_path / "last.pt")
    with pytest.raises(Crash):
        train(cfg, vocab, tr, va, paths, reporter=CrashAt(27), **QUIET)
    payload = checkpoint.load_payload(paths.last)
    # what the code before averaging wrote: the fingerprint of a config without the ema keys
    old = {k: v for k, v in fingerprint(cfg, tr, va).items() if not k.startswith("train.ema")}
    assert payload["resume"]["fingerprint"] == old
    assert plan_resume(cfg, tr, va, paths, log=lambda _: None)["resume"]["step"] == 20


def test_on_validates_and_keeps_the_average_while_training_the_raw_weights(tmp_path, tiny_data):
    off, off_paths = _run(tmp_path, "off", _cfg(), tiny_data)
    on, on_paths = _run(tmp_path, "on", _cfg(ema_decay=0.9, ema_start=5, eval_interval=40), tiny_data)
    # the raw weights train exactly as without averaging: the update and the swap touch nothing
    assert on.train_history == off.train_history
    raw_on, raw_off = _weights(on_paths.last), _weights(off_paths.last)
    assert all(torch.equal(raw_on[k], raw_off[k]) for k in raw_off)
    # best.pt (one validation, at the end) holds the average last.pt carries, not the raw weights
    shadow = checkpoint.load_payload(on_paths.last)["resume"]["average"]["shadow"]
    best = _weights(on_paths.best)
    assert all(torch.equal(b, a) for b, a in zip(best.values(), shadow))
    assert not all(torch.equal(best[k], raw_on[k]) for k in raw_on)
    # the validation scored the average: the evaluate stage's score of best.pt is the same
    model, _, saved = checkpoint.load(on_paths.best)
    cfg = _cfg()
    loss = evaluate.stream_loss(model, _val(tiny_data), cfg.evaluate.rows, cfg.evaluate.chunk_len)
    assert loss == pytest.approx(saved["val_loss"], rel=1e-6) and saved["val_loss"] == on.best_val_loss
    assert on.val_history[-1][1] != off.val_history[-1][1]


def test_validations_in_between_leave_the_training_bit_for_bit_as_it_was(tmp_path, tiny_data):
    once, once_paths = _run(tmp_path, "once", _cfg(ema_decay=0.9, eval_interval=40), tiny_data)
    often, often_paths = _run(tmp_path, "often", _cfg(ema_decay=0.9, eval_interval=3), tiny_data)
    assert often.train_history == once.train_history and len(often.val_history) == 14
    assert often.val_history[-1] == once.val_history[-1]
    a, b = _weights(once_paths.last), _weights(often_paths.last)
    assert all(torch.equal(a[k], b[k]) for k in a)


# The AWD-LSTM regularisers draw masks in training only: the swapped-in average is validated without them.
AWD = {"dropout_kind": "locked", "weight_drop": 0.2, "embed_dropout": 0.1}


# killed after the average began, before it, and with every regulariser on
@pytest.mark.parametrize("start, model", [(5, None), (25, None), (5, AWD)])
def test_a_killed_run_with_averaging_resumes_exactly(tmp_path, tiny_data, start, model):
    vocab, tr, va = tiny_data
    cfg = _cfg(model, ema_decay=0.8, ema_start=start, log_interval=1)
    full, full_paths = _run(tmp_path, "full", cfg, tiny_data)
    paths = TrainPaths(tmp_path / "best.pt", tmp_path / "last.pt")
    with pytest.raises(Crash):
        train(cfg, vocab, tr, va, paths, reporter=CrashAt(27), **QUIET)
    payload = plan_resume(cfg, tr, va, paths, log=lambda _: None)
    assert payload["resume"]["step"] == 20
    assert payload["resume"]["average"]["count"] == max(0, 20 - start)
    resumed = train(cfg, vocab, tr, va, paths, resume=payload, **QUIET)
    assert resumed.train_history == full.train_history and resumed.val_history == full.val_history
    ours, theirs = (checkpoint.load_payload(p.last)["resume"]["average"] for p in (paths, full_paths))
    assert ours["count"] == theirs["count"] == 40 - start
    assert all(torch.equal(a, b) for a, b in zip(ours["shadow"], theirs["shadow"]))
    a, b = _weights(paths.best), _weights(full_paths.best)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_turning_averaging_on_or_off_starts_fresh_instead_of_resuming(tmp_path, tiny_data):
    vocab, tr, va = tiny_data
    paths = TrainPaths(tmp_path / "best.pt", tmp_path / "last.pt")
    with pytest.raises(Crash):
        train(_cfg(), vocab, tr, va, paths, reporter=CrashAt(27), **QUIET)
    with pytest.raises(KarnnaError, match=r"train.ema_decay: None -> 0.9"):
        plan_resume(_cfg(ema_decay=0.9, resume="require"), tr, va, paths)


@pytest.mark.parametrize(
    "train_values, expected",
    [
        ({"ema_decay": -0.5}, "train.ema_decay: -0.5 is out of range; expected strictly between 0 and 1"),
        ({"ema_decay": 1.0}, "train.ema_decay: 1.0 is out of range; expected strictly between 0 and 1"),
        ({"ema_decay": 0.0}, "train.ema_decay: 0.0 is out of range; expected strictly between 0 and 1"),
        ({"ema_decay": 0.9, "ema_start": -1}, "train.ema_start: -1 is out of range; expected 0 or more"),
        (
            {"ema_decay": 0.9, "ema_start": 40},
            r"train.ema_start: 40 is out of range; expected below train.max_steps \(40\)",
        ),
    ],
)
def test_bad_values_stop_in_one_line_naming_the_key_and_the_fix(train_values, expected):
    with pytest.raises(KarnnaError, match=f"^params.yaml: {expected}") as info:
        _cfg(**train_values)
    assert "\n" not in str(info.value)


def test_averaging_that_starts_after_the_steps_the_epochs_give_stops_in_one_line(tmp_path, tiny_data):
    cfg = _cfg(ema_decay=0.9, ema_start=1000, max_steps=None, epochs=1)
    with pytest.raises(
        KarnnaError, match=r"^params.yaml: train.ema_start: 1000 is at or after the run's last step"
    ) as info:
        _run(tmp_path, "x", cfg, tiny_data)
    assert "\n" not in str(info.value) and "train.epochs" in str(info.value)


def test_the_decay_is_searchable_and_trials_validate_the_average(tmp_path, tiny_data):
    vocab, tr, va = tiny_data
    base = config_from_dict(tiny_params(model={"embedding_dim": 4}))
    space = section_from_dict(
        TuneConfig,
        {
            "study_name": "ema",
            "n_trials": 1,
            "budget_chars": 2000,
            "rungs": 2,
            "eval_chars": 60,
            "pruner": "none",
            "space": {"train.ema_decay": {"low": 0.5, "high": 0.9}, "train.ema_start": {"low": 0, "high": 10}},
            "enqueue": ["defaults"],
        },
        "tune",
    )
    search.check_space(space, base)
    dists = search.distributions(space, base)
    assert isinstance(dists["train.ema_decay"], optuna.distributions.FloatDistribution)  # null base: a float range
    assert isinstance(dists["train.ema_start"], optuna.distributions.IntDistribution)
    said = []
    assert search.enqueued(space, base, said.append) == []  # params.yaml's null decay lies outside the range
    assert "train.ema_decay=None outside tune.space" in said[0]
    study = runner.run_study(
        base,
        space,
        runner.StudyData(vocab, tr, va),
        storage_for(None, tmp_path / "j.log"),
        1,
        progress=False,
        log=said.append,
    )
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.COMPLETE and 0.5 <= trial.params["train.ema_decay"] <= 0.9
    steps = search.trial_steps(base, space.budget_chars)
    cfg = search.trial_config(base, trial.params, steps)
    alone, _ = _run(tmp_path, "alone", cfg, tiny_data)
    off, _ = _run(tmp_path, "off", with_overrides(cfg, {"train.ema_decay": None}), tiny_data)
    assert trial.value == alone.val_history[-1][1] != off.val_history[-1][1]


def test_a_last_pt_loaded_to_sample_is_the_average(tmp_path, tiny_data):
    """python -m src.sample --checkpoint models/last.pt (or --run ... --which last) samples what the
    run validates: the average; training resumes from the raw weights beside it."""
    _, paths = _run(tmp_path, "on", _cfg(ema_decay=0.9, ema_start=5, eval_interval=40), tiny_data)
    payload = checkpoint.load_payload(paths.last)
    shadow = payload["resume"]["average"]["shadow"]
    model, _, _ = checkpoint.load(paths.last)
    assert all(torch.equal(p, a) for p, a in zip(model.parameters(), shadow))
    assert not all(torch.equal(p, r) for p, r in zip(model.parameters(), payload["state_dict"].values()))
    off, off_paths = _run(tmp_path, "off", _cfg(eval_interval=40), tiny_data)
    model, _, _ = checkpoint.load(off_paths.last)  # without averaging: the weights themselves
    raw = checkpoint.load_payload(off_paths.last)["state_dict"]
    assert all(torch.equal(p, r) for p, r in zip(model.state_dict().values(), raw.values()))
