"""A checkpoint's score on a split, and on the split's text before and after a marker.

    python -m benchmarks.split_parts [--checkpoint models/best.pt] [--split data/split/val.npy]
                                     [--marker "*** END OF"]

The novel's file ends with the Project Gutenberg licence (19,072 characters from its "*** END OF"
line), and with data.licence: keep the validation split is the file's last tenth: this says how
much of the split's score is the licence (where the marker is not found, only the whole split). Each part is scored as the evaluate stage scores a split (fp32, the
default evaluate.rows x evaluate.chunk_len, from a zero state); the parts' losses weighted by their
characters add up to the whole split's only roughly, since each part starts from a zero state.
"""

from __future__ import annotations

import argparse
import os
import zipfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from benchmarks.common import machine, table, write_json
from src.config.schema import Config
from src.model import checkpoint
from src.training import evaluate
from src.utils import cores
from src.utils.errors import KarnnaError

MARKER = "*** END OF"


def find(ids: np.ndarray, marker: np.ndarray) -> Optional[int]:
    """The offset of marker's first occurrence in ids, or None."""
    if len(marker) == 0 or len(marker) > len(ids):
        return None
    windows = np.lib.stride_tricks.sliding_window_view(ids, len(marker))
    hits = np.flatnonzero((windows == marker).all(axis=1))
    return int(hits[0]) if len(hits) else None


def parts(ids: np.ndarray, at: Optional[int]) -> dict[str, np.ndarray]:
    """The whole split, and its text before and after the marker where there is one (2+ chars each)."""
    found = {"whole": ids}
    if at is not None and at >= 2 and len(ids) - at >= 2:
        found.update({"before the marker": ids[:at], "from the marker": ids[at:]})
    return found


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.split_parts", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=Path("models/best.pt"), help="default: %(default)s")
    p.add_argument("--split", type=Path, default=Path("data/split/val.npy"), help="default: %(default)s")
    p.add_argument("--marker", default=MARKER, help="text where the second part starts (default: %(default)r)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    for path in (args.checkpoint, args.split):
        if not path.is_file():
            p.error(f"{path} does not exist; run `dvc repro evaluate` first, or pass its path")
    cores.reproducible_fp32(os.environ)  # as the evaluate stage, before torch's first product
    print(machine(torch.get_num_threads()))
    try:
        model, vocab, payload = checkpoint.load(args.checkpoint)
    except KarnnaError as e:  # a corrupt checkpoint: one line, naming it and the fix
        p.error(str(e))
    try:
        ids = np.load(args.split)
    except (ValueError, OSError, zipfile.BadZipFile) as e:  # np.load reads a file starting PK as a .npz
        p.error(f"{args.split}: not a split's .npy ({e}); pass one of data/split/{{val,test}}.npy")
    at = None if vocab.missing(args.marker) else find(ids, vocab.encode(args.marker))
    print(f"{args.split}: {len(ids):,} characters; {args.marker!r} " + ("not found" if at is None else f"at {at:,}"))
    ev = Config().evaluate
    scores = {}
    for name, part in parts(ids, at).items():
        scores[name] = {
            "chars": int(len(part)),
            "loss": evaluate.stream_loss(model, torch.from_numpy(part.astype("int64")), ev.rows, ev.chunk_len),
        }
    rows = [[n, f"{s['chars']:,}", f"{s['chars'] / len(ids):.1%}", f"{s['loss']:.4f}"] for n, s in scores.items()]
    print(table(["part", "characters", "share", "nats/char (fp32)"], rows))
    write_json(
        args.json, {"checkpoint": str(args.checkpoint), "step": payload["step"], "marker_at": at, "parts": scores}
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
