"""What a training carries from step to step, and how it is saved and resumed.

`TrainState` holds it and converts it to a checkpoint payload and back (models/last.pt);
`plan_resume` decides, per train.resume, whether a last.pt is continued: only when it is
unfinished and was made with the same params and data (its fingerprint). docs/DESIGN.md,
"Resume after a crash".
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from src.config.schema import Config
from src.model import checkpoint
from src.model.charrnn import CharRNN, State, load_weights
from src.training.averaging import WeightAverage
from src.utils.errors import KarnnaError

# Params that change how often things are printed or saved, not the numbers a run produces.
NOT_IN_FINGERPRINT = {
    "train.log_interval",
    "train.checkpoint_interval",
    "train.resume",
    "train.num_threads",
    "train.sample_chars",
}
# Keys added after last.pt files were written, at the value that computes what runs did before them.
OFF_VALUES = {
    "model.dropout_kind": "standard",
    "model.weight_drop": 0.0,
    "model.embed_dropout": 0.0,
    "train.ema_decay": None,
}


@dataclass
class TrainPaths:
    best: Path
    last: Path


def fingerprint(cfg: Config, train_ids: np.ndarray, val_ids: np.ndarray) -> dict[str, Any]:
    """What must be equal for a checkpoint to be resumed: the params that shape the numbers and
    the data itself."""
    flat = cfg.flat()
    # A key at its OFF_VALUES value shapes no number: left out, a last.pt from before it still resumes.
    off = {k for k, v in OFF_VALUES.items() if flat[k] == v}
    if cfg.train.ema_decay is None:
        off.add("train.ema_start")  # only read while averaging
    fp = {
        k: v
        for k, v in flat.items()
        if k.split(".")[0] in ("model", "train", "evaluate") and k not in NOT_IN_FINGERPRINT | off
    }
    fp["rng"] = "per-training generators"  # a last.pt holding global RNG states lacks it: not resumed
    fp["data.train_sha256"] = ids_sha256(train_ids)
    fp["data.val_sha256"] = ids_sha256(val_ids)
    return fp


def ids_sha256(ids: np.ndarray, block: int = 1 << 24) -> str:
    """SHA-256 of the ids' bytes, read a block at a time (a memory-mapped split is never copied whole)."""
    h = hashlib.sha256()
    for start in range(0, len(ids), block):
        h.update(np.ascontiguousarray(ids[start : start + block]).tobytes())
    return h.hexdigest()


def plan_resume(
    cfg: Config,
    train_ids: np.ndarray,
    val_ids: np.ndarray,
    paths: TrainPaths,
    log: Callable[[str], None] = print,
) -> Optional[dict[str, Any]]:
    """The checkpoint payload to resume from, or None to start fresh (per train.resume)."""
    mode = cfg.train.resume
    if mode == "never":
        return None
    if not paths.last.is_file():
        if mode == "require":
            raise KarnnaError(f"train.resume is 'require' but {paths.last} does not exist; set train.resume: auto")
        return None
    try:
        payload = checkpoint.load_payload(paths.last)
    except checkpoint.CorruptCheckpoint as exc:
        if mode == "require":
            raise KarnnaError(
                f"{paths.last}: {exc.what}, nothing to resume; set train.resume: auto (it is then set aside "
                "and training starts fresh) or restore it"
            ) from None
        log(f"warning: {paths.last}: {exc.what}; moved it to {set_aside(paths.last).name}, starting fresh")
        return None
    state = payload.get("resume")
    if state is None or state["step"] >= state["total_steps"]:
        if mode == "require":
            raise KarnnaError(f"{paths.last} holds a finished run, nothing to resume; set train.resume: auto or never")
        return None
    expected = fingerprint(cfg, train_ids, val_ids)
    changed = sorted(
        k for k in set(expected) | set(state["fingerprint"]) if expected.get(k) != state["fingerprint"].get(k)
    )
    if changed:
        what = ", ".join(f"{k}: {state['fingerprint'].get(k)!r} -> {expected.get(k)!r}" for k in changed[:4])
        if mode == "require":
            raise KarnnaError(
                f"{paths.last} was made with other params or data ({what}); "
                "set train.resume: never (or auto) to start over"
            )
        log(f"not resuming {paths.last}: it was made with other params or data ({what}); starting fresh")
        return None
    log(f"resuming from {paths.last} at step {state['step']} of {state['total_steps']}")
    return payload


