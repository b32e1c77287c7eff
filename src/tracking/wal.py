"""What a training run logs, on its way to the MLflow store: sent in order by one thread, and
kept in a write-ahead file beside the checkpoints while the store does not answer.

Each record is one store call (a metric batch, params, tags, an artifact, the end status) and
names its store and run. The `Outbox` sends them from a thread of its own; `save()` (before each
resumable checkpoint) appends what the store has not confirmed to `<models>/tracking-pending/
log.jsonl`, fsynced, and the file is removed once the store has confirmed everything. Replaying
is idempotent: MLflow ignores a metric point identical to one it has (key, value, timestamp,
step), a param logged again with the same value, a tag or status set again, an artifact
uploaded again. See docs/TRACKING.md, "When the store is away".
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import shutil
import threading
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, MutableMapping, Optional

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.protos import databricks_pb2
from mlflow.tracking import MlflowClient

from src.tracking.store import StoreUnreachable, connect, tag_value
from src.utils import faults
from src.utils.errors import KarnnaError, first_line

FOLDER = "tracking-pending"
COPIES = "copies"  # artifacts as they were when kept, one folder each
FILES = "files"  # files written to be logged (the loss figure, samples), one folder each
# While the store is away the sender tries again this often (an attempt costs the bounded
# client retries below); a closing run tries once more at once.
RETRY_S = 5.0
# MLflow 3.17's client retries a refused connection 7 times with backoff factor 2 and a 120 s
# timeout, minutes per call; bounded, a call to a dead server fails in about 3 s and a black-holed
# one in about 30 s.
CLIENT_LIMITS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}


def bound_client_retries(environ: MutableMapping[str, str]) -> None:
    """Put CLIENT_LIMITS in an entry point's `environ` (os.environ, which MLflow reads), before any
    MLflow call, where the user has not set them: a dead store fails in seconds, not minutes."""
    for name, value in CLIENT_LIMITS.items():
        environ.setdefault(name, value)


# Errors that say the request itself was refused: sending it again would not help.
_REFUSED = {
    databricks_pb2.ErrorCode.Name(code)
    for code in (
        databricks_pb2.INVALID_PARAMETER_VALUE,
        databricks_pb2.RESOURCE_DOES_NOT_EXIST,
        databricks_pb2.RESOURCE_ALREADY_EXISTS,
        databricks_pb2.INVALID_STATE,
        databricks_pb2.BAD_REQUEST,
        databricks_pb2.PERMISSION_DENIED,
        databricks_pb2.UNAUTHENTICATED,
    )
}
SYNC_COMMAND = "python -m src.tracking_sync"


def is_outage(exc: BaseException) -> bool:
    """Whether `exc` says the store did not answer (try later), not that it refused the request.
    A store whose disk is full answers, and cannot keep anything: that stops the run, in one line
    (src.utils.faults), since the records kept meanwhile would most often fill the same disk."""
    if faults.disk_full(exc):
        return False
    if isinstance(exc, (StoreUnreachable, OSError)):
        return True
    return isinstance(exc, MlflowException) and exc.error_code not in _REFUSED


def reason(exc: BaseException) -> str:
    """The gist of a failed store call: the socket error where there is one (MLflow wraps it in
    a paragraph about retries), else the first line."""
    if getattr(exc, "gist", None):
        return exc.gist
    found = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(exc))
    return found.group(1).strip()[:160] if found else first_line(exc, 160)


def shown(path: Path) -> Path:
    """`path` as the user would type it: relative to the working directory when inside it."""
    try:
        return Path(path).relative_to(Path.cwd())
    except ValueError:
        return Path(path)


class WriteAheadLog:
    """`<folder>/log.jsonl`: one JSON record a line, appended and fsynced; files the records
    name that would otherwise vanish (the loss figure) are kept beside it."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.file = self.folder / "log.jsonl"

    def read(self) -> list[dict[str, Any]]:
        if not self.file.is_file():
            return []
        records = []
        for line in self.file.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # torn by a crash mid-append: never fsynced, so no checkpoint relies on it
        return records

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        records = list(records)
        if not records:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        with faults.writing(self.file):
            text = "".join(json.dumps(self._copied(r), allow_nan=True) + "\n" for r in records)
            with open(self.file, "a+b") as f:
                if f.tell() > 0:
                    f.seek(-1, os.SEEK_END)
                    if f.read(1) != b"\n":
                        text = "\n" + text  # end a line torn by a crash before appending
                f.write(text.encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(fd)  # the file's name too, the first time
        finally:
            os.close(fd)

    def _copied(self, record: dict[str, Any]) -> dict[str, Any]:
        """An artifact record as kept: it names a copy of the file made now, so that sent later it
        is the file as logged, whatever the path holds by then (a rerun rewrites params.yaml)."""
        if "artifact" not in record or record.get("kept") or not Path(record["artifact"]).exists():
            return record
        source = Path(record["artifact"])
        copy = self.folder / COPIES / uuid.uuid4().hex / source.name
        copy.parent.mkdir(parents=True)
        if source.is_dir():
            shutil.copytree(source, copy)
        else:
            shutil.copy2(source, copy)
        return {**record, "artifact": str(copy), "kept": True}

    def keep(self, name: str) -> Path:
        """A path beside the log for a file that a record will name."""
        path = self.folder / FILES / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def clear(self) -> None:
        """Forget what is kept: everything was sent (the copies too, as their originals)."""
        self.file.unlink(missing_ok=True)
        shutil.rmtree(self.folder / COPIES, ignore_errors=True)

    def drop_files(self) -> None:
        """Remove the files written to be logged (no writer may be running): once the log is
        sent, what is left there was written by a writer killed before its record reached the log,
        and a resumed run logs that step again."""
        shutil.rmtree(self.folder / FILES, ignore_errors=True)

    def tidy(self) -> None:
        """Remove the folder once it holds no file (no writer may be running)."""
        if self.folder.is_dir() and not any(p.is_file() for p in self.folder.rglob("*")):
            shutil.rmtree(self.folder, ignore_errors=True)


def send(client: MlflowClient, record: dict[str, Any]) -> None:
    """One record as the store call it stands for."""
    run = record["run"]
    if "metrics" in record:
        client.log_batch(run, metrics=[Metric(k, float(v), int(t), int(s)) for k, v, t, s in record["metrics"]])
    elif "params" in record:
        client.log_batch(run, params=[Param(k, v) for k, v in record["params"].items()])
    elif "tags" in record:
        client.log_batch(run, tags=[RunTag(k, tag_value(v)) for k, v in record["tags"].items()])
    elif "artifact" in record:
        path = Path(record["artifact"])
        if path.is_dir():
            client.log_artifacts(run, str(path), record.get("dir"))
        elif path.is_file():
            client.log_artifact(run, str(path), record.get("dir"))
        if record.get("kept"):  # a copy made for this record alone, and its own folder
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                path.parent.rmdir()
    elif "end" in record:
        client.set_terminated(run, record["end"])


class Outbox:
    """Records sent in order by one thread. Says in one line when the store stops answering and
    when it answers again; a refused record is raised on the caller's thread at check()."""

    def __init__(self, client: MlflowClient, uri: str, log: Optional[WriteAheadLog], say: Callable[[str], None]):
        self.uri, self.log, self.say, self.client = uri, log, say, client
        self._clients = {uri: client}
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._head = 0  # the number of records confirmed (or refused)
        self._saved = 0  # records before this index are confirmed or in the log file
        self._away: Optional[str] = None  # why, while the store does not answer
        self._attempts = 0  # failed attempts so far
        self._error: Optional[BaseException] = None
        self._closing = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="mlflow-send", daemon=True)
        self._thread.start()

    def put(self, record: dict[str, Any]) -> None:
        with self._cond:
            self._queue.append({"uri": self.uri, **record})
            self._cond.notify_all()

    def check(self) -> None:
        with self._cond:
            error, self._error = self._error, None
        if error is not None:
            raise error

    def save(self, patience: float) -> None:
        """Return once the store holds everything put so far, or, when it does not answer (or has
        not within `patience` seconds), once the log file holds the rest."""
        with self._cond:
            self._cond.wait_for(lambda: not self._queue or self._away or self._error, timeout=patience)
            self._persist()
        self.check()

    def close(self) -> int:
        """One more attempt now if the store was away, then stop; -> records left in the log."""
        with self._cond:
            self._closing, failed = True, self._attempts
            self._cond.notify_all()
            while not self._cond.wait_for(lambda: not self._queue or self._attempts > failed, timeout=1.0):
                if not self._thread.is_alive():
                    break  # it died of an error: what it had not sent is kept below
            self._persist()
            left = len(self._queue)
        self._thread.join()
        if self.log is not None and not left:
            self.log.tidy()
        return left

    def _persist(self) -> None:
        end = self._head + len(self._queue)
        if self.log is not None and end > self._saved:
            start = max(self._saved, self._head) - self._head
            self.log.append(list(self._queue)[start:])
        self._saved = end

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._closing)
                if not self._queue:
                    return
                record = self._queue[0]
            try:
                send(self._client(record["uri"]), record)
            except Exception as exc:
                if is_outage(exc):
                    if self._failed(exc):
                        return
                    continue
                with self._cond:
                    self._error = exc
            self._confirmed()

    def _failed(self, exc: BaseException) -> bool:
        """Note an attempt the store did not answer, wait to try again; -> whether to stop."""
        with self._cond:
            self._attempts += 1
            if self._away is None:
                self._away = reason(exc)
                where = f"; what it would log goes to {shown(self.log.file)}" if self.log is not None else ""
                self.say(f"tracking: store {self.uri} is not answering ({self._away}); training goes on{where}")
            self._cond.notify_all()
            if self._closing:
                return True
            self._cond.wait_for(lambda: self._closing, timeout=RETRY_S)
            return False

    def _confirmed(self) -> None:
        with self._cond:
            self._queue.popleft()
            self._head += 1
            if self._away is not None:
                self._away = None
                self.say(f"tracking: store {self.uri} answers again; sending what was kept")
            if not self._queue and self.log is not None and self._saved > 0:
                self.log.clear()
            self._cond.notify_all()

    def _client(self, uri: str) -> MlflowClient:
        if uri not in self._clients:
            self._clients[uri] = connect(uri)
        return self._clients[uri]


