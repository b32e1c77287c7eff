"""A study database that is briefly away (restarted, failed over, a network blip) is waited for.

Optuna's RDBStorage fails the first call that meets a stopped server, and Optuna's trial loop then
writes the trial's state to the same server, fails again, and dies in its own UnboundLocalError
(about 300 lines), leaving the trial RUNNING. PatientRDBStorage retries every storage call whose
error says the server cannot be reached, for up to `retry_s` seconds from the start of the outage
(one line when it goes, one when it is back), so a trial goes on through a blip. Past that, the
call raises StorageLost: a BaseException, as KeyboardInterrupt is, so it passes Optuna's
`except Exception` (which would write to the storage again) and the MLflow runs end FAILED on the
way out; the entry point says it in one line. The trial stays RUNNING in the database, which
cannot be written; the next worker to start a trial marks it failed by its missing heartbeat.

A call retried after a commit whose answer was lost may be applied twice (a trial created twice,
a state set on a finished trial); both need the server to go at that very moment, and neither
corrupts the study.
"""

from __future__ import annotations

import functools
import inspect
import sys
import threading
import time
from typing import Any, Callable, Optional

import optuna
import sqlalchemy.exc

from src.utils.errors import first_line, redact_url

POLL_S = 1.0  # between attempts: a refused connection answers at once
CONNECT_TIMEOUT_S = 5  # one attempt on a host that does not answer at all


class StorageLost(BaseException):
    """The study database stayed unreachable for the whole retry window."""


def unreachable(exc: BaseException) -> Optional[BaseException]:
    """The error in `exc`'s chain that says the database cannot be reached, else None.

    SQLAlchemy raises OperationalError for a refused or dropped connection and a server shutting
    down; RDBStorage wraps it in StorageInternalError."""
    seen: Optional[BaseException] = exc
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)) or (
            isinstance(seen, sqlalchemy.exc.DBAPIError) and seen.connection_invalidated
        ):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _reason(exc: BaseException) -> str:
    return first_line(getattr(exc, "orig", None) or exc)  # SQLAlchemy's wrapper adds a paragraph


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class PatientRDBStorage(optuna.storages.RDBStorage):
    """RDBStorage whose calls wait up to `retry_s` seconds for an unreachable database.

    Optuna still wraps it in its cache (it is an RDBStorage), which calls the methods below."""

    def __init__(self, url: str, retry_s: float = 30.0, log: Callable[[str], None] = _stderr, **kwargs: Any):
        engine = {"pool_pre_ping": True}  # a connection the server dropped is replaced, not used
        if url.startswith("postgresql"):
            engine["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
        super().__init__(url, engine_kwargs=engine, **kwargs)
        self.retry_s = retry_s
        self.log = log
        self._down_since: Optional[float] = None
        self._outage_lock = threading.Lock()

    def _went_away(self, cause: BaseException) -> float:
        """When the outage began: now, said once, for the first call that meets it."""
        with self._outage_lock:
            if self._down_since is None:
                self._down_since = time.monotonic()
                self.log(
                    f"warning: study storage {redact_url(self.url)} unreachable ({_reason(cause)}); "
                    f"retrying for up to {self.retry_s:g} s"
                )
            return self._down_since

    def _answered(self) -> None:
        with self._outage_lock:
            if self._down_since is not None:
                self.log(
                    f"study storage {redact_url(self.url)} is back after "
                    f"{time.monotonic() - self._down_since:.0f} s; going on"
                )
                self._down_since = None

    def _patiently(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        while True:
            try:
                result = method(self, *args, **kwargs)
            except Exception as exc:
                cause = unreachable(exc)
                if cause is None:
                    raise
                left = self._went_away(cause) + self.retry_s - time.monotonic()
                if left <= 0:
                    raise StorageLost(
                        f"study storage {redact_url(self.url)} unreachable for {self.retry_s:g} s "
                        f"({_reason(cause)}); this worker stopped. Once the database is back, rerun "
                        "the command: the trial it was running is then marked failed (no heartbeat)"
                    ) from None
                time.sleep(min(POLL_S, left))
                continue
            self._answered()
            return result

    def record_heartbeat(self, trial_id: int) -> None:
        """One attempt: a beat missed in an outage is harmless, the next one counts (and the
        heartbeat thread must neither block the trial's end nor die with a traceback)."""
        try:
            super().record_heartbeat(trial_id)
        except Exception as exc:
            cause = unreachable(exc)
            if cause is None:
                raise
            self._went_away(cause)
            return
        self._answered()


def _patient(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(self: PatientRDBStorage, *args: Any, **kwargs: Any) -> Any:
        return self._patiently(method, *args, **kwargs)

    return call


# Every method of RDBStorage that opens its own session, public or not (Optuna's cache calls some
# private ones): one retried as a whole is one transaction tried again. Those given a session
# run inside another's transaction, which is what gets retried.
for _name, _method in list(vars(optuna.storages.RDBStorage).items()):
    if (
        inspect.isfunction(_method)
        and not _name.startswith("__")
        and _name not in vars(PatientRDBStorage)
        and "session" not in inspect.signature(_method).parameters
    ):
        setattr(PatientRDBStorage, _name, _patient(_method))
