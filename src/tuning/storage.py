"""Where a study lives: an Optuna journal file on one machine, a database shared by workers on
several; in a database, heartbeats mark a lost worker's trial failed and end its MLflow run, and
a database that is briefly away is waited for (src/tuning/retry.py)."""

from __future__ import annotations

import contextlib
import hashlib
import sys
import warnings
from pathlib import Path
from typing import Callable, Iterator, Optional

import optuna

from src.tracking import trials
from src.tracking.store import exclusive as flocked
from src.tuning.retry import PatientRDBStorage, StorageLost
from src.utils.errors import KarnnaError
from src.utils.errors import redact_url as _redact


def storage_for(
    url: Optional[str],
    default_journal: Path,
    heartbeat: int = 60,
    on_lost: Optional[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]] = None,
    retry_s: float = 30.0,
) -> optuna.storages.BaseStorage | str:
    """An Optuna storage: a URL as given (e.g. postgresql://...), or the journal file.

    The journal file (not SQLite) is the default because SQLite's locking breaks under several
    writer processes, while the journal appends with a file lock. In a database, each running
    trial beats every `heartbeat` seconds; a trial silent for three beats (its worker was killed
    or its machine lost) is marked FAIL by the next worker that starts a trial, which calls
    `on_lost` for it. A database unreachable for up to `retry_s` seconds is waited for; longer,
    and the call raises StorageLost."""
    if retry_s < 0:
        raise KarnnaError(f"--db-retry is {retry_s:g}; use 0 seconds or more")
    if url:
        if url.startswith(("postgresql", "mysql", "sqlite")):
            try:
                with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.9
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    return PatientRDBStorage(
                        url,
                        retry_s,
                        heartbeat_interval=heartbeat,
                        grace_period=3 * heartbeat,
                        heartbeat_stale_trial_callback=on_lost,
                    )
            except Exception as exc:  # sqlalchemy raises many kinds; all mean "cannot use this URL"
                raise KarnnaError(
                    f"cannot open the study storage {_redact(url)}: {str(exc).splitlines()[0][:200]}; "
                    "check the URL, that the server is running and reachable, and the driver (psycopg) is installed"
                ) from None
        if url.endswith(".log") or url.startswith("journal:"):
            path = Path(url.removeprefix("journal:"))
            return _journal(path)
        raise KarnnaError(
            f"--storage {url!r}: expected postgresql://, mysql://, sqlite:/// or a journal file ending in .log"
        )
    return _journal(default_journal)


class JournalFile(optuna.storages.JournalStorage):
    """A journal storage that remembers its file, which exclusive() locks."""

    def __init__(self, path: Path):
        from optuna.storages.journal import JournalFileBackend

        super().__init__(JournalFileBackend(str(path)))
        self.path = path


def _journal(path: Path) -> JournalFile:
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalFile(path)


@contextlib.contextmanager
def exclusive(storage: optuna.storages.BaseStorage | str, name: str) -> Iterator[None]:
    """Held by one process at a time among all that share `storage` (on any machine, for a
    database): for a check-then-create no two workers may interleave, such as the study's parent
    run. The lock dies with its holder: a database connection's lock, or flock on the file (which
    interacts with neither SQLite's nor the journal's own locks on Linux)."""
    if isinstance(storage, JournalFile):
        with flocked(storage.path):
            yield
        return
    engine = getattr(storage, "engine", None)
    dialect = engine.dialect.name if engine is not None else None
    if dialect == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        with flocked(Path(engine.url.database)):
            yield
    elif dialect in ("postgresql", "mysql"):
        import sqlalchemy

        key = int.from_bytes(hashlib.blake2b(f"karnna:{name}".encode(), digest_size=8).digest(), "big", signed=True)
        take, give = {
            "postgresql": ("SELECT pg_advisory_lock(:k)", "SELECT pg_advisory_unlock(:k)"),
            "mysql": ("SELECT GET_LOCK(:n, -1)", "SELECT RELEASE_LOCK(:n)"),
        }[dialect]
        args = {"k": key} if dialect == "postgresql" else {"n": f"karnna:{name}"[:64]}

        def lock(_storage: object = None) -> sqlalchemy.Connection:
            # The lock belongs to this connection: a worker that dies frees it with the connection.
            conn = engine.connect()
            try:
                conn.execute(sqlalchemy.text(take), args)
            except BaseException:
                conn.invalidate()
                conn.close()
                raise
            return conn

        # A database briefly away is waited for, as for every other storage call.
        conn = storage._patiently(lock) if isinstance(storage, PatientRDBStorage) else lock()
        try:
            yield
        finally:
            try:
                conn.execute(sqlalchemy.text(give), args)
            except Exception:  # closing the connection frees its lock too
                conn.invalidate()
            conn.close()
    else:  # in memory: one process
        yield


def lost_trial_callback(tracking_uri: Optional[str]) -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None]:
    """Ends the MLflow run of a trial whose worker stopped beating: FAILED, with the reason."""

    def on_lost(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        worker = trial.user_attrs.get("worker", "its worker")
        trials.end_failed_run(
            tracking_uri,
            trial.user_attrs.get("mlflow_run_id"),
            f"worker lost: no heartbeat from {worker}",
            {"optuna.state": "FAIL"},
        )
        print(f"trial {trial.number}: marked failed, no heartbeat from {worker}", file=sys.stderr)

    return on_lost


@contextlib.contextmanager
def run_failed_on_loss(tracking_uri: Optional[str], run_id: Optional[str]) -> Iterator[None]:
    """The study's MLflow run ends FAILED, with the reason, when this worker loses the database
    (a rerun reopens it); its trial's own run ends FAILED on the way out of the trial."""
    try:
        yield
    except StorageLost as exc:
        with contextlib.suppress(Exception):  # the tracking store may be on the same server
            trials.end_failed_run(tracking_uri, run_id, str(exc))
        raise
