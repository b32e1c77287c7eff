"""The small interface through which training reports what it does.

src.tracking implements it with MLflow (the only module that imports mlflow); Reporter itself
records nothing, so training runs the same with tracking off, e.g. in unit tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional


class Reporter:
    """Does nothing; subclasses send to a tracking backend."""

    run_id: Optional[str] = None

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def log_artifact(self, path: Path, artifact_path: Optional[str] = None) -> None:
        pass

    def flush(self) -> None:
        """Send everything logged so far (called at evaluations and at the end); a backend may
        send in the background, so the loop does not wait for the store."""
