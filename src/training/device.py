"""Device and precision selection: one code path for CPU, CUDA and MPS."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import platform
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

import torch

from src.model.cells import CELLS
from src.utils.cores import CoreShare
from src.utils.errors import KarnnaError


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when present, else MPS, else CPU; an explicit device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise KarnnaError("train.device is 'cuda' but torch sees no CUDA GPU; set train.device: auto or cpu")
    if name == "mps" and not _mps_available():
        raise KarnnaError("train.device is 'mps' but this machine has no MPS backend; set train.device: auto or cpu")
    return torch.device(name)


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def cpu_has_fast_bf16(cpuinfo: Optional[str] = None) -> bool:
    """True where the CPU has bf16 dot-product instructions (AVX512-BF16 or AMX-BF16).

    Without them bf16 autocast is emulated and slower than fp32, so 'auto' keeps fp32 there.
    A rule rather than a measurement: the precision changes the losses, and a timing taken in a
    noisy moment must not decide them (docs/DESIGN.md, "Fast paths"). `cpuinfo`: the text of
    /proc/cpuinfo (default: this machine's; not Linux: no fast bf16 assumed).
    """
    if cpuinfo is None:
        if not sys.platform.startswith("linux"):
            return False
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


@functools.cache
def cpu_bf16_fails(cell: str = "lstm") -> Optional[str]:
    """None where torch runs a `cell` layer's forward and backward under bf16 autocast on this CPU,
    else the first sentence of its error. oneDNN has no bf16 LSTM below AVX-512: on an AVX2 CPU (or
    this one with ONEDNN_MAX_CPU_ISA=AVX2) nn.LSTM raises "could not create a primitive
    descriptor", while GRU and RNN run. A probe on a 4-wide layer, once per process and cell."""
    try:
        with torch.random.fork_rng(devices=[]):  # the probe's random weights leave the seeded stream alone
            layer = CELLS[cell].build(4, 8)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out, _ = layer(torch.randn(3, 2, 4))
            out.float().sum().backward()
    except RuntimeError as exc:
        return (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0]
    return None


def resolve_precision(name: str, device: torch.device, cell: str = "lstm") -> Optional[torch.dtype]:
    """-> the autocast dtype, or None for plain fp32. On CPU, 'auto' is bf16 only where the CPU
    has bf16 instructions and torch runs the cell in bf16 there; an explicit 'bf16' that torch
    cannot run is an error here, before the first training step."""
    if name == "fp32":
        return None
    if device.type == "cpu" and (name == "bf16" or cpu_has_fast_bf16()):
        failure = cpu_bf16_fails(cell)
        if failure and name == "bf16":
            raise KarnnaError(
                f"train.precision is bf16, but torch cannot run a bf16 {cell.upper()} on this CPU "
                f"({failure}); set train.precision: auto (fp32 here) or fp32"
            )
        return None if failure else torch.bfloat16
    if name == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return None


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def precision_name(dtype: Optional[torch.dtype]) -> str:
    return "fp32" if dtype is None else str(dtype).replace("torch.", "").replace("bfloat16", "bf16")


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>
_KEEP_BELOW = 1 << 30


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed blocks (up to 1 GiB) for reuse instead of returning them to the OS.

    By default glibc serves blocks from 128 KiB (rising to 32 MiB) with mmap and unmaps them at free,
    and trims freed memory off the top of the heap. A training step allocates and frees the same
    activations, gates and gradients every time, so with the defaults each step has the kernel fault
    in and zero them again: a large share of a CPU step (docs/BENCHMARKS.md, "Precision and the training step"). The price: the process
    keeps its peak memory (docs/DESIGN.md, "Freed memory on CPU"). Process-wide, like
    torch.set_num_threads. Returns whether it applied:
    False where the C library is not glibc (macOS, musl), which keeps its default.
    """
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)  # the C library this process already runs on
    return libc.mallopt(_M_MMAP_THRESHOLD, _KEEP_BELOW) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_BELOW) == 1


def configure_process(num_threads: Union[int, str], device: torch.device) -> bool:
    """The process-wide settings of a training or evaluation, for entry points only (stages,
    `python -m src.tune`, the training benchmarks): torch's intra-op threads (0: torch's default;
    "auto": left to `shared_cores`) and, on CPU, glibc's malloc keeping freed memory. Never called
    by the library: two trainings in one process would otherwise change each other's settings.
    -> whether malloc keeps freed memory."""
    if isinstance(num_threads, int) and num_threads:
        torch.set_num_threads(num_threads)
    return device.type == "cpu" and keep_freed_memory()


@contextlib.contextmanager
def shared_cores(
    num_threads: Union[int, str], device: torch.device, registry: Path, every: float = 1.0
) -> Iterator[Callable[[], Optional[int]]]:
    """For an entry point that trains: with train.num_threads "auto" on CPU, this process's share
    of the machine's cores (src/utils/cores.py) while the block runs. Yields `rebalance`, for
    train()'s `on_log`: it re-reads the share (at most once per `every` seconds) and sets torch's
    threads when the share changed, -> the threads now. It must run in the training thread:
    OpenMP's thread count belongs to the thread that sets it. Otherwise (a fixed count, a GPU)
    rebalance does nothing and returns None. The losses do not depend on the count (bf16: oneDNN;
    fp32: MKL in its strict reproducible mode, which the training entry points switch on)."""
    if num_threads != "auto" or device.type != "cpu":
        yield lambda: None
        return
    with CoreShare(registry) as share:
        last = -float("inf")

        def rebalance() -> Optional[int]:
            nonlocal last
            if time.monotonic() - last >= every:
                last = time.monotonic()
                threads = share.threads()
                if threads != torch.get_num_threads():
                    torch.set_num_threads(threads)
            return torch.get_num_threads()

        rebalance()
        yield rebalance
