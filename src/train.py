"""The training loop: Adam, global-norm clipping, optional cosine decay, truncated BPTT, exact resume.

The hidden state is carried from one window to the next within an epoch and detached between
them; it is reset at each epoch start. Loss values stay on the device and are fetched once every
log_interval steps, so the loop does not wait for the device at every step.

Every checkpoint_interval steps models/last.pt receives everything the next step depends on:
weights, optimizer and schedule, the training's dropout generator, the position in the data, the
hidden state carried between batches, the best validation loss and the histories. A run killed at
any moment and started again continues from there and ends with the same numbers (on CPU) as a
run that was never interrupted.

A training draws nothing from the process-wide random generators and sets no process-wide
option (threads, malloc: the entry points' job), so trainings in threads side by side give the
numbers each gives alone.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection, Optional

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from src import checkpoint, data, evaluate, fileio
from src.config import Config
from src.device import autocast, precision_name, resolve_device, resolve_precision
from src.errors import KarnnaError
from src.model import CharLSTM, ModelSpec, count_params, detach, sizing_advice
from src.report import Reporter
from src.vocab import Vocab

# Params that change how often things are printed or saved, not the numbers a run produces.
NOT_IN_FINGERPRINT = {"train.log_interval", "train.checkpoint_interval", "train.resume", "train.num_threads"}


@dataclass
class TrainPaths:
    best: Path
    last: Path


@dataclass
class TrainResult:
    best_val_loss: float
    best_step: int
    steps: int
    epochs: float
    seconds: float
    chars_per_sec: float
    final_train_loss: float
    n_params: int
    train_chars: int
    val_chars: int
    device: str
    precision: str
    resumed_from: int = 0
    train_history: list[tuple[int, float]] = field(default_factory=list)
    val_history: list[tuple[int, float]] = field(default_factory=list)

    def metrics(self) -> dict:
        return {
            "best_val_loss": self.best_val_loss,
            "best_val_bpc": self.best_val_loss / evaluate.LN2,
            "best_step": self.best_step,
            "steps": self.steps,
            "epochs": self.epochs,
            "seconds": self.seconds,
            "chars_per_sec": self.chars_per_sec,
            "final_train_loss": self.final_train_loss,
            "n_params": self.n_params,
            "train_chars": self.train_chars,
            "val_chars": self.val_chars,
            "params_per_char": self.n_params / self.train_chars,
            "device": self.device,
            "precision": self.precision,
            "resumed_from": self.resumed_from,
        }


def lr_factor(step: int, total_steps: int, warmup_steps: int, decay: str, min_ratio: float) -> float:
    """Multiplier of train.lr at `step`: linear warmup, then constant or cosine down to min_lr."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if decay == "none":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_model(cfg: Config, vocab: Vocab, generator: Optional[torch.Generator] = None) -> CharLSTM:
    """The network, initialised from `generator` (torch's default initialisation, drawn from
    the training's own generator rather than the process-wide one) when given."""
    m = cfg.model
    model = CharLSTM(ModelSpec(vocab.size, m.embedding_dim, m.lstm_size, m.num_layers, m.dropout))
    if generator is not None:
        init_weights(model, generator)
    return model


@torch.no_grad()
def init_weights(model: CharLSTM, generator: torch.Generator) -> None:
    """What nn.Embedding, nn.LSTM and nn.Linear's reset_parameters draw, from `generator`."""
    model.embed.weight.normal_(0.0, 1.0, generator=generator)
    bound = 1.0 / math.sqrt(model.spec.lstm_size)
    for weight in model.lstm.parameters():
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


def fingerprint(cfg: Config, train_ids: np.ndarray, val_ids: np.ndarray) -> dict[str, Any]:
    """What must be equal for a checkpoint to be resumed: the params that shape the numbers and
    the data itself."""
    fp = {
        k: v
        for k, v in cfg.flat().items()
        if k.split(".")[0] in ("model", "train", "evaluate") and k not in NOT_IN_FINGERPRINT
    }
    fp["rng"] = "per-training generators"  # resume states of older versions hold global RNG states
    fp["data.train_sha256"] = hashlib.sha256(np.ascontiguousarray(train_ids).tobytes()).hexdigest()
    fp["data.val_sha256"] = hashlib.sha256(np.ascontiguousarray(val_ids).tobytes()).hexdigest()
    return fp


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
    payload = checkpoint.load_payload(paths.last)
    state = payload.get("resume")
    if state is None or state["step"] >= state["total_steps"]:
        if mode == "require":
            raise KarnnaError(f"{paths.last} holds a finished run, nothing to resume; set train.resume: auto or never")
        return None
    expected = fingerprint(cfg, train_ids, val_ids)
    changed = sorted(k for k in set(expected) | set(state["fingerprint"]) if expected.get(k) != state["fingerprint"].get(k))
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


