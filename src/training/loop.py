"""The training loop: Adam, global-norm clipping, optional cosine decay, truncated BPTT, exact resume.

In pieces: `TrainState` holds everything a run carries from step to step and turns it into a
checkpoint payload and back (one pair, to_payload / load_payload); `train_step` is one optimiser
step (the speed benchmarks import it); evaluation calls the reporter's `on_eval` and any other
`EvalHook` (a tuner's pruning) with (step, val_loss).

The hidden state is carried from one window to the next within an epoch and detached between
them; it is reset at each epoch start. Loss values stay on the device and are fetched once every
log_interval steps, so the loop does not wait for the device at every step.

Every checkpoint_interval steps models/last.pt receives everything the next step depends on:
weights (and their average, train.ema_decay: src/training/averaging.py), optimizer and schedule,
the training's dropout generator, the position in the data, the hidden state carried between
batches, the best validation loss and the histories. A run killed at
any moment and started again continues from there and ends with the same numbers (on CPU) as a
run that was never interrupted.

A training draws nothing from the process-wide random generators and sets no process-wide
option (threads, malloc: the entry points' job), so trainings in threads side by side give the
numbers each gives alone.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from src.config.schema import Config
from src.data import batches
from src.data.vocab import Vocab
from src.model import checkpoint
from src.model.charrnn import CharRNN, State, count_params, detach, sizing_advice
from src.training import averaging, evaluate, interim
from src.training.device import autocast, precision_name, resolve_device, resolve_precision
from src.training.report import EvalHook, Reporter
from src.training.samples import ValidationSamples
from src.training.setup import new_state
from src.training.state import TrainPaths, TrainState, fingerprint
from src.utils import fileio
from src.utils.errors import KarnnaError


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
            "best_val_bpc": evaluate.bits_per_char(self.best_val_loss),
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


def train_step(
    model: CharRNN,
    optimizer: torch.optim.Optimizer,
    schedule: Optional[torch.optim.lr_scheduler.LRScheduler],
    x: torch.Tensor,
    y: torch.Tensor,
    hidden: State,
    amp: Optional[torch.dtype],
    grad_clip: float,
) -> tuple[torch.Tensor, torch.Tensor, State]:
    """One optimiser step on the window (x, y) from `hidden`; -> (loss, gradient norm, the next
    window's hidden state, detached). Loss and norm stay on the device: reading them waits for it."""
    with autocast(x.device, amp):
        logits, hidden = model(x, hidden)
    loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    if schedule is not None:
        schedule.step()
    return loss.detach(), gnorm.detach(), detach(hidden)


class LossLog:
    """Per-step losses kept on the device until drain() fetches them in one host sync; records
    them in the state's history, checks they are finite, and reports them."""

    def __init__(self, cfg: Config, reporter: Reporter):
        self.cfg, self.reporter = cfg, reporter
        self.losses: list[torch.Tensor] = []
        self.norms: list[torch.Tensor] = []
        self.window_start, self.window_chars = time.perf_counter(), 0
        self.last_loss = math.nan
        self.chars_per_sec = 0.0

    def add(self, loss: torch.Tensor, gnorm: torch.Tensor, chars: int) -> None:
        self.losses.append(loss)
        self.norms.append(gnorm)
        self.window_chars += chars

    def drain(self, state: TrainState) -> None:
        if not self.losses:
            return
        values = torch.stack(self.losses).float().cpu().tolist()
        norm = torch.stack(self.norms[-1:]).float().cpu().item()
        self.losses.clear()
        self.norms.clear()
        first = state.step - len(values) + 1
        for i, loss in enumerate(values):
            if not math.isfinite(loss):
                raise _diverged("training", loss, first + i, self.cfg)
            state.train_history.append((first + i, loss))
            if (first + i) % self.cfg.tracking.log_every == 0:
                self.reporter.log_metrics({"train_loss": loss}, first + i)
        now = time.perf_counter()
        self.chars_per_sec = self.window_chars / max(now - self.window_start, 1e-9)
        self.window_start, self.window_chars = now, 0
        self.last_loss = values[-1]
        lr = state.schedule.get_last_lr()[0]
        self.reporter.log_metrics({"lr": lr, "grad_norm": norm, "chars_per_sec": self.chars_per_sec}, state.step)


def _diverged(what: str, loss: float, step: int, cfg: Config) -> KarnnaError:
    t = cfg.train
    return KarnnaError(
        f"{what} loss is {loss} at step {step}: training diverged; lower train.lr "
        f"(now {t.lr:g}) or train.grad_clip (now {t.grad_clip:g}); the last good checkpoint is kept"
    )


@dataclass
class TrainContext:
    """What one call of train() works with, besides its state."""

    cfg: Config
    vocab: Vocab
    paths: TrainPaths
    grid: batches.Grid  # the training split as (batch_size, columns), windows copied to the device
    val: batches.Ids  # the validation split, 1-D
    split_chars: tuple[int, int]  # characters in the training and validation splits
    amp: Optional[torch.dtype]
    hooks: Sequence[EvalHook]
    reporter: Reporter
    eval_steps: Optional[Collection[int]] = None  # None: every train.eval_interval steps
    eval_chars: Optional[int] = None  # None: every validation scores the whole split
    interim_chars: Optional[int] = None  # evaluate.interim_chars; None: the whole split
    say: Callable[[str], None] = print  # a line for the user, above the progress bar
    on_log: Callable[[], object] = lambda: None  # at each log point and validation chunk, in this thread
    samples: Callable[[TrainState, Callable[[str], None]], None] = lambda state, say: None  # after each validation

    @property
    def steps_per_epoch(self) -> int:
        return batches.num_windows(self.grid.size(1), self.cfg.train.seq_len)

    def evaluates_at(self, step: int, total_steps: int) -> bool:
        if step == total_steps:
            return True
        return step in self.eval_steps if self.eval_steps is not None else step % self.cfg.train.eval_interval == 0


def validate(ctx: TrainContext, state: TrainState) -> None:
    """Score the validation split, keep the best checkpoint, call the eval hooks.

    With ctx.eval_chars or ctx.interim_chars, validations before the last score a prefix of the
    split; how the best checkpoint is then chosen: src/training/interim.py."""
    ev = ctx.cfg.evaluate
    scored, whole = interim.scored_ids(ctx, state.step == state.total_steps)
    loss = evaluate.stream_loss(state.model, scored, ev.rows, ev.chunk_len, ctx.amp, on_chunk=ctx.on_log)
    if not math.isfinite(loss):
        raise _diverged("validation", loss, state.step, ctx.cfg)
    state.last_val = loss
    state.val_history.append((state.step, loss))
    if ctx.eval_chars is not None or interim.prefix_active(ctx):
        ctx.reporter.log_metrics({"val_chars_scored": len(scored)}, state.step)
    improved = interim.keep_best(ctx, state, loss, whole)
    train_loss = state.train_history[-1][1] if state.train_history else math.nan
    ctx.say(
        f"step {state.step:>6}/{state.total_steps}  train {train_loss:.4f}  "
        f"val {loss:.4f} nats ({evaluate.bits_per_char(loss):.3f} bpc)  best {state.best_val:.4f} @ {state.best_step}"
        + ("  *" if improved else "")
    )
    ctx.samples(state, ctx.say)
    for hook in ctx.hooks:
        hook(state.step, loss)


def save_last(ctx: TrainContext, state: TrainState) -> None:
    # What was logged up to this step reaches the store (or, while it is away, the reporter's
    # write-ahead file) before the checkpoint says the run got here: a run resumed from it logs
    # only the steps after it again, so nothing may be in flight.
    # Sent first and waited for just before the rename, the store's commit overlaps the writing.
    ctx.reporter.flush()
    checkpoint.save(
        ctx.paths.last,
        state.model,
        ctx.vocab,
        state.step,
        state.to_payload(ctx.cfg.flat()),
        before_publish=ctx.reporter.wait,
    )


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
    on_eval: Sequence[EvalHook] = (),
    eval_steps: Optional[Collection[int]] = None,
    eval_chars: Optional[int] = None,
    interim_chars: Optional[int] = None,
    on_start: Callable[[], None] = lambda: None,
    on_log: Callable[[], object] = lambda: None,
) -> TrainResult:
    """Train, from scratch or from a plan_resume() payload; write best and last checkpoints.

    After each evaluation, reporter.on_eval and then each of `on_eval` get (step, val_loss); a
    hook that raises (a tuner's pruning) stops the training there. A tuner's options (the
    pipeline uses neither): `eval_steps` validates at these steps (and the last) instead of every
    train.eval_interval; `eval_chars` scores the validations before the last on the first
    eval_chars characters of the split; the pipeline's `interim_chars` (evaluate.interim_chars) scores
    them on a prefix that competes for best.pt (src/training/interim.py). `on_start` runs once the inputs are checked,
    before the first step (the train stage removes its previous metrics and plots there). `on_log`
    runs in the training thread at each log point and after each chunk of a validation (an entry
    point re-balances its threads there)."""
    t = cfg.train
    reporter = reporter or Reporter()
    # Process-wide settings (threads, malloc) are the entry points' (src.training.device.configure_process).
    device = resolve_device(t.device)
    amp = resolve_precision(t.precision, device, cfg.model.cell)
    fileio.remove_stale_temps(paths.last.parent)
    # The splits stay where they are (a memory map from the stages); each window is copied to the device.
    grid = batches.batchify(batches.Ids(train_ids, device), t.batch_size)
    val = batches.Ids(val_ids, device)
    evaluate.check_prefix(eval_chars, len(val))
    ctx = TrainContext(
        cfg,
        vocab,
        paths,
        grid,
        val,
        (len(train_ids), len(val_ids)),
        amp,
        [reporter.on_eval, *on_eval],
        reporter,
        eval_steps,
        eval_chars,
        interim_chars,
        on_log=on_log,
        samples=ValidationSamples(cfg, vocab, reporter),
    )
    total_steps = min(t.epochs * ctx.steps_per_epoch, t.max_steps or math.inf)
    state = new_state(cfg, vocab, total_steps, fingerprint(cfg, train_ids, val_ids), device, reporter.run_id)
    n_params = _announce(ctx, state, log)
    if resume is not None:
        state.load_payload(resume)
    resumed_from = state.step
    bar = tqdm(
        total=total_steps, initial=state.step, disable=not progress, unit="step", dynamic_ncols=True, mininterval=1.0
    )
    ctx.say = bar.write if progress else log
    on_start()
    start = time.perf_counter()
    try:
        chars = run_steps(ctx, state, LossLog(cfg, reporter), bar)
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    return _result(ctx, state, seconds, chars, n_params, resumed_from)


