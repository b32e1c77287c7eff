"""How an entry point ends when the world, not its input, stops it: a signal or a full disk.

Every entry point (the pipeline stages through pipeline/common.py, and each `python -m src.<tool>`
command's main(), a tuner's worker processes included) runs its work through `run`, the one place
that writes the `error: ` line (tests/test_house_rules.py):

- bad input (KarnnaError) and a full disk (ENOSPC, EDQUOT, SQLite's "database or disk is full")
  are one line `error: ...` on stderr and exit status 2;
- SIGTERM (what kill, systemd, Kubernetes and batch schedulers send) is handled like Ctrl-C: it
  raises `Terminated`, a KeyboardInterrupt, so everything that cleans up after Ctrl-C does the
  same for it (atomic writes drop their temporary file, the MLflow run ends KILLED, a tuner's
  trial and worker processes stop); then one line and exit status 143 (130 for SIGINT).

Writes are atomic (src/utils/fileio.py), so whatever stopped the process, the files it had written
are complete and the previous versions of the ones it was writing are untouched.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

from src.utils.errors import KarnnaError, first_line

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# What SQLite (under MLflow and Optuna) and torch's own writer say instead of an errno.
DISK_FULL_WORDS = ("database or disk is full", "No space left on device", "Disk quota exceeded")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises KeyboardInterrupt."""


def disk_full(exc: BaseException) -> bool:
    """Whether `exc`, or any exception it was raised from or while handling, is a full disk."""
    return any(
        (isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS) or any(w in str(e) for w in DISK_FULL_WORDS)
        for e in _chain(exc)
    )


@contextlib.contextmanager
def writing(path: Union[str, "os.PathLike[str]"]) -> Iterator[None]:
    """A full disk met while the block writes `path` becomes disk_full_error's one line."""
    try:
        yield
    except KarnnaError:
        raise
    except Exception as exc:
        if disk_full(exc):
            raise disk_full_error(path, exc) from None
        raise


def disk_full_error(path: Union[str, "os.PathLike[str]"], exc: BaseException) -> KarnnaError:
    """The one line for a write of `path` that found the disk full."""
    path = Path(path)
    quota = any(isinstance(e, OSError) and e.errno == errno.EDQUOT for e in _chain(exc))
    why = "the disk quota is exceeded" if quota else "no space left on device"
    kept = f"; the previous {path.name} is kept" if path.exists() else ""
    return KarnnaError(f"{path}: not written, the disk is full ({why}){kept}; free space on that disk and run it again")


def describe_disk_full(exc: BaseException, store: Optional[str] = None) -> str:
    """One line for a full disk met outside src/utils/fileio.py: the file when the OS named it, else the
    tracking store's database when SQLite is what said so."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS and e.filename:
            return str(disk_full_error(e.filename, e))
    if any("database or disk is full" in str(e) for e in _chain(exc)):
        where = f"the tracking store {store}" if store else "a SQLite database (the tracking store or the study)"
        return f"{where}: not written, the disk is full (database or disk is full); free space on that disk and run it again"
    return f"the disk is full ({first_line(exc)}); free space and run it again"


def _chain(exc: Optional[BaseException]) -> Iterator[BaseException]:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def run(
    main: Callable[[], Optional[int]],
    name: str,
    store: Optional[str] = None,
    quiet_interrupt: bool = False,
) -> int:
    """main()'s exit status, with SIGTERM handled like Ctrl-C and faults as one line (module doc).

    `store` names the tracking store in a full disk's message; `quiet_interrupt` keeps a worker
    process that its caller stops from repeating the caller's line."""
    restore = _handle_signals()
    quiet = _QuietReraised()
    for logger in QUIETED:
        logging.getLogger(logger).addFilter(quiet)
    try:
        return main() or 0
    except KarnnaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated)
        if not quiet_interrupt:
            print(
                f"{name}: stopped by {'SIGTERM' if terminated else 'SIGINT'}; what it had written is complete, "
                "run it again to go on",
                file=sys.stderr,
            )
        return 128 + (signal.SIGTERM if terminated else signal.SIGINT)
    except Exception as exc:
        if not disk_full(exc):
            raise
        print(f"error: {describe_disk_full(exc, store)}", file=sys.stderr)
        return 2
    finally:
        for logger in QUIETED:
            logging.getLogger(logger).removeFilter(quiet)
        restore()


def _handle_signals() -> Callable[[], None]:
    """SIGTERM raises Terminated once; after the first SIGINT or SIGTERM, SIGTERM is ignored, so
    a second one (a tuner stopping its workers, a scheduler repeating itself) cannot break the
    clean-up of the first. SIGKILL still ends it. -> a function that puts the old handlers back."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # only the main thread may set handlers (a test calling main())
    old_term, old_int = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)

    def stopping(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C means now
        raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()

    signal.signal(signal.SIGTERM, stopping)
    signal.signal(signal.SIGINT, stopping)

    def restore() -> None:
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGINT, old_int)

    return restore


class _QuietReraised(logging.Filter):
    """Drops what libraries log about an error they raise again, which `run` reports in one line
    (or the caller handles): MLflow's SQL store logs every database error with its traceback, and
    Optuna a trial interrupted by a signal with the interrupted stack, then its value (None)."""

    def __init__(self):
        super().__init__()
        self.followers: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("SQLAlchemy database error"):
            return False
        if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):
            self.followers.add(message.split(" failed with parameters")[0] + " failed with value ")
            return False
        follower = next((f for f in self.followers if message.startswith(f)), None)
        self.followers.discard(follower)
        return follower is None


QUIETED = ("mlflow.store.db.utils", "optuna.study._optimize")
