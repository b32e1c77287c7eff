"""The small interface through which training reports what it does.

src.tracking implements it with MLflow; Reporter itself records nothing (what training gets with
tracking.enabled false, and in unit tests), so training runs the same with or without a store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Optional

# What train() calls after each evaluation: (step, validation loss in nats). Tracking logs it,
# a tuner's pruning decides on it; either may raise to stop the training there.
EvalHook = Callable[[int, float], None]


class Reporter:
    """Records nothing; src.tracking.runs.MlflowReporter sends to an MLflow run."""

    run_id: Optional[str] = None

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def log_artifact(self, path: Path, artifact_path: Optional[str] = None) -> None:
        pass

    def log_text(self, text: str, artifact_file: str) -> None:
        """Keep `text` as the run's file `artifact_file` (e.g. samples/all.txt), replacing one of
        that name."""

    def on_eval(self, step: int, val_loss: float) -> None:
        """After each evaluation during training (an EvalHook)."""

    def flush(self) -> None:
        """Send everything logged so far (called at evaluations and at the end); a backend may
        send in the background, so the loop does not wait for the store."""

    def wait(self) -> None:
        """Flush, and return once the backend holds everything logged so far, or has it kept on
        disk where its store does not answer (called before each resumable checkpoint)."""

    def finish_training(
        self,
        result: Any,
        best: Path,
        last: Path,
        vocab: Path,
        history: Optional[Path] = None,
        params_file: Optional[Path] = None,
    ) -> None:
        """After train(): `result` is its TrainResult; the checkpoints, vocab.json, the history
        CSVs (a folder or a file) and params.yaml become artifacts of the run."""