def _announce(ctx: TrainContext, state: TrainState, log: Callable[[str], None]) -> int:
    """Say what is trained (and Karpathy's reading of its size), log it as params; -> n_params."""
    n_params = count_params(state.model)
    m, device, amp, split_chars = ctx.cfg.model, ctx.grid.device, ctx.amp, ctx.split_chars
    log(f"model: {m.num_layers}x{m.lstm_size} {m.cell.upper()} on {device} ({precision_name(amp)})")
    log(sizing_advice(n_params, split_chars[0]))
    ctx.reporter.log_params(
        {
            "n_params": n_params,
            "vocab_size": ctx.vocab.size,
            "train_chars": split_chars[0],
            "val_chars": split_chars[1],
            "params_per_char": round(n_params / split_chars[0], 4),
            "steps_per_epoch": ctx.steps_per_epoch,
            "total_steps": state.total_steps,
            "device": str(device),
            "precision": precision_name(amp),
        }
    )
    return n_params


def _result(
    ctx: TrainContext, state: TrainState, seconds: float, chars: int, n_params: int, resumed_from: int
) -> TrainResult:
    """The TrainResult of a finished (or resumed and finished) run."""
    tail = [loss for _, loss in state.train_history[-max(1, min(100, ctx.steps_per_epoch)) :]]
    grid, split_chars = ctx.grid, ctx.split_chars
    return TrainResult(
        best_val_loss=state.best_val,
        best_step=state.best_step,
        steps=state.step,
        epochs=state.chars_seen / (grid.size(0) * (grid.size(1) - 1)),
        seconds=seconds,
        chars_per_sec=chars / max(seconds, 1e-9),
        final_train_loss=float(np.mean(tail)),
        n_params=n_params,
        train_chars=split_chars[0],
        val_chars=split_chars[1],
        device=str(grid.device),
        precision=precision_name(ctx.amp),
        resumed_from=resumed_from,
        train_history=state.train_history,
        val_history=state.val_history,
    )