def replay(folder: Path, say: Callable[[str], None], uri: Optional[str] = None) -> int:
    """Send the records kept in `folder` (to `uri` instead of the stores they name, if given),
    in order, then remove the log; -> how many. Raises StoreUnreachable when a store is away."""
    log = WriteAheadLog(folder)
    records = log.read()
    clients: dict[str, MlflowClient] = {}
    for record in records:
        target = uri or record["uri"]
        try:
            if target not in clients:
                clients[target] = connect(target)
            send(clients[target], record)
        except Exception as exc:
            if is_outage(exc):
                away = StoreUnreachable(
                    f"tracking store {target} is not answering ({reason(exc)}); {shown(log.file)} keeps "
                    f"{len(records)} records for it: start it and run `{SYNC_COMMAND}`, or delete "
                    f"{shown(folder)} to drop them"
                )
                away.gist = reason(exc)
                raise away from None
            if isinstance(exc, MlflowException):
                raise KarnnaError(
                    f"{shown(log.file)}: tracking store {target} refused a record for run {record['run']} "
                    f"({reason(exc)}); fix the store, or delete {shown(folder)} to drop what it keeps"
                ) from None
            raise
    log.clear()
    log.drop_files()
    log.tidy()
    if records:
        say(f"tracking: sent {len(records)} records kept in {shown(folder)} to the store")
    return len(records)
