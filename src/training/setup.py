"""A run's starting point: the model, its own random generators, Adam and the schedule.

What src.training.loop.train() builds before the first step (and what a resume then overwrites from the
checkpoint): kept apart from the loop so that the tuner and the benchmarks build the same model
the same way.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch

from src.config.schema import Config
from src.data.vocab import Vocab
from src.model.charrnn import CharRNN, ModelSpec
from src.training import averaging
from src.training.state import TrainState


def lr_factor(step: int, total_steps: int, warmup_steps: int, decay: str, min_ratio: float) -> float:
    """Multiplier of train.lr at `step`: linear warmup, then constant or cosine down to min_lr."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if decay == "none":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_model(cfg: Config, vocab: Vocab, generator: Optional[torch.Generator] = None) -> CharRNN:
    """The network, initialised from `generator` (torch's default initialisation, drawn from
    the training's own generator rather than the process-wide one) when given."""
    m = cfg.model
    spec = ModelSpec(
        vocab.size,
        m.embedding_dim,
        m.lstm_size,
        m.num_layers,
        m.dropout,
        m.cell,
        dropout_kind=m.dropout_kind,
        weight_drop=m.weight_drop,
        embed_dropout=m.embed_dropout,
    )
    model = CharRNN(spec)
    if generator is not None:
        init_weights(model, generator)
    return model


@torch.no_grad()
def init_weights(model: CharRNN, generator: torch.Generator) -> None:
    """What nn.Embedding, nn.LSTM / GRU / RNN and nn.Linear's reset_parameters draw, from `generator`."""
    model.embed.weight.normal_(0.0, 1.0, generator=generator)
    bound = 1.0 / math.sqrt(model.spec.lstm_size)
    for weight in model.rnn.parameters():
        weight.uniform_(-bound, bound, generator=generator)
    torch.nn.init.kaiming_uniform_(model.head.weight, a=math.sqrt(5), generator=generator)
    # the head's fan-in is lstm_size too: the same bound for its bias
    model.head.bias.uniform_(-bound, bound, generator=generator)


def generators(seed: int, device: torch.device) -> tuple[torch.Generator, torch.Generator]:
    """A training's own random streams: (initialisation, on the CPU; dropout, on `device`).

    Nothing in a training draws from the process-wide generators, so trainings in threads side
    by side (`python -m src.tune --n-jobs 2`) give each the numbers it gives alone."""
    init = torch.Generator().manual_seed(seed)
    drop = torch.Generator(device=device).manual_seed(seed + 1)
    return init, drop


def new_state(
    cfg: Config, vocab: Vocab, total_steps: int, fp: dict[str, Any], device: torch.device, run_id: Optional[str]
) -> TrainState:
    """A fresh run's state: the model initialised from the training's own generators."""
    t = cfg.train
    init_gen, model_gen = generators(t.seed, device)
    model = build_model(cfg, vocab, init_gen).to(device)
    model.generator = model_gen
    opt = torch.optim.Adam(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    min_ratio = t.min_lr / t.lr
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, total_steps, t.warmup_steps, t.lr_decay, min_ratio)
    )
    average = averaging.make(t.ema_decay, t.ema_start, total_steps)
    return TrainState(model, opt, sched, total_steps, fp, run_id=run_id, average=average)
