"""Experiment tracking. PLACEHOLDER until the MLflow issue lands: tracking is off everywhere.

This is the only module that may import mlflow; the rest of src/ talks to a Reporter.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from src.config import Config
from src.report import Reporter


class TrainingReporter(Reporter):
    def finish_training(self, result: Any, best: Path, last: Path, vocab: Path, history: Path) -> None:
        pass


@contextlib.contextmanager
def start_training_run(cfg: Config, tracking_uri: Optional[str] = None) -> Iterator[TrainingReporter]:
    yield TrainingReporter()


def log_to_run(
    run_id: Optional[str],
    tracking_uri: Optional[str] = None,
    metrics: Optional[Mapping[str, float]] = None,
    artifacts: Optional[list[Path]] = None,
) -> None:
    """Add the evaluate / sample stage's results to the training run that made the checkpoint."""
