"""Figures logged with a run: the train and validation loss curves on one PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


def save_loss_figure(train_history: Sequence[tuple[int, float]], val_history: Sequence[tuple[int, float]], path: Path) -> None:
    """Train and validation loss against the step on one PNG."""
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend

    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.add_subplot()
    if train_history:
        ax.plot(*zip(*train_history), label="train", linewidth=0.8, alpha=0.8)
    if val_history:
        ax.plot(*zip(*val_history), "o-", label="validation", markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per character)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=100)
