"""Weight averaging: an exponential moving average of the weights (train.ema_decay, train.ema_start).

A float32 shadow of every parameter is updated after each optimiser step once the step passes
train.ema_start; until then the average is the weights themselves (nothing is stored). Validation
swaps the average in and the raw weights back (`swapped`), so what is validated, what best.pt
holds (the evaluate, sample and register stages' model) and what the validations' samples come
from are the averaged weights, while training always steps the raw ones. Buffers are not
averaged: the swapped-in model keeps the current ones (CharRNN has none). docs/DESIGN.md,
"Weight averaging".

The decay is bias-corrected as Adam corrects its moments: after n updates the average is
    sum_{i<=n} d^(n-i) w_i / sum_{i<=n} d^(n-i),
the exponentially weighted mean of exactly the weights since ema_start, kept in place as
avg <- b_n avg + (1 - b_n) w with b_n = d (1 - d^(n-1)) / (1 - d^n) (b_1 = 0: the first update is
a copy). Not the (1 + n) / (10 + n) warm-up: that caps the decay at 0.998 until ~9 / (1 - d)
updates, so over the default 5,000 steps every decay from 0.998 up would average the same way and a
tune.space range such as 0.99..0.9999 would search nothing at its top. With the correction the
decay is d from the start, and the weights at ema_start weigh no more than those after them.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Optional

import torch

from src.utils.errors import KarnnaError


class WeightAverage:
    """The average of a model's parameters (in model.parameters() order) and its update count."""

    def __init__(self, decay: float, start: int):
        self.decay, self.start = decay, start
        self.count = 0  # updates so far: optimiser steps after `start`
        self.shadow: Optional[list[torch.Tensor]] = None  # None until the first update

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        """Fold in the weights after optimiser step `step` (no host sync: stays on the device)."""
        if step <= self.start:
            return
        self.count += 1
        weights = [p.detach().float() for p in model.parameters()]
        if self.shadow is None or self.count == 1:
            self.shadow = [w.clone() for w in weights]
            return
        d, n = self.decay, self.count
        beta = d * (1.0 - d ** (n - 1)) / (1.0 - d**n)
        torch._foreach_lerp_(self.shadow, weights, 1.0 - beta)

    def to_payload(self) -> dict[str, Any]:
        """What models/last.pt keeps of it, so a resumed run goes on with the same average."""
        return {"count": self.count, "shadow": None if self.shadow is None else [t.cpu() for t in self.shadow]}

    def load_payload(self, payload: dict[str, Any], device: torch.device) -> None:
        self.count = payload["count"]
        self.shadow = None if payload["shadow"] is None else [t.to(device) for t in payload["shadow"]]


def make(decay: Optional[float], start: int, total_steps: int) -> Optional[WeightAverage]:
    """The run's average, or None when train.ema_decay is null (off)."""
    if decay is None:
        return None
    if start >= total_steps:
        # The schema checks train.max_steps; here the epochs may give fewer steps than it.
        raise KarnnaError(
            f"params.yaml: train.ema_start: {start} is at or after the run's last step ({total_steps}, "
            "from train.epochs and train.max_steps): nothing would be averaged; lower train.ema_start "
            "or set train.ema_decay: null"
        )
    return WeightAverage(decay, start)


def update(average: Optional[WeightAverage], model: torch.nn.Module, step: int) -> None:
    if average is not None:
        average.update(model, step)


@contextmanager
def swapped(average: Optional[WeightAverage], model: torch.nn.Module) -> Iterator[None]:
    """The averaged weights in `model` inside the block, the raw ones put back bit for bit after
    (also when the block raises: a tuner's pruning). Copied in place, so the optimiser's references
    and cuDNN's flattened weights stay valid. No average yet: the weights are the average."""
    if average is None or average.shadow is None:
        yield
        return
    params = list(model.parameters())
    with torch.no_grad():
        raw = [p.detach().clone() for p in params]
        for p, a in zip(params, average.shadow):
            p.copy_(a)
    try:
        yield
    finally:
        with torch.no_grad():
            for p, r in zip(params, raw):
                p.copy_(r)
