"""The checkpoint behind a run or a registered model, fetched from the tracking store, so that
`python -m src.sample --run <id or name>` or `--model models:/<name>@<alias>` samples from what a
user picked in `mlflow ui`.

A run holds the checkpoints the train stage logged at its end (`checkpoints/best.pt`,
`checkpoints/last.pt`); a model version holds the served model, whose `checkpoint` artifact is the
registered best.pt. Whatever is not there is one line saying what is.
"""

from __future__ import annotations

import re
from pathlib import Path

import mlflow.artifacts
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.tracking import MlflowClient

from src.tracking.store import connect, is_missing, store_call
from src.utils.errors import KarnnaError

WHICH = ("best", "last")
SHOWN = 5  # names listed where one is unknown
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_MODEL_URI = re.compile(r"^models:/(?P<name>[^@/]+)(?:@(?P<alias>[^@/]+)|/(?P<version>\d+))$")


def run_checkpoint(uri: str, run: str, which: str, folder: Path, say=print) -> Path:
    """Download run `run`'s (its id or its name) checkpoints/<which>.pt into `folder`; -> its path."""
    client = connect(uri)
    found = store_call(uri, lambda: _find_run(client, uri, run, say))
    wanted = f"checkpoints/{which}.pt"
    listed = {a.path for a in store_call(uri, lambda: client.list_artifacts(found.info.run_id, "checkpoints"))}
    if wanted not in listed:
        raise KarnnaError(
            f"run {run!r} ({found.info.run_id}, {found.info.status}) has no {wanted} in {uri} (a training logs its "
            f"checkpoints when it ends); it has {', '.join(sorted(listed)) or 'no checkpoints'}: pick a finished run"
        )
    return Path(store_call(uri, lambda: client.download_artifacts(found.info.run_id, wanted, str(folder))))


def _find_run(client: MlflowClient, uri: str, run: str, say):
    if _RUN_ID.match(run):
        try:
            return client.get_run(run)
        except MlflowException as exc:
            if not is_missing(exc):
                raise
    experiments = [e.experiment_id for e in client.search_experiments()]
    quoted = f"'{run}'" if "'" not in run else f'"{run}"'
    named = client.search_runs(
        experiments, f"attributes.run_name = {quoted}", order_by=["attributes.start_time DESC"], max_results=50
    )
    if not named:
        recent = client.search_runs(experiments, order_by=["attributes.start_time DESC"], max_results=SHOWN)
        shown = ", ".join(f"{r.info.run_name!r} ({r.info.run_id})" for r in recent) or "none"
        raise KarnnaError(
            f"no MLflow run has the id or name {run!r} in {uri}; the latest runs: {shown} (`make ui` lists them all)"
        )
    if len(named) > 1:
        say(f"note: {len(named)} runs are named {run!r}; sampling from the latest, {named[0].info.run_id}")
    return named[0]


def model_checkpoint(uri: str, model_uri: str, folder: Path) -> Path:
    """Download the checkpoint of a registered model version, `models:/<name>@<alias>` or
    `models:/<name>/<version>`, into `folder`; -> its path."""
    parsed = _MODEL_URI.match(model_uri)
    if parsed is None:
        raise KarnnaError(
            f"--model {model_uri!r}: expected models:/<name>@<alias> or models:/<name>/<version>, "
            "e.g. models:/karnna-char-lstm@champion"
        )
    name, alias, number = parsed["name"], parsed["alias"], parsed["version"]
    client = connect(uri)
    version = store_call(uri, lambda: _find_version(client, uri, name, alias, number))
    model_dir = Path(
        store_call(
            uri, lambda: mlflow.artifacts.download_artifacts(version.source, dst_path=str(folder), tracking_uri=uri)
        )
    )
    artifacts = Model.load(str(model_dir)).flavors["python_function"].get("artifacts", {})
    if "checkpoint" not in artifacts:
        raise KarnnaError(f"{model_uri} (version {version.version}) holds no karnna checkpoint: not a karnna model")
    return model_dir / artifacts["checkpoint"]["path"]


def _find_version(client: MlflowClient, uri: str, name: str, alias, number):
    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if not is_missing(exc):
            raise
        names = [m.name for m in client.search_registered_models(max_results=SHOWN * 4)]
        raise KarnnaError(
            f"no registered model {name!r} in {uri}; registered: {', '.join(names) or 'none'}"
            + (" (the register stage registers tracking.model_name)" if not names else "")
        ) from None
    aliases = model.aliases or {}
    versions = sorted((int(v.version) for v in client.search_model_versions(f"name='{name}'")), reverse=True)
    if alias is not None and alias not in aliases:
        have = ", ".join(f"@{a} (version {v})" for a, v in sorted(aliases.items())) or "no aliases"
        raise KarnnaError(
            f"model {name!r} has no alias {alias!r} in {uri}; it has {have}, versions {_listed(versions)}"
        )
    if number is not None and int(number) not in versions:
        raise KarnnaError(f"model {name!r} has no version {number} in {uri}; its versions: {_listed(versions)}")
    return client.get_model_version(name, aliases[alias] if alias is not None else number)


def _listed(versions: list[int]) -> str:
    return ", ".join(map(str, versions[: SHOWN * 2])) + (" ..." if len(versions) > SHOWN * 2 else "") or "none"