def run_steps(ctx: TrainContext, state: TrainState, losses: LossLog, bar: tqdm) -> int:
    """Step until state.total_steps, evaluating and checkpointing on schedule; -> characters read."""
    t = ctx.cfg.train
    chars = 0
    state.model.train()
    while state.step < state.total_steps:
        if state.hidden is None:
            state.hidden = state.model.init_hidden(t.batch_size, ctx.grid.device)  # reset at each epoch start
        for x, y in batches.windows(ctx.grid, t.seq_len, start=state.window):
            loss, gnorm, state.hidden = train_step(
                state.model, state.optimizer, state.schedule, x, y, state.hidden, ctx.amp, t.grad_clip
            )
            state.step += 1
            averaging.update(state.average, state.model, state.step)
            state.window += 1
            state.chars_seen += y.numel()
            chars += y.numel()
            losses.add(loss, gnorm, y.numel())
            bar.update(1)
            end = state.step == state.total_steps
            evaluating = ctx.evaluates_at(state.step, state.total_steps)
            saving = state.step % t.checkpoint_interval == 0 or end
            if state.step % t.log_interval == 0 or evaluating or saving:
                losses.drain(state)  # the histories are complete in what is evaluated and saved
                _show_progress(bar, ctx, state, losses)
                ctx.on_log()
            if evaluating:
                with averaging.swapped(state.average, state.model):  # validated and best.pt: the average
                    validate(ctx, state)
            if saving:
                save_last(ctx, state)
            if end:
                return chars
        state.epoch, state.window, state.hidden = state.epoch + 1, 0, None
    return chars


def _show_progress(bar: tqdm, ctx: TrainContext, state: TrainState, losses: LossLog) -> None:
    if bar.disable:
        return
    val = f"{state.last_val:.3f}" if math.isfinite(state.last_val) else "-"
    bar.set_postfix_str(
        f"epoch {state.epoch + 1}/{ctx.cfg.train.epochs} loss {losses.last_loss:.3f} val {val} "
        f"{losses.chars_per_sec / 1000:.1f}k char/s"
    )
