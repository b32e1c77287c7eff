"""The served model: text generation as an MLflow pyfunc, and the request format it accepts.

Packaged by src.serving.registry as MLflow "models from code": src/serving/served_model.py names this class, and
the model's artifacts are the weights-only checkpoint and vocab.json. Loading or serving the
model therefore unpickles nothing (MLflow's cloudpickled python_model would). Generation runs the
eager network character by character (src.generation.sampling.generate): a traced or exported graph would fix
the input length. See docs/TRACKING.md, "The model flavour".
"""

from __future__ import annotations

import math
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

from src.utils.errors import KarnnaError

# What the served model accepts, so one request cannot tie the server up for minutes.
MAX_LENGTH = 10_000
DEFAULT_LENGTH = 200

SIGNATURE = ModelSignature(
    inputs=Schema(
        [
            ColSpec("string", "prime"),
            ColSpec("long", "length", required=False),
            ColSpec("double", "temperature", required=False),
            ColSpec("long", "top_k", required=False),
            ColSpec("long", "seed", required=False),
        ]
    ),
    outputs=Schema([ColSpec("string")]),
)


class TextGenerator(mlflow.pyfunc.PythonModel):
    """One row per request, `prime` plus optional `length`, `temperature`, `top_k`, `seed`;
    -> prime + generated text per row. Any cell type: the checkpoint names its own."""

    def load_context(self, context) -> None:
        from src.data.vocab import Vocab
        from src.model import checkpoint

        path = Path(context.artifacts["checkpoint"])
        self.model, own_vocab, _ = checkpoint.load(path, "cpu")
        self.vocab = Vocab.load(Path(context.artifacts["vocab"]))
        checkpoint.check_vocab(own_vocab, self.vocab, path)

    # The DataFrame hint keeps MLflow from inferring a second schema; SIGNATURE is the contract.
    def predict(self, context, model_input: pd.DataFrame, params=None) -> list[str]:
        from src.generation.sampling import generate

        texts = []
        for row in _rows(model_input):
            length = int(_given(row, "length", DEFAULT_LENGTH))
            if not 1 <= length <= MAX_LENGTH:
                raise KarnnaError(f"length {length} is out of range; ask for 1 to {MAX_LENGTH} characters")
            seed = _given(row, "seed", None)
            (text,) = generate(
                self.model,
                self.vocab,
                str(row["prime"]),
                length,
                top_k=int(_given(row, "top_k", 5)),
                temperature=float(_given(row, "temperature", 1.0)),
                seed=None if seed is None else int(seed),
            )
            texts.append(text)
        return texts


def _rows(model_input) -> list[dict]:
    if isinstance(model_input, str):
        model_input = {"prime": model_input}
    if isinstance(model_input, dict):
        model_input = [model_input]
    frame = pd.DataFrame(model_input) if isinstance(model_input, list) else model_input
    if "prime" not in frame.columns:
        raise KarnnaError('input has no "prime" column; send e.g. {"dataframe_records": [{"prime": "Far"}]}')
    rows = []
    for row in frame.to_dict("records"):
        # MLflow turns {"prime": ["a", "b"]} into one row holding lists: spread it out again.
        if isinstance(row["prime"], (list, tuple, np.ndarray)):
            rows.extend(pd.DataFrame(row).to_dict("records"))
        else:
            rows.append(row)
    return rows


def _given(row: dict, key: str, default):
    """row[key], unless absent or a missing value in a column other rows filled."""
    value = row.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return default
    return value
