"""Validation and test scores that do not depend on the training batch shape.

The split is cut into `rows` contiguous rows (fixed by evaluate.rows, not train.batch_size),
each read from a zero state in chunks of chunk_len with the state carried across chunks, so a
score is the model's loss on the whole stream, comparable between runs with any batch_size or
seq_len. Evaluation has its own hidden state and never touches the training state.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F

from src.data import batches
from src.model.charrnn import CharRNN
from src.training.device import autocast
from src.utils import progress as progress_line
from src.utils.errors import KarnnaError

_LN2 = math.log(2.0)


def bits_per_char(loss_nats: float) -> float:
    """A loss in nats per character as bits per character."""
    return loss_nats / _LN2


@torch.no_grad()
def stream_loss(
    model: CharRNN,
    ids: Union[torch.Tensor, batches.Ids],
    rows: int,
    chunk_len: int,
    amp_dtype: Optional[torch.dtype] = None,
    progress: str = "",
    on_chunk: Callable[[], object] = lambda: None,
) -> float:
    """Mean cross-entropy in nats per character over the whole of `ids` (1-D: a tensor on the model's
    device, or batches.Ids). `progress` names a progress line shown when it takes more than a few seconds.
    `on_chunk` runs after each chunk, in this thread: a long evaluation re-balances its threads there."""
    was_training = model.training
    model.eval()
    try:
        # Fewer rows than asked for only when the split is tiny; depends on the data alone.
        rows = max(1, min(rows, (len(ids) - 1) // 2))
        grid = batches.batchify(ids, rows)
        hidden = model.init_hidden(rows, ids.device)
        total = torch.zeros((), dtype=torch.float64, device=ids.device)
        count = 0
        with progress_line.bar(
            grid.size(0) * (grid.size(1) - 1), f"evaluate {progress}", "char", enabled=bool(progress)
        ) as bar:
            for x, y in batches.windows(grid, chunk_len):
                with autocast(ids.device, amp_dtype):
                    logits, hidden = model(x, hidden)
                total += F.cross_entropy(logits.float().flatten(0, 1), y.flatten().long(), reduction="sum").double()
                count += y.numel()
                bar.update(y.numel())
                on_chunk()
        return total.item() / count
    finally:
        model.train(was_training)


def check_prefix(eval_chars: Optional[int], val_chars: int) -> None:
    """tune.eval_chars, the validation prefix a tuner's early validations score, must fit the split."""
    if eval_chars is not None and not 2 <= eval_chars <= val_chars:
        raise KarnnaError(
            f"tune.eval_chars: {eval_chars:,} is not within the validation split (2 to {val_chars:,} "
            "characters); lower it or set it to null (the whole split)"
        )


def scores(loss_nats: float) -> dict[str, float]:
    """Loss in nats, bits per character and perplexity."""
    return {"loss": loss_nats, "bpc": bits_per_char(loss_nats), "perplexity": math.exp(loss_nats)}
