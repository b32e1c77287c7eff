"""What `python -m src.tracking_server` (src/tracking_server.py) runs before it becomes `mlflow
server`: the database must answer, the artifact folder must be writable, and the command line
that serves runs and the registry from PostgreSQL with proxied artifacts. See docs/TEAM.md.
"""

from __future__ import annotations

import sys
import urllib.parse
from pathlib import Path
from typing import Optional

from src.utils.errors import KarnnaError, redact_url

CONNECT_TIMEOUT_S = 5


def check_database(url: str) -> None:
    """Connect once, so a wrong URL is one line here rather than a traceback from mlflow server."""
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url, connect_args=_timeout_args(url))
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1"))
        engine.dispose()
    except Exception as exc:  # sqlalchemy and the drivers raise many kinds; all mean "not usable"
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise KarnnaError(
            f"tracking database {redact_url(url)} is unreachable ({first}); start it, create the database "
            "(`createdb`), or fix --db"
        ) from None


def _timeout_args(url: str) -> dict:
    scheme = urllib.parse.urlparse(url).scheme
    return {"connect_timeout": CONNECT_TIMEOUT_S} if scheme.startswith(("postgresql", "mysql")) else {}


def server_command(
    db: str, artifacts: str, host: str, port: int, workers: Optional[int], extra: list[str]
) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        db,
        # Proxied artifacts: runs get mlflow-artifacts:/ URIs and upload through the server.
        "--serve-artifacts",
        "--artifacts-destination",
        artifacts,
        "--host",
        host,
        "--port",
        str(port),
    ]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    return cmd + extra


def artifact_destination(value: str) -> str:
    """A URL as given (s3://, gs://, ...); a local folder made absolute and created."""
    if urllib.parse.urlparse(value).scheme not in ("", "file"):
        return value
    folder = Path(value.removeprefix("file://")).expanduser().resolve()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KarnnaError(
            f"--artifacts {value}: cannot create the folder ({exc.strerror}); choose a writable one"
        ) from None
    return str(folder)
