"""The MLflow store: a checked client, the experiment, and store errors as one-line messages.

The sink under src.tracking (runs and metrics) and src.serving.registry (the served model, versions,
the champion): both reach MLflow's store through these functions, so a wrong URI or a deleted
experiment reads the same wherever it is met. See docs/TRACKING.md, "Where runs go".
"""

from __future__ import annotations

import contextlib
import fcntl
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, TypeVar

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.tracking import MlflowClient

from src.utils import faults
from src.utils.errors import KarnnaError

# A reachable server answers at once; this only bounds a black-holed address.
CONNECT_TIMEOUT_S = 5.0
# MLflow 3's mark of a model-training experiment (3.17's UI picks its landing page by a sidebar
# switch instead; docs/TRACKING.md).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}

T = TypeVar("T")


class StoreUnreachable(KarnnaError):
    """The store did not answer (as opposed to refusing a request): worth trying again later."""


def connect(uri: str) -> MlflowClient:
    """A client for `uri`, after checking that an HTTP server answers at all.

    MLflow's own client retries a refused connection with backoff for minutes; this fails in
    seconds with the URI in the message."""
    scheme = urllib.parse.urlparse(uri).scheme
    if scheme in ("http", "https"):
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=CONNECT_TIMEOUT_S).close()
        except urllib.error.HTTPError:
            pass  # it answered: whatever it said, MLflow's own calls report it precisely
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise StoreUnreachable(
                f"MLflow tracking server {uri} is unreachable ({reason}); start it, fix MLFLOW_TRACKING_URI, "
                "or set tracking.enabled: false in params.yaml"
            ) from None
    elif scheme == "sqlite":
        db = sqlite_path(uri)
        if db is not None and not db.parent.is_dir():
            raise KarnnaError(
                f"tracking store {uri}: folder {db.parent} does not exist; create it or fix MLFLOW_TRACKING_URI"
            )
        if db is not None:
            # The first client of a new SQLite store creates its tables, and MLflow takes no lock:
            # two processes starting at once both ran the migrations and alembic failed one.
            with exclusive(db.with_name(db.name + ".lock")):
                return MlflowClient(tracking_uri=uri, registry_uri=uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """An exclusive flock on `path` (created with its folder), held by one process (or thread) of
    this machine at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def check_store(uri: str) -> None:
    """Fail in one line unless the store answers a query: a server whose database is down still
    answers /health. A SQLite file is only checked for its folder (a query would create it)."""
    client = connect(uri)
    if not uri.startswith("sqlite:"):
        store_call(uri, lambda: client.search_experiments(max_results=1))


def experiment_id(client: MlflowClient, uri: str, name: str) -> str:
    """The id of the active experiment `name`, created (artifacts beside a SQLite store) if new."""

    def get_or_create() -> str:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            try:
                return client.create_experiment(name, artifact_location=artifact_location(uri), tags=EXPERIMENT_KIND)
            except MlflowException as exc:  # another process created it meanwhile
                if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                    raise
                experiment = client.get_experiment_by_name(name)
        if experiment.lifecycle_stage != "active":
            raise KarnnaError(
                f"experiment {name!r} is deleted in {uri}; restore it (`mlflow experiments restore "
                f"--experiment-id {experiment.experiment_id}`) or set another tracking.experiment"
            )
        for key, value in EXPERIMENT_KIND.items():  # an experiment made before the tag, or by hand
            if key not in experiment.tags:
                client.set_experiment_tag(experiment.experiment_id, key, value)
        return experiment.experiment_id

    return store_call(uri, get_or_create)


def checkpoint_run(client: MlflowClient, uri: str, run_id: str):
    """The run a checkpoint names; a clear error when this store does not have it."""
    try:
        return client.get_run(run_id)
    except MlflowException as exc:
        if is_missing(exc):
            raise KarnnaError(
                f"MLflow run {run_id} (named in the checkpoint) is not in {uri}; set MLFLOW_TRACKING_URI "
                "to the store the training logged to, or retrain"
            ) from None
        raise store_error(uri, exc) from None


def is_missing(exc: MlflowException) -> bool:
    return exc.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST)


def artifact_location(uri: str) -> Optional[str]:
    """Beside a local SQLite store: <folder of mlflow.db>/mlartifacts, absolute, so that runs from
    `dvc exp run --temp` copies of the repo put their files in the main repo too. A server keeps
    its own default (None)."""
    db = sqlite_path(uri) if uri.startswith("sqlite:") else None
    return (db.parent / "mlartifacts").as_uri() if db is not None else None


def sqlite_path(uri: str) -> Optional[Path]:
    path = uri.split(":///", 1)[1] if ":///" in uri else ""
    if not path or path == ":memory:":
        return None
    return Path(path).resolve()


def store_call(uri: str, fn: Callable[[], T]) -> T:
    try:
        return fn()
    except MlflowException as exc:
        raise store_error(uri, exc) from None


def store_error(uri: str, exc: MlflowException) -> KarnnaError:
    if faults.disk_full(exc):  # SQLite's "database or disk is full": not the URI's fault
        return KarnnaError(faults.describe_disk_full(exc, uri))
    first = str(exc.message).strip().splitlines()[0][:300] if str(exc.message).strip() else exc.error_code
    return KarnnaError(f"tracking store {uri}: {first}; check MLFLOW_TRACKING_URI or set tracking.enabled: false")


TAG_LIMIT = 8000  # characters of a tag value MLflow stores


def tag_value(value: Any) -> str:
    """A tag's value as MLflow keeps it: text, cut to what the store accepts."""
    return str(value)[:TAG_LIMIT]
