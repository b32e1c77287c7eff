"""Which part of the validation split a validation scores, and which checkpoint is best.pt.

Two ways to bound what a validation costs on a large split, both scoring a fixed contiguous
prefix before the last validation and the whole split at the last one:

- `evaluate.interim_chars` (the pipeline's, `train(interim_chars=)`): the validations before the
  last compete for best.pt on the prefix, among themselves. At the last validation the best of
  them (if any) is scored again on the whole split and competes with the final model's whole-split
  score, so best.pt is the better of the two on the whole split and `best_val_loss` is always a
  whole-split score. A prefix at least as long as the split is the whole split: nothing changes.
- `tune.eval_chars` (the tuner's, `train(eval_chars=)`): the validations before the last are
  reported (and may prune a trial) but never compete for best.pt.

The functions take the training's TrainContext and TrainState (src/training/loop.py).
"""

from __future__ import annotations

from src.model import checkpoint
from src.training import evaluate


def prefix_active(ctx) -> bool:
    """Whether the pipeline's interim validations score a prefix shorter than the split."""
    return ctx.eval_chars is None and ctx.interim_chars is not None and ctx.interim_chars < len(ctx.val)


def scored_ids(ctx, last: bool):
    """(what this validation scores, whether it is the whole split)."""
    if ctx.eval_chars is not None:
        return (ctx.val, True) if last else (ctx.val[: ctx.eval_chars], False)
    if last or not prefix_active(ctx):
        return ctx.val, True
    return ctx.val[: ctx.interim_chars], False


def keep_best(ctx, state, loss: float, whole: bool) -> bool:
    """Update the best score and best.pt with this validation's `loss`; -> whether it is the new best."""
    if ctx.eval_chars is not None and not whole:
        return False
    best = state.best_val
    if whole and prefix_active(ctx) and 0 < state.best_step < state.step:
        best = rescore_best(ctx, state)
    if loss < best:
        state.best_val, state.best_step = loss, state.step
        save_best(ctx, state, state.model, loss)
        return True
    return False


def rescore_best(ctx, state) -> float:
    """The whole-split score of best.pt, chosen on the prefix; it becomes the best score and best.pt's."""
    ev = ctx.cfg.evaluate
    model, _, _ = checkpoint.load(ctx.paths.best, ctx.grid.device)
    loss = evaluate.stream_loss(model, ctx.val, ev.rows, ev.chunk_len, ctx.amp)
    ctx.say(f"best.pt (step {state.best_step}, {state.best_val:.4f} on the prefix): {loss:.4f} nats on the whole split")
    state.best_val = loss
    save_best(ctx, state, model, loss, state.best_step)
    return loss


def save_best(ctx, state, model, loss: float, step: int | None = None) -> None:
    checkpoint.save(
        ctx.paths.best,
        model,
        ctx.vocab,
        state.step if step is None else step,
        {"run_id": state.run_id, "config": ctx.cfg.flat(), "val_loss": loss},
    )
