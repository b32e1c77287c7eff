"""The model registry: packaging the served MLflow model, registering it, the champion alias.

Used by the register stage, after evaluate, so that editing this module (or the sampling code
the served model runs) re-registers without retraining. The champion is decided on like with
like only (docs/TRACKING.md, "The champion"):
- the score is the evaluate stage's fp32 validation loss, never training's bf16 `best_val_loss`;
- a registered model holds the runs of one data fingerprint (a hash of the validation and test
  splits and the vocabulary, as the evaluate stage scored them): a run on other data is
  registered under the model name with its fingerprint appended, so it never moves another
  data's champion;
- the champion is the version with the lowest score, a tie going to the older version (so a tie
  keeps the old champion), recomputed from every version at each decision;
- decisions are serialized by a lock file on this machine (MLflow has no compare-and-set).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch
from mlflow.entities import LoggedModelOutput
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.tracking import MlflowClient

from src.data.vocab import Vocab
from src.model import checkpoint as checkpoints
from src.serving.pyfunc import SIGNATURE
from src.tracking.store import checkpoint_run, connect, exclusive
from src.utils.errors import KarnnaError

CHAMPION = "champion"
# Tags of a model version (and of the registered model, for the fingerprint).
SCORE_TAG = "eval_val_loss"  # the evaluate stage's fp32 loss on the validation split
FINGERPRINT_TAG = "data_fingerprint"
FINGERPRINT_CHUNK = 1 << 20  # ids hashed at a time (8 MiB as int64)
IDENTITY_TAG = "registration_key"  # run, checkpoint bytes and packaged code: one version each

_SRC_DIR = Path(__file__).resolve().parents[1]  # src/: the code packaged with the model
# The served model's code file ("models from code"): it names src.serving.pyfunc.TextGenerator.
MODEL_CODE = Path(__file__).resolve().with_name("served_model.py")


@dataclass
class Registration:
    """What register() did."""

    model_name: str
    version: str
    champion: bool  # this version is @champion after the decision
    previous: Optional[float]  # the champion's score before; None: there was none
    score: float
    fingerprint: str
    new: bool = True  # False: this run, checkpoint and code were registered already

    def describe(self) -> str:
        before = "no champion before" if self.previous is None else f"champion had {self.previous:.4f}"
        verdict = f"now @{CHAMPION}" if self.champion else f"@{CHAMPION} unchanged"
        again = "" if self.new else " (already registered)"
        return f"{self.model_name} version {self.version}{again}: fp32 val loss {self.score:.4f}, {verdict}; {before}"


def data_fingerprint(vocab: Vocab, val: np.ndarray, test: np.ndarray) -> str:
    """16 hex digits naming the data the evaluate stage scores: equal fingerprints, comparable scores.

    SHA-256 over three parts, each preceded by its length in bytes (8, little-endian): the
    vocabulary's characters in id order (a JSON list, UTF-8), then the validation and then the
    test split's ids as little-endian int64. So the same text under other ids, or a character
    moved from validation to test, is other data; how the files hold it (the .npy header and
    dtype, vocab.json's layout and its newline policy's name) is not."""
    h = hashlib.sha256()
    chars = json.dumps(list(vocab.chars), ensure_ascii=False).encode("utf-8")
    h.update(len(chars).to_bytes(8, "little"))
    h.update(chars)
    for ids in (val, test):
        h.update((8 * len(ids)).to_bytes(8, "little"))
        # a slice at a time: a memory-mapped split of a large corpus is never held whole as int64
        for start in range(0, len(ids), FINGERPRINT_CHUNK):
            h.update(np.ascontiguousarray(ids[start : start + FINGERPRINT_CHUNK], dtype="<i8").tobytes())
    return h.hexdigest()[:16]


def register(
    tracking_uri: str,
    run_id: str,
    checkpoint: Path,
    *,
    step: int,
    score: float,
    fingerprint: str,
    model_name: str,
    input_example: Mapping[str, Any],
    lock_file: Optional[Path] = None,
) -> Registration:
    """Log `checkpoint` (made at `step`) as the run's MLflow model, register it, decide the champion.

    Idempotent: the same run, checkpoint bytes and packaged code make one version, however often
    the stage runs (a rerun for an unchanged checkpoint registers nothing new)."""
    if not math.isfinite(score):
        raise KarnnaError(f"the evaluate score is {score}; a diverged model is not registered: retrain")
    client = connect(tracking_uri)
    run = checkpoint_run(client, tracking_uri, run_id)
    with exclusive(lock_file or default_lock_file(tracking_uri)):
        name = name_for(client, model_name, fingerprint)
        key = _registration_key(run_id, checkpoint)
        existing = [v for v in client.search_model_versions(f"name='{name}'") if v.tags.get(IDENTITY_TAG) == key]
        if existing:
            version, new = existing[0].version, False
        else:
            logged = _log_model(client, run.info.experiment_id, run_id, checkpoint, step, input_example)
            version = client.create_model_version(
                name,
                # The storage location, not models:/<id>: the SQLite registry resolves that through
                # the process-wide tracking URI, which may be another store.
                source=logged.artifact_location,
                run_id=run_id,
                model_id=logged.model_id,
                tags={SCORE_TAG: repr(float(score)), FINGERPRINT_TAG: fingerprint, IDENTITY_TAG: key},
            ).version
            new = True
        client.set_tag(run_id, "registered_model_version", f"{name}/{version}")
        client.set_tag(run_id, FINGERPRINT_TAG, fingerprint)
        previous = champion_score(client, name)
        winner = decide_champion(client, name)
    return Registration(name, str(version), str(winner) == str(version), previous, float(score), fingerprint, new)


def name_for(client: MlflowClient, model_name: str, fingerprint: str) -> str:
    """The registered model for this data: `model_name` when it holds this fingerprint (or is
    new, and takes it), else `model_name-data-<fingerprint>`."""
    for name in (model_name, f"{model_name}-data-{fingerprint}"):
        try:
            client.create_registered_model(name, tags={FINGERPRINT_TAG: fingerprint})
            return name
        except MlflowException as exc:
            if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                raise
        held = client.get_registered_model(name).tags.get(FINGERPRINT_TAG)
        if held is None:  # registered before fingerprints existed: it takes this one
            client.set_registered_model_tag(name, FINGERPRINT_TAG, fingerprint)
            return name
        if held == fingerprint:
            return name
    raise KarnnaError(
        f"registered model {name!r} holds data {held}, not {fingerprint}; set another tracking.model_name"
    )


def decide_champion(client: MlflowClient, name: str) -> Optional[str]:
    """Point @champion at the version with the lowest score, the older one on a tie; -> it.

    Recomputed from all versions, not compared with the last one, so that a decision lost to a
    race between machines is put right by the next registration."""
    scored = []
    for v in client.search_model_versions(f"name='{name}'"):
        score = float(v.tags.get(SCORE_TAG, "nan"))
        if math.isfinite(score):
            scored.append((score, int(v.version)))
    if not scored:
        return None
    _, best = min(scored)
    current = client.get_registered_model(name).aliases.get(CHAMPION)
    if current is None or str(current) != str(best):
        client.set_registered_model_alias(name, CHAMPION, str(best))
    return str(best)


def champion_score(client: MlflowClient, name: str) -> Optional[float]:
    """The score of the version @champion points to; None when there is none."""
    version = client.get_registered_model(name).aliases.get(CHAMPION)
    if version is None:
        return None
    return float(client.get_model_version(name, version).tags.get(SCORE_TAG, "nan"))


def default_lock_file(tracking_uri: str) -> Path:
    """Beside a SQLite store (every process using it sees the file); for a server, one per URI in
    the machine's temporary folder (machines sharing a server rely on decide_champion's rule)."""
    if tracking_uri.startswith("sqlite:///") and tracking_uri != "sqlite:///:memory:":
        return Path(tracking_uri.split(":///", 1)[1]).resolve().with_suffix(".registry.lock")
    digest = hashlib.sha256(tracking_uri.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"karnna-registry-{digest}.lock"


def _registration_key(run_id: str, checkpoint: Path) -> str:
    h = hashlib.sha256(run_id.encode())
    h.update(Path(checkpoint).read_bytes())
    for path in sorted(_SRC_DIR.rglob("*.py")):  # the code packaged with the model
        h.update(path.relative_to(_SRC_DIR).as_posix().encode() + path.read_bytes())
    return h.hexdigest()[:32]


def save_served_model(
    path: Path, checkpoint: Path, input_example: Mapping[str, Any], mlflow_model: Optional[Model] = None
) -> None:
    """The served model in folder `path`, packaged from code: MODEL_CODE names the class, the
    weights-only checkpoint and its vocabulary are artifacts, src/ is the code. No pickle is
    written, so loading or serving it runs none."""
    with tempfile.TemporaryDirectory(prefix="karnna-vocab-") as tmp:
        vocab = Path(tmp) / "vocab.json"
        Vocab.from_dict(checkpoints.load_payload(checkpoint)["vocab"], f"{checkpoint} (vocabulary)").save(vocab)
        mlflow.pyfunc.save_model(
            path=str(path),
            python_model=str(MODEL_CODE),
            artifacts={"checkpoint": str(checkpoint), "vocab": str(vocab)},
            code_paths=[str(_SRC_DIR)],
            signature=SIGNATURE,
            input_example=pd.DataFrame({k: [v] for k, v in input_example.items()}),
            pip_requirements=_requirements(),
            mlflow_model=mlflow_model,
        )
    # save_model imports the copied code to check the model: keep its bytecode out.
    for cache in Path(path).rglob("__pycache__"):
        shutil.rmtree(cache, ignore_errors=True)


def _log_model(
    client: MlflowClient, experiment_id: str, run_id: str, checkpoint: Path, step: int, input_example: Mapping[str, Any]
):
    """The served model as a LoggedModel of the run.

    What mlflow.pyfunc.log_model does, with an explicit client in place of the fluent API's global
    tracking URI and active experiment (which would put it in experiment 0)."""
    logged = client.create_logged_model(experiment_id, name="model", source_run_id=run_id, model_type="char-rnn")
    try:
        with tempfile.TemporaryDirectory(prefix="karnna-model-") as tmp:
            path = Path(tmp) / "model"
            save_served_model(
                path,
                checkpoint,
                input_example,
                Model(
                    artifact_path=logged.artifact_location,
                    run_id=run_id,
                    model_uuid=logged.model_id,
                    model_id=logged.model_id,
                ),
            )
            client.log_model_artifacts(logged.model_id, str(path))
        client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=step)])
    except BaseException:
        client.finalize_logged_model(logged.model_id, "FAILED")
        raise
    return client.finalize_logged_model(logged.model_id, "READY")


def _requirements() -> list[str]:
    # Given, not inferred: inference imports the model in a subprocess (seconds per logging).
    return [f"mlflow=={mlflow.__version__}", f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}"]
