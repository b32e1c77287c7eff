"""The MLflow runs of an Optuna study: one parent run per study, shared by every worker and every
rerun that resumes it, with each trial's training run as its child (src/tracking/runs.py starts
those); a trial's Optuna state as a tag; a run a killed worker left RUNNING ended as FAILED."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping, Optional

from mlflow.entities import Metric, Param, RunStatus, RunTag

from src.config.schema import Config
from src.tracking.runs import param_value, reopen
from src.tracking.store import connect, experiment_id, store_call, tag_value

STUDY_RUN_ATTR = "mlflow_parent_run_id"


def study_run(
    base: Config, tracking_uri: Optional[str], study: Any, space: Optional[Mapping[str, Any]] = None
) -> Optional[str]:
    """The id of the study's parent run, created on first use and shared by every worker.

    The id is kept as a user attribute of the Optuna study, so workers on other machines (same
    tracking server) and reruns that resume the study log their trials under the same parent.
    Workers starting together must call it one at a time."""
    if not base.tracking.enabled or tracking_uri is None:
        return None
    client = connect(tracking_uri)
    exp_id = experiment_id(client, tracking_uri, base.tracking.experiment)
    existing = study.user_attrs.get(STUDY_RUN_ATTR)
    if existing and reopen(client, existing, exp_id) is not None:
        return existing
    run = store_call(
        tracking_uri,
        lambda: client.create_run(
            exp_id,
            tags={"mlflow.source.name": "src.tune", "mlflow.source.type": "LOCAL", "optuna.study": study.study_name},
            run_name=f"study-{study.study_name}",
        ),
    )
    run_id = run.info.run_id
    params = {**base.flat(), **{f"tune.{k}": v for k, v in (space or {}).items()}}
    client.log_batch(run_id, params=[Param(k, param_value(v)) for k, v in params.items()])
    # The caller makes workers take turns (src/tuning/storage.exclusive); one that did not: the
    # first attribute written wins, the other run is dropped.
    if study.user_attrs.get(STUDY_RUN_ATTR) in (None, existing):
        study.set_user_attr(STUDY_RUN_ATTR, run_id)
    winner = study.user_attrs.get(STUDY_RUN_ATTR, run_id)
    if winner != run_id:
        client.delete_run(run_id)
    return winner


def finish_study_run(
    base: Config,
    tracking_uri: Optional[str],
    run_id: Optional[str],
    metrics: Mapping[str, float],
    figures: list[Path],
    files: list[Path],
) -> None:
    """The study's summary on its parent run: counts, best value, Optuna's plots, best params."""
    if not base.tracking.enabled or tracking_uri is None or run_id is None:
        return
    client = connect(tracking_uri)
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
    for path in figures:
        client.log_artifact(run_id, str(path), "optuna")
    for path in files:
        if Path(path).is_file():
            client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))


def set_tags(tracking_uri: Optional[str], run_id: Optional[str], tags: Mapping[str, Any]) -> None:
    if tracking_uri is None or run_id is None:
        return
    connect(tracking_uri).log_batch(run_id, tags=[RunTag(k, tag_value(v)) for k, v in tags.items()])


def end_failed_run(
    tracking_uri: Optional[str], run_id: Optional[str], reason: str, tags: Optional[Mapping[str, Any]] = None
) -> None:
    """End a run another process left RUNNING (killed outright): FAILED, `failure_reason` set."""
    if tracking_uri is None or run_id is None:
        return
    client = connect(tracking_uri)
    client.log_batch(
        run_id, tags=[RunTag(k, tag_value(v)) for k, v in {**(tags or {}), "failure_reason": reason}.items()]
    )
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
