"""What the speed benchmarks share: the novel, the machine's description, timing and tables."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import torch

from src.data import corpus
from src.data.splits import split_ids
from src.data.vocab import Vocab, build_vocab
from src.training.device import configure_process, cpu_has_fast_bf16

REPO = Path(__file__).resolve().parents[1]
PIPELINE_CORPUS = REPO / "data" / "corpus.txt"


def novel_path() -> Optional[Path]:
    """The novel beside the checkout, else the corpus stage's copy, else None."""
    path = corpus.locate(None, REPO) or PIPELINE_CORPUS
    return path if path.is_file() else None


def read_novel() -> str:
    """The novel with LF newlines, as the encode stage reads it (data.newline: lf)."""
    path = novel_path()
    if path is None:
        sys.exit(
            f"no corpus: neither {REPO / corpus.SHARED_CORPUS} nor {PIPELINE_CORPUS} exists; "
            "run `dvc repro corpus` first"
        )
    return corpus.normalise_newlines(corpus.decode_utf8(path.read_bytes(), str(path)), "lf")


def novel_split() -> tuple[Vocab, np.ndarray, np.ndarray]:
    """vocab, train ids, val ids: the pipeline's default split (the last 10% is validation)."""
    text = read_novel()
    vocab = build_vocab(text, "lf")
    split = split_ids(vocab.encode(text), 0.1, 0.0)
    return vocab, split.train, split.val


FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")  # what the fast paths hinge on


def cpu_info() -> tuple[str, list[str]]:
    """-> the CPU's model name and which of FEATURES its flags list (Linux; elsewhere none)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and name == (platform.processor() or platform.machine()):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return name, [f for f in FEATURES if f in flags]


# The libraries' own switches that make this CPU run another CPU's instruction set (a lower one):
# a run under them stands in for an older CPU on the same cores (docs/BENCHMARKS.md, "Instruction sets below the Zen 5's").
ISA_CAPS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "OPENBLAS_CORETYPE")


def machine(threads: Optional[int] = None) -> str:
    name, features = cpu_info()
    bf16 = "bf16 dot-product instructions" if cpu_has_fast_bf16() else "no fast bf16"
    amx = "AMX" if "amx_bf16" in features else "no AMX"
    threads_text = "" if threads is None else f"{threads} torch thread(s), "
    caps = [f"{k}={os.environ[k]}" for k in ISA_CAPS if os.environ.get(k)]
    caps_text = f"; instruction sets capped: {' '.join(caps)}" if caps else ""
    return (
        f"{date.today().isoformat()}, {name} ({os.cpu_count()} cores, {bf16}, {amx}; flags: {' '.join(features) or '-'}; "
        f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}{caps_text}), torch {torch.__version__}, "
        f"{threads_text}Python {platform.python_version()}"
    )


def threads_arg(value: str) -> int:
    """--threads: 0 means torch's default (one per core)."""
    n = int(value)
    return n or torch.get_num_threads()


def add_glibc_default(parser: argparse.ArgumentParser) -> None:
    """The training benchmarks' switch to measure what keeping freed memory saves (training_process)."""
    parser.add_argument(
        "--glibc-default", action="store_true", help="leave glibc's malloc at its default (the train stage does not)"
    )


def training_process(threads: int, glibc_default: bool = False) -> tuple[bool, str]:
    """Set this process up as the train stage sets up its own, for benchmarks that time training steps.

    src.training.device.configure_process, the stages' own: torch's threads and glibc's malloc keeping
    freed memory. Without that, every step faults its activations and oneDNN's workspace in
    again, a cost the pipeline does not pay, which a profile shows as autograd bookkeeping and
    copies. `glibc_default` leaves malloc as it is, to measure that cost.
    -> (whether malloc keeps freed memory, a line saying so).
    """
    if glibc_default:
        torch.set_num_threads(threads)
        return False, "glibc malloc: default (returns freed memory; every step faults it in again)"
    if configure_process(threads, torch.device("cpu")):
        return (
            True,
            "glibc malloc: keeps freed memory, as the train stage sets it (src.training.device.configure_process)",
        )
    return False, "malloc: the C library's default (not glibc: src.training.device.keep_freed_memory does not apply)"


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def time_each(fn: Callable[[], object], n: int) -> list[float]:
    """Seconds of each of n calls."""
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A Markdown table, ready to paste into docs/BENCHMARKS.md."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt_rate(x: float) -> str:
    """Characters (or FLOPs) per second, short: 12.3k, 1.25M, 321G."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def write_json(path: Optional[Path], payload: dict) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {path}")
