"""The training loop: Adam, global-norm clipping, optional cosine decay, truncated BPTT.

The hidden state is carried from one window to the next within an epoch and detached between
them; it is reset at each epoch start. Loss values stay on the device and are fetched once every
log_interval steps, so the loop does not wait for the device at every step.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from src import checkpoint, data, evaluate
from src.config import Config
from src.device import autocast, precision_name, resolve_device, resolve_precision
from src.errors import KarnnaError
from src.model import CharLSTM, ModelSpec, count_params, detach, sizing_advice
from src.report import Reporter
from src.vocab import Vocab


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
        }


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_factor(step: int, total_steps: int, warmup_steps: int, decay: str, min_ratio: float) -> float:
    """Multiplier of train.lr at `step`: linear warmup, then constant or cosine down to min_lr."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if decay == "none":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_model(cfg: Config, vocab: Vocab) -> CharLSTM:
    m = cfg.model
    return CharLSTM(ModelSpec(vocab.size, m.embedding_dim, m.lstm_size, m.num_layers, m.dropout))


def train(
    cfg: Config,
    vocab: Vocab,
    train_ids: np.ndarray,
    val_ids: np.ndarray,
    paths: TrainPaths,
    reporter: Optional[Reporter] = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train from scratch; write the best (lowest val loss) and last checkpoints."""
    t = cfg.train
    reporter = reporter or Reporter()
    seed_everything(t.seed)
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    device = resolve_device(t.device)
    amp = resolve_precision(t.precision, device)

    model = build_model(cfg, vocab).to(device)
    n_params = count_params(model)
    log(f"model: {cfg.model.num_layers}x{cfg.model.lstm_size} LSTM on {device} ({precision_name(amp)})")
    log(sizing_advice(n_params, len(train_ids)))

    # The whole split lives on the device once; every batch is a view of it.
    grid = data.batchify(torch.from_numpy(train_ids.astype(np.int64)).to(device), t.batch_size)
    val = torch.from_numpy(val_ids.astype(np.int64)).to(device)
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

    extra_ckpt = {"run_id": reporter.run_id, "config": cfg.flat()}
    best_val, best_step = math.inf, 0
    train_hist: list[tuple[int, float]] = []
    val_hist: list[tuple[int, float]] = []
    pending: list[torch.Tensor] = []  # per-step losses not yet fetched from the device
    gnorms: list[torch.Tensor] = []
    last_val = math.nan
    step = 0
    chars_seen = 0
    start = time.perf_counter()
    window_start, window_chars = start, 0

    def validate() -> None:
        nonlocal best_val, best_step, last_val
        last_val = evaluate.stream_loss(model, val, cfg.evaluate.rows, cfg.evaluate.chunk_len, amp)
        if not math.isfinite(last_val):
            raise KarnnaError(
                f"validation loss is {last_val} at step {step}: training diverged; lower train.lr "
                f"(now {t.lr:g}) or train.grad_clip (now {t.grad_clip:g}); the last good checkpoint is kept"
            )
        val_hist.append((step, last_val))
        improved = last_val < best_val
        if improved:
            best_val, best_step = last_val, step
            checkpoint.save(paths.best, model, vocab, step, {**extra_ckpt, "val_loss": last_val})
        checkpoint.save(paths.last, model, vocab, step, {**extra_ckpt, "val_loss": last_val})
        reporter.log_metrics({"val_loss": last_val, "val_bpc": last_val / evaluate.LN2}, step)
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
        for i, (loss, norm) in enumerate(zip(values, norms)):
            if not math.isfinite(loss):
                raise KarnnaError(
                    f"training loss is {loss} at step {first + i}: training diverged; lower train.lr "
                    f"(now {t.lr:g}) or train.grad_clip (now {t.grad_clip:g}); the last good checkpoint is kept"
                )
            train_hist.append((first + i, loss))
        now = time.perf_counter()
        cps = window_chars / max(now - window_start, 1e-9)
        window_start, window_chars = now, 0
        lr_now = sched.get_last_lr()[0]
        metrics_by_step = {}
        for s, loss in train_hist[-len(values) :]:
            if s % cfg.tracking.log_every == 0:
                metrics_by_step[s] = {"train_loss": loss}
        for s, m in metrics_by_step.items():
            reporter.log_metrics(m, s)
        reporter.log_metrics({"lr": lr_now, "grad_norm": norms[-1], "chars_per_sec": cps}, step)
        pending.clear()
        gnorms.clear()
        if progress:
            bar.set_postfix_str(
                f"epoch {epoch + 1}/{t.epochs} loss {values[-1]:.3f} val {last_val:.3f} {cps / 1000:.1f}k char/s"
            )

    bar = tqdm(total=total_steps, disable=not progress, unit="step", dynamic_ncols=True, mininterval=1.0)
    model.train()
    epoch = 0
    try:
        while step < total_steps:
            hidden = model.init_hidden(t.batch_size, device)  # reset at each epoch start
            for x, y in data.windows(grid, t.seq_len):
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
                chars_seen += y.numel()
                window_chars += y.numel()
                bar.update(1)
                if step % t.log_interval == 0:
                    drain()
                if step % t.eval_interval == 0 or step == total_steps:
                    drain()
                    validate()
                if step >= total_steps:
                    break
            epoch += 1
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    tail = [loss for _, loss in train_hist[-max(1, min(100, steps_per_epoch)) :]]
    return TrainResult(
        best_val_loss=best_val,
        best_step=best_step,
        steps=step,
        epochs=step / steps_per_epoch,
        seconds=seconds,
        chars_per_sec=chars_seen / seconds,
        final_train_loss=float(np.mean(tail)),
        n_params=n_params,
        train_chars=len(train_ids),
        val_chars=len(val_ids),
        device=str(device),
        precision=precision_name(amp),
        train_history=train_hist,
        val_history=val_hist,
    )
