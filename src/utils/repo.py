"""Where a karnna checkout keeps its files (the paths dvc.yaml names), and the tracking store a
stage or command uses when none is set. The stages (pipeline/common.py) and the commands
(src/tune.py) name their files through `Layout` and pass their own environment to
`tracking_uri`: nothing here reads the environment."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

# `dvc exp run --temp` and queued experiments run in a copy of the repo under <repo>/<this>/...
DVC_EXP_WORKSPACES = (".dvc", "tmp", "exps")


class Layout:
    """The files of the checkout at `root` (Path(): relative to the working directory)."""

    def __init__(self, root: Path):
        self.root = root
        self.params = root / "params.yaml"
        self.corpus = root / "data" / "corpus.txt"
        self.vocab = root / "data" / "vocab.json"
        self.encoded = root / "data" / "encoded.npy"
        self.split_dir = root / "data" / "split"  # train.npy, val.npy, test.npy
        self.models = root / "models"
        self.best = self.models / "best.pt"
        self.last = self.models / "last.pt"
        self.metrics = root / "metrics"
        self.plots = root / "plots"
        self.samples = root / "samples"
        self.journal = root / "tune" / "journal.log"  # the study's default storage
        self.best_params = root / "tune" / "best_params.yaml"


def main_repo_root(root: Path) -> Path:
    """The repository a checkout belongs to: itself, or for a DVC experiment's copy under
    <repo>/.dvc/tmp/exps/..., <repo>."""
    parts = root.parts
    n = len(DVC_EXP_WORKSPACES)
    for i in range(len(parts) - n + 1):
        if parts[i : i + n] == DVC_EXP_WORKSPACES:
            return Path(*parts[:i])
    return root


def tracking_uri(environ: Mapping[str, str], root: Path) -> str:
    """MLFLOW_TRACKING_URI from `environ`, else the SQLite store mlflow.db of the main repository:
    an absolute path, so a DVC experiment's copy logs to the same store as the repo itself."""
    return environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{main_repo_root(root) / 'mlflow.db'}"
