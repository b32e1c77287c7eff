"""Check what a team shares before training: the DVC remote, the MLflow tracking store and
(when set) the Optuna study database. One line each; the first that fails is one `error:` line
and exit status 2, before anything trains. It changes nothing in the checkout.

    python -m pipeline.preflight && dvc exp run ...
    python -m pipeline.preflight --storage postgresql://user:pw@dbhost/karnna_tune && python -m src.tune ...

DVC itself would only tell at `dvc push`, after the training: `dvc status --cloud` counts an
unreachable HTTP remote as empty, and `dvc pull` with a full local cache never contacts it.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from pathlib import Path
from typing import Optional

from src.utils.errors import KarnnaError, redact_url


def check_remote(root: Path) -> str:
    """The default DVC remote takes a write: a probe file, written and removed."""
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    try:
        repo = Repo(str(root))
    except NotDvcRepoError:
        raise KarnnaError(f"{root} is not a DVC repository; run this in a checkout of the project") from None
    with repo:
        name = repo.config["core"].get("remote")
        if not name:
            raise KarnnaError("no default DVC remote; add one: `dvc remote add -d --local team <url>`")
        url = redact_url(repo.config["remote"][name]["url"])
        try:
            remote = repo.cloud.get_remote(name)
            _probe(remote.fs, remote.path)
        except Exception as exc:  # DVC's filesystems raise many kinds; all mean "cannot push here"
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise KarnnaError(
                f"DVC remote {name!r} ({url}) is unreachable: {first}; fix its url "
                f"(`dvc remote modify --local {name} url ...`) or choose another (`dvc remote add -d --local team <url>`)"
            ) from None
    return f"DVC remote {name!r}: {redact_url(remote.path)}"


def _probe(fs, path: str) -> None:
    probe = fs.join(path, "tmp", f"karnna-preflight-{uuid.uuid4().hex}")
    fs.makedirs(fs.join(path, "tmp"), exist_ok=True)
    fs.pipe_file(probe, b"ok")
    fs.rm_file(probe)


def main(argv: Optional[list[str]] = None) -> int:
    from pipeline.common import stage

    p = argparse.ArgumentParser(prog="python -m pipeline.preflight", description=__doc__.split("\n\n")[0])
    p.add_argument("--storage", help="an Optuna storage URL to check too (default: tune.storage)")
    p.add_argument("--no-remote", action="store_true", help="skip the DVC remote")
    args = p.parse_args(argv)
    return stage(lambda: check_all(args.storage, args.no_remote))()


def check_all(storage: Optional[str], no_remote: bool) -> None:
    from pipeline.common import PARAMS, load_params, main_repo_root, tracking_uri
    from src.config.schema import config_from_dict, tune_config_from_dict
    from src.tracking import store

    raw = load_params(PARAMS)
    cfg = config_from_dict(raw, PARAMS.name)
    if not no_remote:
        print("ok:", check_remote(main_repo_root()))
    if cfg.tracking.enabled:
        uri = tracking_uri()
        store.check_store(uri)
        print(f"ok: MLflow tracking store {redact_url(uri)}")
    storage = storage or tune_config_from_dict(raw, PARAMS.name).storage
    if storage and not storage.endswith(".log"):
        from src.tuning.storage import storage_for

        storage_for(storage, Path(os.devnull))
        print(f"ok: Optuna storage {redact_url(storage)}")


if __name__ == "__main__":
    sys.exit(main())
