"""The search space as one table, and the training budget of a trial as a ladder of rungs.

`tune.space` in params.yaml maps a params.yaml key to a Dimension (choices, or low..high, on a
log scale or not). Everything about a dimension is derived from that one entry: the Optuna
distribution `suggest` draws from (integer when the param is an integer), the check of its
values against the param's own bounds in the schema, and the enqueued first trials (the seed
notebook's recipe, params.yaml's own values). Adding a dimension is one entry in params.yaml.

A trial trains for the pipeline's own budget (`train.max_steps` x batch x seq_len, or
`tune.budget_chars`) with the pipeline's own schedule, and is validated on a geometric ladder
(budget / 9, budget / 3, budget with 3 rungs): the pruner compares trials at equal rungs, and a
trial that reaches the top rung has trained exactly as `dvc exp run -S ...` will train it.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from src.config.schema import Config, Dimension, TuneConfig, with_overrides
from src.data import batches
from src.utils.errors import KarnnaError

# The seed notebook's configuration (2x512 LSTM, dropout 0.5, Adam at 1e-3, 100-character windows).
SEED_RECIPE = {
    "model.cell": "lstm",
    "model.lstm_size": 512,
    "model.num_layers": 2,
    "model.dropout": 0.5,
    "train.lr": 1.0e-3,
    "train.seq_len": 100,
}

# Set by every trial itself (the budget and the ladder): searching them would break the budget.
NOT_SEARCHABLE = ("train.max_steps", "train.epochs", "train.eval_interval", "train.checkpoint_interval", "train.resume")


def distribution(name: str, dim: Dimension, base: Config) -> BaseDistribution:
    """The Optuna distribution of one table entry; integer when the base value is an integer."""
    if dim.choices is not None:
        return CategoricalDistribution(dim.choices)
    current = base.flat().get(name)
    if isinstance(current, int) and not isinstance(current, bool):
        return IntDistribution(int(dim.low), int(dim.high), log=dim.log)
    return FloatDistribution(float(dim.low), float(dim.high), log=dim.log)


def distributions(space: TuneConfig, base: Config) -> dict[str, BaseDistribution]:
    return {name: distribution(name, dim, base) for name, dim in space.space.items()}


def suggest(trial: optuna.Trial, space: TuneConfig, base: Config) -> dict[str, Any]:
    """The trial's params under their params.yaml names, one per table entry."""
    params = {}
    for name, dist in distributions(space, base).items():
        if isinstance(dist, CategoricalDistribution):
            params[name] = trial.suggest_categorical(name, dist.choices)
        elif isinstance(dist, IntDistribution):
            params[name] = trial.suggest_int(name, dist.low, dist.high, log=dist.log)
        else:
            params[name] = trial.suggest_float(name, dist.low, dist.high, log=dist.log)
    return params


def check_space(space: TuneConfig, base: Config, source: str = "params.yaml") -> None:
    """Every entry names a params.yaml key a trial may change, and every value it can take is
    valid for that key (the schema's own bounds: dropout below 1, lstm_size positive, ...)."""
    if not space.space:
        raise KarnnaError(
            f"{source}: tune.space is empty; add at least one dimension, e.g. model.dropout: {{low: 0.0, high: 0.6}}"
        )
    known = base.flat()
    for name, dim in space.space.items():
        where = f"{source}: tune.space.{name}"
        if name not in known:
            raise KarnnaError(f"{where}: not a params.yaml key; use a dotted key such as model.lstm_size")
        if name in NOT_SEARCHABLE:
            raise KarnnaError(
                f"{where}: set by every trial (the budget and its ladder); "
                "search the budget with tune.budget_chars instead"
            )
        dist = distribution(name, dim, base)
        if isinstance(dist, IntDistribution) and (dim.low != dist.low or dim.high != dist.high):
            raise KarnnaError(f"{where}: {name} is an integer; write integer low and high")
        values = dim.choices if dim.choices is not None else [dim.low, dim.high]
        for value in values:
            try:
                with_overrides(base, {name: value}, "trial")
            except KarnnaError as exc:
                raise KarnnaError(f"{where}: {value!r} is not a valid {name} ({str(exc).split(': ', 2)[-1]})") from None