def set_aside(path: Path) -> Path:
    """Rename a damaged checkpoint out of the way, kept for a look (never deleted); -> its new path."""
    aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
    path.replace(aside)
    return aside


@dataclass
class TrainState:
    """Everything the next step depends on: weights, optimizer, schedule, the dropout generator's
    state, the position in the data, the hidden state carried between windows, the best
    validation loss, the histories, the validations' samples, the weights' average (train.ema_decay)
    and the MLflow run id. to_payload() is what models/last.pt
    holds; load_payload() puts a payload back into a state built for the same params and data."""

    model: CharRNN
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    total_steps: int
    fingerprint: dict[str, Any]
    run_id: Optional[str] = None
    step: int = 0
    epoch: int = 0
    window: int = 0  # the next window of the epoch
    chars_seen: int = 0
    hidden: Optional[State] = None  # None: zeros at the next window (an epoch start)
    best_val: float = math.inf
    best_step: int = 0
    last_val: float = math.nan
    train_history: list[tuple[int, float]] = field(default_factory=list)
    val_history: list[tuple[int, float]] = field(default_factory=list)
    samples: list[tuple[int, float, str]] = field(default_factory=list)  # (step, val loss, text): samples.py
    average: Optional[WeightAverage] = None  # train.ema_decay's average of the weights; None: off

    def to_payload(self, config: dict[str, Any]) -> dict[str, Any]:
        """The checkpoint payload's extra keys (besides weights, spec and vocabulary)."""
        resume = {
            "fingerprint": self.fingerprint,
            "total_steps": self.total_steps,
            "step": self.step,
            "epoch": self.epoch,
            "window": self.window,
            "chars_seen": self.chars_seen,
            "hidden": None if self.hidden is None else [t.cpu() for t in self.hidden],
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "rng": {"dropout": self.model.generator.get_state()},
            "best_val": self.best_val,
            "best_step": self.best_step,
            "train_history": [list(x) for x in self.train_history],
            "val_history": [list(x) for x in self.val_history],
            "samples": [list(x) for x in self.samples],
        }
        if self.average is not None:  # absent with averaging off: last.pt as before it
            resume["average"] = self.average.to_payload()
        return {"run_id": self.run_id, "config": config, "val_loss": self.last_val, "resume": resume}

    def load_payload(self, payload: dict[str, Any]) -> None:
        """Restore from a checkpoint payload (plan_resume's); the run id stays this run's."""
        r = payload["resume"]
        device = self.model.head.weight.device
        load_weights(self.model, checkpoint.state_dict(payload), "the checkpoint resumed from")
        self.optimizer.load_state_dict(r["optimizer"])
        self.schedule.load_state_dict(r["scheduler"])
        self.model.generator.set_state(r["rng"]["dropout"])
        self.step, self.epoch, self.window, self.chars_seen = r["step"], r["epoch"], r["window"], r["chars_seen"]
        self.hidden = None if r["hidden"] is None else tuple(t.to(device) for t in r["hidden"])
        self.best_val, self.best_step = r["best_val"], r["best_step"]
        self.train_history = [tuple(x) for x in r["train_history"]]
        self.val_history = [tuple(x) for x in r["val_history"]]
        self.samples = [tuple(x) for x in r.get("samples", [])]  # none in a last.pt from before them
        if self.average is not None:  # the fingerprint holds train.ema_decay: a payload with the average
            self.average.load_payload(r["average"], device)
        self.last_val = self.val_history[-1][1] if self.val_history else math.nan
