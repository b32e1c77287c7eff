"""Figures logged with MLflow runs: a training's loss curves, a study's Optuna plots."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Sequence

from src.utils import fileio


def save_loss_figure(
    train_history: Sequence[tuple[int, float]], val_history: Sequence[tuple[int, float]], path: Path
) -> None:
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


def study_figures(study: Any, folder: Path) -> list[Path]:
    """Optuna's plots as PNG files (history, importances, parallel coordinates, intermediate values)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as vis

    made = []
    plots = {
        "optimization_history": vis.plot_optimization_history,
        "param_importances": vis.plot_param_importances,
        "parallel_coordinate": vis.plot_parallel_coordinate,
        "intermediate_values": vis.plot_intermediate_values,
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, plot in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                ax = plot(study)
        except Exception:  # e.g. importances need two complete trials with varied params
            continue
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        path = folder / f"{name}.png"
        fig.set_size_inches(9, 5)
        fig.tight_layout()
        fileio.write_with(path, lambda p, fig=fig: fig.savefig(p, format="png", dpi=90))
        plt.close(fig)
        made.append(path)
    return made