def enqueued(space: TuneConfig, base: Config, log: Callable[[str], None]) -> list[tuple[str, dict[str, Any]]]:
    """The first trials (label, params): the seed recipe and params.yaml's values, each restricted
    to the searched dimensions, and left out (saying why) when one of them lies outside the space."""
    sources = {"seed_recipe": {**base.flat(), **SEED_RECIPE}, "defaults": base.flat()}
    dists = distributions(space, base)
    trials = []
    for label in space.enqueue:
        params = {name: sources[label][name] for name in dists}
        outside = [f"{n}={v!r}" for n, v in params.items() if not _inside(dists[n], v)]
        if outside:
            log(f"not enqueuing the {label.replace('_', ' ')}: {', '.join(outside)} outside tune.space")
            continue
        trials.append((label, params))
    return trials


def _inside(dist: BaseDistribution, value: Any) -> bool:
    if isinstance(dist, CategoricalDistribution):
        return any(type(value) is type(c) and value == c for c in dist.choices)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return dist.low <= value <= dist.high


def budget_chars(space: TuneConfig, base: Config) -> int:
    """Training characters of a full trial: tune.budget_chars, else the pipeline's own budget."""
    if space.budget_chars is not None:
        return space.budget_chars
    t = base.train
    if t.max_steps is None:
        raise KarnnaError(
            "params.yaml: train.max_steps is null, so the pipeline's budget depends on the epochs; "
            "set tune.budget_chars (training characters per trial) or train.max_steps"
        )
    return t.max_steps * t.batch_size * t.seq_len


def trial_steps(cfg: Config, budget: int) -> int:
    """Optimiser steps of a full trial with this config's batch shape."""
    chars_per_step = cfg.train.batch_size * cfg.train.seq_len
    if budget < chars_per_step:
        raise KarnnaError(
            f"tune.budget_chars: {budget:,} characters is smaller than one batch "
            f"(train.batch_size {cfg.train.batch_size} x train.seq_len {cfg.train.seq_len} = {chars_per_step:,}); "
            "raise it or use smaller batches"
        )
    return budget // chars_per_step


def ladder(steps: int, rungs: int, reduction_factor: int) -> dict[int, int]:
    """{training step: Optuna step} of the validations: steps / rf^(rungs-1), ..., steps / rf, steps.

    The Optuna step is the rung's resource in units of the lowest rung (1, rf, rf^2, ...), which
    is what successive halving and Hyperband expect; rungs that round to the same training step
    (tiny budgets) collapse into the higher one."""
    ladder: dict[int, int] = {}
    for k in range(rungs):
        at = max(1, round(steps / reduction_factor ** (rungs - 1 - k)))
        ladder[at] = reduction_factor**k
    return ladder


def pipeline_overrides(base: Config, params: dict[str, Any], steps: int, train_chars: int) -> dict[str, Any]:
    """What `dvc exp run -S` must set so the pipeline trains exactly as the trial did: the trial's
    params, and the budget only when it differs from params.yaml's."""
    cfg = with_overrides(base, params, "trial")
    overrides = dict(params)
    if steps != cfg.train.max_steps:
        overrides["train.max_steps"] = steps
    per_epoch = max(1, batches.num_windows(train_chars // cfg.train.batch_size, cfg.train.seq_len))
    if cfg.train.epochs * per_epoch < steps:
        overrides["train.epochs"] = math.ceil(steps / per_epoch)
    return overrides


def trial_config(base: Config, params: dict[str, Any], steps: int) -> Config:
    """The base config with the trial's params and the budget applied (as the pipeline would run it)."""
    cfg = with_overrides(base, params, "trial")
    return with_overrides(
        cfg,
        {
            "train.max_steps": steps,
            "train.epochs": max(cfg.train.epochs, steps),  # the budget, not the epochs, ends a trial
            "train.eval_interval": steps,  # the ladder decides (train(eval_steps=...)); no effect on the numbers
            "train.checkpoint_interval": steps,
            "train.resume": "never",
        },
        "trial",
    )


def make_pruner(name: str, space: TuneConfig) -> optuna.pruners.BasePruner:
    """Pruners that compare trials at the rungs of the ladder (Optuna steps 1, rf, rf^2, ...)."""
    rf = space.reduction_factor
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=rf, min_early_stopping_rate=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=rf ** (space.rungs - 1), reduction_factor=rf)
    if name == "median":
        # Let a few trials finish before comparing.
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
    return optuna.pruners.NopPruner()
