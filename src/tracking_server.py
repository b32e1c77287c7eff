"""One MLflow tracking server for a team: runs and the model registry in PostgreSQL, artifacts
proxied by the server (clients need no access to the artifact store), on loopback by default.

    python -m src.tracking_server --db postgresql://mlflow:PASSWORD@dbhost/karnna_mlflow \\
        --artifacts /srv/karnna/mlartifacts            # or s3://bucket/mlartifacts
    python -m src.tracking_server ... --host 0.0.0.0 -- --allowed-hosts tracking.lan:5000

It checks that the database answers, then becomes `mlflow server` (arguments after `--` are
passed on). See docs/TEAM.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

from src.tracking.server import artifact_destination, check_database, server_command
from src.utils import faults
from src.utils.errors import redact_url


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(prog="python -m src.tracking_server", description=__doc__.split("\n\n")[0])
    p.add_argument("--db", required=True, help="backend store: postgresql://user:password@host[:port]/database")
    p.add_argument("--artifacts", required=True, help="where the server keeps artifacts: a folder or s3://...")
    p.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (this machine only); 0.0.0.0 for a team")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--workers", type=int, help="server worker processes (default: mlflow's)")
    args = p.parse_args(own)
    return faults.run(lambda: serve(args, extra), "src.tracking_server")


def serve(args: argparse.Namespace, extra: list[str]) -> int:
    check_database(args.db)
    artifacts = artifact_destination(args.artifacts)
    cmd = server_command(args.db, artifacts, args.host, args.port, args.workers, extra)
    print(
        f"tracking server: http://{args.host}:{args.port} (runs: {redact_url(args.db)}; artifacts: {artifacts})",
        flush=True,
    )
    os.execv(cmd[0], cmd)
    return 0  # not reached: the process is mlflow server now


if __name__ == "__main__":
    sys.exit(main())