def train(
    cfg: Config,
    vocab: Vocab,
    train_ids: np.ndarray,
    val_ids: np.ndarray,
    paths: TrainPaths,
    reporter: Optional[Reporter] = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    resume: Optional[dict[str, Any]] = None,
    eval_steps: Optional[Collection[int]] = None,
    eval_chars: Optional[int] = None,
) -> TrainResult:
    """Train, from scratch or from a plan_resume() payload; write best and last checkpoints.

    A tuner's options (the pipeline uses neither): `eval_steps` validates at these steps (and the
    last) instead of every train.eval_interval; `eval_chars` scores the validations before the last
    on the first eval_chars characters of the split, the last one on the whole split. Prefix scores
    are reported as val_loss (with val_chars_scored) but never compete for the best checkpoint."""
    t = cfg.train
    reporter = reporter or Reporter()
    # Process-wide settings (threads, malloc) are the entry points' (src.device.configure_process).
    device = resolve_device(t.device)
    amp = resolve_precision(t.precision, device)
    fileio.remove_stale_temps(paths.last.parent)

    init_gen, model_gen = generators(t.seed, device)
    model = build_model(cfg, vocab, init_gen).to(device)
    model.generator = model_gen
    n_params = count_params(model)
    log(f"model: {cfg.model.num_layers}x{cfg.model.lstm_size} LSTM on {device} ({precision_name(amp)})")
    log(sizing_advice(n_params, len(train_ids)))

    # The whole split lives on the device once; every batch is a view of it.
    grid = data.batchify(torch.from_numpy(train_ids.astype(np.int64)).to(device), t.batch_size)
    val = torch.from_numpy(val_ids.astype(np.int64)).to(device)
    if eval_chars is not None and not 2 <= eval_chars <= len(val):
        raise KarnnaError(f"tune.eval_chars: {eval_chars:,} is not within the validation split's {len(val):,} "
                          "characters; lower it or set it to null (the whole split)")
    steps_per_epoch = data.num_windows(grid.size(1), t.seq_len)
    total_steps = t.epochs * steps_per_epoch
    if t.max_steps is not None:
        total_steps = min(total_steps, t.max_steps)

    opt = torch.optim.Adam(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    min_ratio = t.min_lr / t.lr
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, total_steps, t.warmup_steps, t.lr_decay, min_ratio)
    )
    reporter.log_params(
        {
            "n_params": n_params,
            "vocab_size": vocab.size,
            "train_chars": len(train_ids),
            "val_chars": len(val_ids),
            "params_per_char": round(n_params / len(train_ids), 4),
            "steps_per_epoch": steps_per_epoch,
            "total_steps": total_steps,
            "device": str(device),
            "precision": precision_name(amp),
        }
    )
    fp = fingerprint(cfg, train_ids, val_ids)

    # Everything below is the run's state; a resume restores all of it.
    step, epoch, window = 0, 0, 0
    hidden: Optional[tuple[torch.Tensor, torch.Tensor]] = None
    best_val, best_step = math.inf, 0
    train_hist: list[tuple[int, float]] = []
    val_hist: list[tuple[int, float]] = []
    chars_seen = 0
    if resume is not None:
        r = resume["resume"]
        model.load_state_dict(resume["state_dict"])
        opt.load_state_dict(r["optimizer"])
        sched.load_state_dict(r["scheduler"])
        step, epoch, window, chars_seen = r["step"], r["epoch"], r["window"], r["chars_seen"]
        hidden = (r["hidden"][0].to(device), r["hidden"][1].to(device)) if r["hidden"] is not None else None
        best_val, best_step = r["best_val"], r["best_step"]
        train_hist = [tuple(x) for x in r["train_history"]]
        val_hist = [tuple(x) for x in r["val_history"]]
        model.generator.set_state(r["rng"]["dropout"])
    resumed_from = step

    extra_ckpt = {"run_id": reporter.run_id, "config": cfg.flat()}
    pending: list[torch.Tensor] = []  # per-step losses not yet fetched from the device
    gnorms: list[torch.Tensor] = []
    last_val = val_hist[-1][1] if val_hist else math.nan
    start = time.perf_counter()
    chars_this_session = 0
    window_start, window_chars = start, 0

    def save_last() -> None:
        state = {
            "fingerprint": fp,
            "total_steps": total_steps,
            "step": step,
            "epoch": epoch,
            "window": window,
            "chars_seen": chars_seen,
            "hidden": None if hidden is None else (hidden[0].cpu(), hidden[1].cpu()),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "rng": {"dropout": model.generator.get_state()},
            "best_val": best_val,
            "best_step": best_step,
            "train_history": [list(x) for x in train_hist],
            "val_history": [list(x) for x in val_hist],
        }
        checkpoint.save(paths.last, model, vocab, step, {**extra_ckpt, "val_loss": last_val, "resume": state})

    def validate() -> None:
        nonlocal best_val, best_step, last_val
        scored = val if eval_chars is None or step == total_steps else val[:eval_chars]
        last_val = evaluate.stream_loss(model, scored, cfg.evaluate.rows, cfg.evaluate.chunk_len, amp)
        if not math.isfinite(last_val):
            raise KarnnaError(
                f"validation loss is {last_val} at step {step}: training diverged; lower train.lr "
                f"(now {t.lr:g}) or train.grad_clip (now {t.grad_clip:g}); the last good checkpoint is kept"
            )
        val_hist.append((step, last_val))
        improved = last_val < best_val and len(scored) == len(val)
        if improved:
            best_val, best_step = last_val, step
            checkpoint.save(paths.best, model, vocab, step, {**extra_ckpt, "val_loss": last_val})
        extra = {} if eval_chars is None else {"val_chars_scored": len(scored)}
        reporter.log_metrics({"val_loss": last_val, "val_bpc": last_val / evaluate.LN2, **extra}, step)
        reporter.flush()
        msg = (
            f"step {step:>6}/{total_steps}  train {train_hist[-1][1] if train_hist else math.nan:.4f}  "
            f"val {last_val:.4f} nats ({last_val / evaluate.LN2:.3f} bpc)  best {best_val:.4f} @ {best_step}"
            + ("  *" if improved else "")
        )
        bar.write(msg) if progress else log(msg)

    def drain() -> None:
        """Fetch pending losses (one host sync), record them, and check they are finite."""
        nonlocal window_start, window_chars
        if not pending:
            return
        values = torch.stack(pending).float().cpu().tolist()
        norms = torch.stack(gnorms).float().cpu().tolist()
        first = step - len(values) + 1
        for i, loss in enumerate(values):
            if not math.isfinite(loss):
                raise KarnnaError(
                    f"training loss is {loss} at step {first + i}: training diverged; lower train.lr "
                    f"(now {t.lr:g}) or train.grad_clip (now {t.grad_clip:g}); the last good checkpoint is kept"
                )
            train_hist.append((first + i, loss))
        now = time.perf_counter()
        cps = window_chars / max(now - window_start, 1e-9)
        window_start, window_chars = now, 0
        for s, loss in train_hist[-len(values) :]:
            if s % cfg.tracking.log_every == 0:
                reporter.log_metrics({"train_loss": loss}, s)
        reporter.log_metrics({"lr": sched.get_last_lr()[0], "grad_norm": norms[-1], "chars_per_sec": cps}, step)
        pending.clear()
        gnorms.clear()
        if progress:
            val_text = f"{last_val:.3f}" if math.isfinite(last_val) else "-"
            bar.set_postfix_str(
                f"epoch {epoch + 1}/{t.epochs} loss {values[-1]:.3f} val {val_text} {cps / 1000:.1f}k char/s"
            )

    bar = tqdm(total=total_steps, initial=step, disable=not progress, unit="step", dynamic_ncols=True, mininterval=1.0)
    model.train()
    try:
        while step < total_steps:
            if hidden is None:
                hidden = model.init_hidden(t.batch_size, device)  # reset at each epoch start
            for x, y in data.windows(grid, t.seq_len, start=window):
                with autocast(device, amp):
                    logits, hidden = model(x, hidden)
                loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
                opt.step()
                sched.step()
                hidden = detach(hidden)
                pending.append(loss.detach())
                gnorms.append(gnorm.detach())
                step += 1
                window += 1
                chars_seen += y.numel()
                chars_this_session += y.numel()
                window_chars += y.numel()
                bar.update(1)
                if step % t.log_interval == 0:
                    drain()
                if (step in eval_steps if eval_steps is not None else step % t.eval_interval == 0) or step == total_steps:
                    drain()
                    validate()
                if step % t.checkpoint_interval == 0 or step == total_steps:
                    drain()
                    save_last()
                if step >= total_steps:
                    break
            else:
                epoch, window, hidden = epoch + 1, 0, None
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    tail = [loss for _, loss in train_hist[-max(1, min(100, steps_per_epoch)) :]]
    return TrainResult(
        best_val_loss=best_val,
        best_step=best_step,
        steps=step,
        epochs=chars_seen / (grid.size(0) * (grid.size(1) - 1)),
        seconds=seconds,
        chars_per_sec=chars_this_session / max(seconds, 1e-9),
        final_train_loss=float(np.mean(tail)),
        n_params=n_params,
        train_chars=len(train_ids),
        val_chars=len(val_ids),
        device=str(device),
        precision=precision_name(amp),
        resumed_from=resumed_from,
        train_history=train_hist,
        val_history=val_hist,
    )
