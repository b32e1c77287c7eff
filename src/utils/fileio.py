"""Atomic file writes: a crash never leaves a truncated file that a later stage would read.

Everything is written to a temporary file in the destination folder and renamed over the
target with os.replace, which is atomic on POSIX and Windows when both are on one filesystem.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Union

import yaml

from src.utils import faults
from src.utils.errors import KarnnaError

PathLike = Union[str, "os.PathLike[str]"]


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path`, else delete it.

    A full disk (ENOSPC, EDQUOT; also in what the writer raised it from) is one line naming
    `path`: the previous `path` is untouched and the partial temporary file is gone."""
    path = Path(path)
    with faults.writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        with faults.writing(path):
            os.chmod(tmp_path, new_file_mode())
            yield tmp_path
            with open(tmp_path, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def new_file_mode() -> int:
    """The mode open() gives a new file: 0o666 less the umask. mkstemp's own 0o600 would hide the
    models, metrics and splits from the rest of a team that shares the checkout's group."""
    try:
        with open("/proc/self/status") as f:  # Linux: read without changing it
            mask = next((int(line.split()[1], 8) for line in f if line.startswith("Umask:")), None)
    except OSError:
        mask = None
    if mask is None:  # elsewhere: set and restore at once, the only portable way to read it
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def write_with(path: PathLike, writer: Callable[[Path], Any]) -> None:
    """Atomically create `path` by calling writer(temporary_path)."""
    with atomic_path(path) as tmp:
        writer(tmp)


def write_bytes(path: PathLike, data: bytes) -> None:
    write_with(path, lambda p: p.write_bytes(data))


def write_text(path: PathLike, text: str) -> None:
    # newline="" keeps the text's own newlines: the newline policy is applied elsewhere, once.
    write_with(path, lambda p: p.write_text(text, encoding="utf-8", newline=""))


def write_json(path: PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_npy(path: PathLike, array: Any) -> None:
    import numpy as np

    def writer(p: Path) -> None:
        with open(p, "wb") as f:  # a file object, since np.save(path) would append ".npy"
            np.save(f, array, allow_pickle=False)

    write_with(path, writer)


def read_npy(path: PathLike) -> Any:
    import numpy as np

    return np.load(path, allow_pickle=False)


def map_npy(path: PathLike) -> Any:
    """A .npy memory-mapped read-only: pages are read as they are touched, so a split larger
    than memory opens at once and costs only what is read."""
    import numpy as np

    return np.load(path, mmap_mode="r", allow_pickle=False)


def write_npy_range(
    path: PathLike, source: PathLike, start: int, stop: int, on_bytes: Callable[[int], Any] = lambda n: None
) -> None:
    """Atomically write items start:stop of the 1-D .npy `source` as a .npy at `path` (np.save's
    bytes), copied in blocks with plain reads and writes: memory stays a block, whatever the size."""
    import numpy as np

    mapped = map_npy(source)
    dtype, offset = mapped.dtype, mapped.offset
    del mapped

    def writer(p: Path) -> None:
        header = np.lib.format.open_memmap(p, mode="w+", dtype=dtype, shape=(stop - start,))
        out_offset = header.offset  # np.save's header, written by open_memmap
        del header
        with open(source, "rb") as src, open(p, "r+b") as dst:
            src.seek(offset + start * dtype.itemsize)
            dst.seek(out_offset)
            left = (stop - start) * dtype.itemsize
            while left:
                block = src.read(min(_BLOCK, left))
                if not block:
                    raise KarnnaError(f"{source}: shorter than its header says; rerun the stage that wrote it")
                dst.write(block)
                left -= len(block)
                on_bytes(len(block))

    write_with(path, writer)


_BLOCK = 1 << 24


def remove_stale_temps(folder: PathLike) -> None:
    """Delete temporary files a killed process left behind (atomic_path's cleanup never ran)."""
    folder = Path(folder)
    if folder.is_dir():
        for tmp in folder.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)


def read_params(path: Path) -> dict:
    """params.yaml as a dict; a missing file or bad YAML is one line naming the file and the place."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KarnnaError(f"{path}: not found; run the stages from the repo root, where params.yaml lives") from None
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise KarnnaError(f"{Path(path).name}: not valid YAML{where}: {problem}") from None
