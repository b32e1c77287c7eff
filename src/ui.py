"""The web views of this checkout's runs and study, on this machine only (127.0.0.1):

    python -m src.ui mlflow [--port 5000]      # `make ui`: mlflow ui on the stages' tracking store
    python -m src.ui dashboard [--port 8080]   # `make dashboard`: optuna-dashboard on the study's storage

`mlflow` serves the store the stages log to (MLFLOW_TRACKING_URI, else the repo's mlflow.db) and
prints the address of tracking.experiment's runs in MLflow's model-training view (MLflow 3's UI
opens on its GenAI view otherwise: docs/TRACKING.md). With a tracking server as the store, it only
prints that server's address. `dashboard` serves tune.storage (else tune/journal.log). Each then
becomes the server process: Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.parse
from pathlib import Path
from typing import Optional

from src.config.schema import config_from_dict, tune_config_from_dict
from src.tracking.store import connect, sqlite_path
from src.utils import faults, fileio, repo
from src.utils.errors import KarnnaError

ROOT = Path(__file__).resolve().parents[1]
FILES = repo.Layout(ROOT)
HOST = "127.0.0.1"
PORTS = {"mlflow": 5000, "dashboard": 8080}
# MLflow 3's UI shows an experiment's runs table with this, whatever its sidebar switch says.
TRAINING_VIEW = "workflowType=machine_learning"


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m src.ui", description=__doc__.split("\n\n")[0])
    p.add_argument("view", choices=sorted(PORTS), help="mlflow: the runs (make ui); dashboard: the study")
    p.add_argument("--port", type=int, help="default: 5000 for mlflow, 8080 for dashboard")
    p.add_argument("--params", type=Path, default=FILES.params, help="default: %(default)s")
    args = p.parse_args(argv)
    uri = repo.tracking_uri(os.environ, ROOT)
    return faults.run(lambda: serve(args, uri), "src.ui", store=uri if args.view == "mlflow" else None)


def serve(args: argparse.Namespace, uri: str) -> int:
    raw = fileio.read_params(args.params)
    port = args.port or PORTS[args.view]
    if args.view == "mlflow":
        url, cmd = mlflow_ui(uri, config_from_dict(raw, args.params.name).tracking.experiment, port)
    else:
        url, cmd = dashboard(dashboard_storage(raw, args.params.name), port)
    print(f"{args.view}: {url}", flush=True)
    if cmd is None:
        return 0
    os.execv(cmd[0], cmd)
    return 0  # not reached: the process is the server now


def mlflow_ui(uri: str, experiment: str, port: int) -> tuple[str, Optional[list[str]]]:
    """-> (the address of `experiment`'s training view, the command that serves it; None where
    the store is a server already)."""
    remote = urllib.parse.urlparse(uri).scheme in ("http", "https")
    if not remote:
        db = sqlite_path(uri) if uri.startswith("sqlite:") else None
        if db is not None and not db.is_file():
            raise KarnnaError(f"tracking store {uri}: {db} does not exist yet; run `make repro` (or `dvc repro`) first")
    found = connect(uri).get_experiment_by_name(experiment)
    base = uri.rstrip("/") if remote else f"http://{HOST}:{port}"
    url = f"{base}/#/experiments/{found.experiment_id}?{TRAINING_VIEW}" if found else f"{base}/#/experiments"
    if remote:
        return url, None
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    return url, [mlflow, "ui", "--backend-store-uri", uri, "--host", HOST, "--port", str(port)]


def dashboard_storage(raw: dict, source: str = "params.yaml") -> Optional[str]:
    """The study's storage: tune.storage, else the tuner's journal file where it exists, else None."""
    storage = tune_config_from_dict(raw, source).storage
    return storage or (str(FILES.journal) if FILES.journal.is_file() else None)


def dashboard(storage: Optional[str], port: int) -> tuple[str, list[str]]:
    """-> (the dashboard's address, the command that serves `storage` (dashboard_storage's))."""
    if storage is None:
        raise KarnnaError(f"{FILES.journal} does not exist yet: no study to show; run `python -m src.tune` first")
    command = str(Path(sys.executable).with_name("optuna-dashboard"))
    if not Path(command).is_file():
        raise KarnnaError(f"{command} is missing; install the pinned dependencies (`make setup`)")
    return f"http://{HOST}:{port}/dashboard", [command, storage, "--host", HOST, "--port", str(port)]


if __name__ == "__main__":
    sys.exit(main())
