"""The study's sampler, seeded per trial: distinct suggestions in every process of a study.

A sampler seeded once per process draws the same first suggestions in every process that starts
with that seed: two workers on one study, or a rerun that adds trials, repeated each other's
trials. Trial numbers are unique in a study's storage, so each trial gets a TPE sampler of its
own seeded from (tune.seed, trial number): processes started together, one after another or on
several machines draw different suggestions, and a study run by one process is reproducible from
tune.seed. The sampler still reads the whole study's history (TPE keeps nothing between trials
but caches), so the search learns from every worker's trials.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Optional, Sequence

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState


def trial_seed(seed: int, number: int) -> int:
    """A seed for trial `number` of a study seeded `seed` (any int, negative too)."""
    return int(np.random.SeedSequence([seed % 2**64, number]).generate_state(1)[0])


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """Delegates each trial to `make(seed)`, built for that trial with trial_seed(seed, number).

    Thread-safe for `n_jobs` threads: each running trial has its own sampler."""

    def __init__(self, seed: int, make: Optional[Callable[[int], optuna.samplers.BaseSampler]] = None):
        self.seed = seed
        self.make = make or (lambda s: optuna.samplers.TPESampler(seed=s))
        self._samplers: dict[int, optuna.samplers.BaseSampler] = {}
        self._lock = threading.Lock()

    def _for(self, trial: FrozenTrial) -> optuna.samplers.BaseSampler:
        with self._lock:
            sampler = self._samplers.get(trial.number)
            if sampler is None:
                sampler = self._samplers[trial.number] = self.make(trial_seed(self.seed, trial.number))
            return sampler

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._for(trial).before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Optional[Sequence[float]]
    ) -> None:
        try:
            self._for(trial).after_trial(study, trial, state, values)
        finally:
            with self._lock:
                self._samplers.pop(trial.number, None)

    def reseed_rng(self) -> None:
        """Nothing to do: Optuna calls it for each of `n_jobs` threads so that they do not share
        one generator; here every trial has its own."""
