"""Checkpoints: a state_dict plus plain config and vocabulary, nothing that needs unpickling code.

Loaded with ``torch.load(..., weights_only=True)``, so a crafted file cannot run code; written
atomically, so a crash never leaves a truncated checkpoint behind.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from src.data.vocab import Vocab
from src.model.charrnn import CharRNN, ModelSpec, load_weights
from src.utils import fileio
from src.utils.errors import KarnnaError, first_line

FORMAT = "karnna-checkpoint"
VERSION = 1


def save(
    path: Path,
    model: CharRNN,
    vocab: Vocab,
    step: int,
    extra: Optional[dict[str, Any]] = None,
    before_publish: Optional[Callable[[], None]] = None,
) -> None:
    """Write the checkpoint to a temporary file, call `before_publish` (if given), then rename it
    into place: nothing sees `path` before before_publish has returned."""
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "model": model.spec.to_dict(),
        "vocab": vocab.to_dict(),
        "step": int(step),
        **(extra or {}),
    }

    def write(tmp: Path) -> None:
        # Through a Python file, a full disk raises OSError(ENOSPC), which fileio reports in one
        # line; torch's own writer turns it into a RuntimeError that does not say why.
        with open(tmp, "wb") as f:
            torch.save(payload, f)
        if before_publish is not None:
            before_publish()

    fileio.write_with(path, write)


class CorruptCheckpoint(KarnnaError):
    """An empty, truncated or otherwise unreadable checkpoint file (not a refused one)."""

    def __init__(self, path: Path, what: str):
        super().__init__(f"{path}: {what}; {recovery(path)}")
        self.what = what


def recovery(path: Path) -> str:
    return f"restore it (`dvc checkout --force {path}` for a pipeline output) or retrain (`dvc repro train`)"


def load_payload(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise KarnnaError(f"{path}: checkpoint not found; run `dvc repro train` (or pass an existing --checkpoint)")
    size = path.stat().st_size
    if size == 0:
        raise CorruptCheckpoint(path, "empty checkpoint (0 bytes)")
    # Checkpoints are zip archives: anything else is damage, never a checkpoint to refuse as untrusted.
    if not zipfile.is_zipfile(path):
        raise CorruptCheckpoint(path, f"truncated or corrupt checkpoint ({size:,} bytes, not a whole torch archive)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "GLOBAL" not in str(exc):  # the pickle itself is damaged
            raise CorruptCheckpoint(path, f"corrupt checkpoint ({first_line(exc, 160)})") from None
        raise KarnnaError(
            f"{path}: refused: the file holds objects other than tensors and plain data "
            f"({first_line(exc, 160)}); only load checkpoints you trust, and never with weights_only=False"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError, IndexError) as exc:
        raise CorruptCheckpoint(path, f"truncated or corrupt checkpoint ({first_line(exc, 160)})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise KarnnaError(f"{path}: not a karnna checkpoint (no '{FORMAT}' marker)")
    if payload.get("version") != VERSION:
        raise KarnnaError(f"{path}: checkpoint version {payload.get('version')!r}, this code reads {VERSION}; retrain")
    return payload


def load(path: Path, device: str | torch.device = "cpu") -> tuple[CharRNN, Vocab, dict[str, Any]]:
    """-> (model in eval mode on `device`, vocabulary, the whole payload)."""
    payload = load_payload(path)
    try:
        spec = ModelSpec(**payload["model"])
        vocab = Vocab.from_dict(payload["vocab"], f"{path} (vocabulary)")
        model = CharRNN(spec)
        load_weights(model, state_dict(payload), str(path))
        _average_in(model, payload)
    except (KeyError, TypeError) as exc:
        raise KarnnaError(
            f"{path}: checkpoint does not match the model code ({str(exc).splitlines()[0][:160]}); retrain"
        ) from None
    if spec.vocab_size != vocab.size:
        raise KarnnaError(
            f"{path}: model has {spec.vocab_size} outputs but the vocabulary {vocab.size} characters; retrain"
        )
    return model.to(device).eval(), vocab, payload


@torch.no_grad()
def _average_in(model: CharRNN, payload: dict[str, Any]) -> None:
    """A last.pt of a run with train.ema_decay holds the raw weights (to resume training) and their
    average: loaded to sample or score, it is the average, what that run validates and serves."""
    average = (payload.get("resume") or {}).get("average") or {}
    if average.get("shadow") is not None:  # None: before train.ema_start, the average is the weights
        for param, value in zip(model.parameters(), average["shadow"], strict=True):
            param.copy_(value)


def state_dict(payload: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The payload's weights under the names CharRNN gives them (`rnn.*`); a checkpoint whose
    model spec has no `cell` is an LSTM's that names its recurrent layers `lstm.*`."""
    weights = payload["state_dict"]
    if "cell" in payload["model"]:
        return weights
    return {("rnn." + k[len("lstm.") :] if k.startswith("lstm.") else k): v for k, v in weights.items()}


def check_vocab(checkpoint_vocab: Vocab, data_vocab: Vocab, path: Path) -> None:
    """A model only scores text encoded with its own vocabulary (same characters, same order,
    same newline policy); ids from another one would be silently wrong."""
    if checkpoint_vocab != data_vocab:
        diff = sorted(set(checkpoint_vocab.chars) ^ set(data_vocab.chars))
        what = (
            f"characters differ: {diff[:8]!r}"
            if diff
            else f"newline policy {checkpoint_vocab.newline!r} vs {data_vocab.newline!r}"
        )
        raise KarnnaError(
            f"{path}: trained with another vocabulary than data/vocab.json ({what}); "
            "retrain (`dvc repro train`) or restore the matching data"
        )
