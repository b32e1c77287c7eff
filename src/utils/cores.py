"""Sharing this machine's cores between the karnna processes that train on it.

Two trainings that each take every core (torch's default) starve each other: OpenMP's threads
spin while they wait for a core the other process holds, and each runs several times slower
than alone (benchmarks/core_sharing.py measures a queued grid). So each process that trains on CPU
with `train.num_threads: auto` (a stage, a tuning worker) registers in one small JSON file, and
takes its share of the cores: the cores divided by the processes registered, the remainder to
the earliest. A process re-reads its share as it trains (`CoreShare.threads`), so the first
training gives a core back when a second starts and takes it again when the second ends.

The file is rewritten under an exclusive `flock`, so two processes starting at once both count
each other. Each entry holds a process id and that process's start time: a process killed
without leaving (SIGKILL, a crash) is dropped by the next reader, and a recycled process id is
not mistaken for it. Nothing here reads the environment; the entry points name the file
(`registry_path`).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Mapping, MutableMapping, Optional

from src.utils import fileio

try:
    import fcntl
except ImportError:  # Windows: no flock; the registry then only counts, without a lock
    fcntl = None

ENV = "KARNNA_CORES_FILE"  # another registry file (tests, or one shared by several users)


def registry_path(environ: Mapping[str, str]) -> Path:
    """$KARNNA_CORES_FILE from `environ`, else one file per user in the temp directory."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(environ.get(ENV) or Path(tempfile.gettempdir()) / f"karnna-{uid}" / "cores.json")


def reproducible_fp32(environ: MutableMapping[str, str]) -> None:
    """Put MKL in its strict reproducible mode (unless `environ` already chooses one): fp32 matrix
    products then give the same bits on any number of threads, so a training's losses do not
    depend on its share of the cores (tests/test_cores.py, with a control that differs without it).
    MKL reads the variable at its first product, so an entry point calls this before any torch
    arithmetic. bf16 (oneDNN) gives the same bits on any number of threads anyway."""
    environ.setdefault("MKL_CBWR", "AUTO,STRICT")


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. under `taskset` or a container's
    cpuset), else the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def start_time(pid: int) -> Optional[str]:
    """An id of process `pid`'s life: its start time in clock ticks since boot (Linux), "" where
    the OS does not say (the process id alone then); None when no such process runs."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        if Path("/proc/self/stat").exists():
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # another user's process: alive
        return ""
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: count from its closing one
    return stat[stat.rindex(")") + 2 :].split()[19]


def share(cores: int, rank: int, members: int) -> int:
    """Threads for the member at `rank` (0: the earliest) of `members`: at least one each."""
    each, extra = divmod(cores, members)
    return max(1, each + (rank < extra))


class CoreShare:
    """This process's entry in the registry at `path`, from `join()` (or `with`) to `leave()`."""

    def __init__(self, path: Path, cores: Optional[int] = None, pid: Optional[int] = None):
        self.path = Path(path)
        self.cores = cores or usable_cores()
        self.pid = pid or os.getpid()
        self.me = {"pid": self.pid, "start": start_time(self.pid)}

    def __enter__(self) -> "CoreShare":
        self.join()
        return self

    def __exit__(self, *exc) -> None:
        self.leave()

    def join(self) -> int:
        """Register; -> this process's threads now."""
        return self._update(lambda members: [*members, self.me] if self.me not in members else members)

    def leave(self) -> None:
        self._update(lambda members: [m for m in members if m != self.me])

    def threads(self) -> int:
        """This process's share now (the live members only)."""
        return self._update(lambda members: members)

    def members(self) -> list[dict]:
        return self._update(lambda members: members, count=False)

    def _update(self, change, count: bool = True):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            before = self._read()
            live = [m for m in before if start_time(m["pid"]) == m["start"]]
            members = change(live)
            if members != before:
                fileio.write_text(self.path, json.dumps(members) + "\n")
        if not count:
            return members
        rank = members.index(self.me) if self.me in members else len(members)
        return share(self.cores, rank, max(len(members), rank + 1))

    def _read(self) -> list[dict]:
        try:
            members = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return []  # none yet, or a file someone broke: start the count again
        ok = isinstance(members, list) and all(isinstance(m, dict) and {"pid", "start"} <= m.keys() for m in members)
        return members if ok else []
