"""Encoding the novel: src.data.vocab against the seed's per-character dict lookup; optionally a no-op `dvc repro`.

    python -m benchmarks.encode_speed [--repeats 7] [--dvc]

- reference: the seed's encoding, a set for the vocabulary and a Python list comprehension over
  the characters into np.array.
- project: src.data.vocab.build_vocab + Vocab.encode (numpy searchsorted over code points), and the
  whole encode stage's work (read, decode, newline policy, vocabulary, ids).
Both alternate in every repeat; figures are medians. With --dvc, and only when `dvc status` says
the pipeline is up to date (so that nothing gets trained), `dvc repro` is timed as well.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

from benchmarks.common import REPO, machine, median, read_novel, table, timed
from src.data.vocab import build_vocab


def seed_encode(text: str) -> np.ndarray:
    vocab = set(text)
    vocab_to_int = {c: i for i, c in enumerate(vocab)}
    return np.array([vocab_to_int[c] for c in text], dtype=np.int32)


def project_encode(text: str) -> np.ndarray:
    return build_vocab(text, "lf").encode(text)


def dvc_noop_seconds() -> Optional[float]:
    """Seconds of `dvc repro` on an up-to-date pipeline, or None (with the reason printed)."""
    dvc = Path(sys.executable).with_name("dvc")
    status = subprocess.run([str(dvc), "status"], cwd=REPO, capture_output=True, text=True)
    if status.returncode != 0 or "up to date" not in status.stdout:
        print(
            "dvc: not timed: `dvc status` does not say the pipeline is up to date (a repro would run "
            "stages); run `dvc repro` once, then this again"
        )
        return None
    start = time.perf_counter()
    run = subprocess.run([str(dvc), "repro"], cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if run.returncode != 0:
        print(f"dvc: `dvc repro` failed: {(run.stderr or run.stdout).strip().splitlines()[-1:]}")
        return None
    return seconds


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.encode_speed", description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7, help="default: %(default)s")
    p.add_argument("--dvc", action="store_true", help="also time a no-op `dvc repro`")
    args = p.parse_args(argv)
    print(machine())
    text = read_novel()
    ours, theirs = project_encode(text), seed_encode(text)
    # The two vocabularies order characters differently (the seed's set has no fixed order): same text, other ids.
    assert len(ours) == len(theirs) == len(text) and len(np.unique(ours)) == len(np.unique(theirs))
    times: dict[str, list[float]] = {"seed": [], "project": [], "stage": []}
    for _ in range(args.repeats):
        times["seed"].append(timed(lambda: seed_encode(text)))
        times["project"].append(timed(lambda: project_encode(text)))
        times["stage"].append(timed(lambda: project_encode(read_novel())))
    seed = median(times["seed"])
    rows = [
        ["reference: set + dict lookup per character", f"{seed:.3f}", "1.0x", "-"],
        [
            "project: build_vocab + encode",
            f"{median(times['project']):.3f}",
            f"{seed / median(times['project']):.1f}x",
            "met" if median(times["project"]) < 0.5 else "not met",
        ],
        [
            "project: read + decode + newlines + vocabulary + ids",
            f"{median(times['stage']):.3f}",
            f"{seed / median(times['stage']):.1f}x",
            "met" if median(times["stage"]) < 0.5 else "not met",
        ],
    ]
    print(f"\nthe novel: {len(text):,} characters, {len(np.unique(ours))} distinct; medians of {args.repeats}")
    print(table(["encoding", "seconds", "speed-up over the reference", "goal < 0.5 s"], rows))
    if args.dvc:
        seconds = dvc_noop_seconds()
        if seconds is not None:
            print(f"\nno-op `dvc repro`: {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
