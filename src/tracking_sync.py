"""`python -m src.tracking_sync`: complete the MLflow runs whose records a stage kept in
models/tracking-pending/ while the store did not answer (docs/TRACKING.md, "When the store is
away"). Sends them in order into the runs they name, ends those runs as the stage would have,
and removes the file; sending again what the store already has changes nothing."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional

from src.tracking import wal
from src.utils import faults, repo
from src.utils.errors import KarnnaError


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.tracking_sync", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", type=Path, default=repo.Layout(Path()).models, help="the checkpoints' folder (default: %(default)s)"
    )
    parser.add_argument(
        "--tracking-uri",
        help="send to this store instead of the one each record names (e.g. the server moved)",
    )
    args = parser.parse_args(argv)
    wal.bound_client_retries(os.environ)  # a dead store fails in seconds, not minutes
    return faults.run(lambda: sync(args.models / wal.FOLDER, args.tracking_uri), "src.tracking_sync")


def sync(folder: Path, tracking_uri: Optional[str]) -> None:
    try:
        sent = wal.replay(folder, print, tracking_uri)
    except KarnnaError as exc:
        raise KarnnaError(f"{exc}; the records stay in {folder}") from None
    if not sent:
        print(f"tracking: nothing to send ({folder} holds no records)")


if __name__ == "__main__":
    sys.exit(main())
