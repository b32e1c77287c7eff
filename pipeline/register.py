"""Stage register: the evaluated models/best.pt -> an MLflow model version; @champion moves only
when its fp32 score beats the champion's on the same data (src.serving.registry), named by a
fingerprint of the files the evaluate stage scored: data/split/{val,test}.npy and data/vocab.json.
Writes models/registration.json, what it decided."""

import json
import os
import sys

from pipeline.common import BEST, CORPUS, METRICS, MODELS, SPLIT_DIR, VOCAB, load_config, stage, tracking_uri
from src.config.schema import SampleConfig
from src.data.vocab import Vocab
from src.model import checkpoint
from src.serving import registry
from src.tracking import wal
from src.utils import fileio
from src.utils.errors import KarnnaError

REGISTRATION = MODELS / "registration.json"


@stage
def main() -> None:
    cfg = load_config()
    if not cfg.tracking.enabled:
        fileio.write_json(REGISTRATION, {"registered": False, "reason": "tracking.enabled is false"})
        print("register: tracking.enabled is false; nothing registered")
        return
    payload = checkpoint.load_payload(BEST)
    if payload.get("run_id") is None:
        raise KarnnaError(f"{BEST} was trained with tracking off, so it has no MLflow run; rerun `dvc repro train`")
    wal.bound_client_retries(os.environ)  # a dead store fails in seconds, not minutes
    # What the earlier stages kept while the store was away completes the run before it is
    # registered; without the store this stops here, in one line, and the file stays.
    wal.replay(MODELS / wal.FOLDER, print)
    scores = json.loads((METRICS / "eval.json").read_text())
    if scores.get("step") != payload["step"]:
        raise KarnnaError(
            f"{METRICS / 'eval.json'} scores step {scores.get('step')}, not {BEST}'s {payload['step']}; "
            "run `dvc repro evaluate` first"
        )
    fingerprint = scored_data_fingerprint(scores)
    # The served model's example request, fixed rather than sample.*, so that a sample.* change
    # reruns the sample stage only: the default prime where the model knows it, else the corpus's
    # first word (a text of your own, data.path): never a prime the vocabulary cannot encode.
    vocab = Vocab.from_dict(payload["vocab"], f"{BEST} (vocabulary)")
    head = CORPUS.read_bytes()[:40_000].decode("utf-8", errors="ignore")
    prime = vocab.suggest_prime(head, prefer=SampleConfig().prime)
    example = {"prime": prime, "length": 50, "temperature": 1.0, "top_k": 5, "seed": 1234}
    done = registry.register(
        tracking_uri(),
        payload["run_id"],
        BEST,
        step=payload["step"],
        score=scores["val"]["loss"],
        fingerprint=fingerprint,
        model_name=cfg.tracking.model_name,
        input_example=example,
    )
    fileio.write_json(
        REGISTRATION,
        {
            "registered": True,
            "model_name": done.model_name,
            "version": done.version,
            "champion": done.champion,
            "score": done.score,
            "fingerprint": fingerprint,
            "run_id": payload["run_id"],
        },
    )
    print(f"register: {done.describe()}")


def scored_data_fingerprint(scores: dict) -> str:
    """The fingerprint of the split files and vocabulary, once they are checked to be the ones
    metrics/eval.json scored (by their lengths: a split rewritten since has to be scored again)."""
    splits = {name: fileio.map_npy(SPLIT_DIR / f"{name}.npy") for name in ("val", "test")}
    for name, ids in splits.items():
        scored = scores.get(name, {}).get("chars", 0)
        if scored != (len(ids) if len(ids) >= 2 else 0):  # evaluate skips a split under 2 characters
            raise KarnnaError(
                f"{METRICS / 'eval.json'} scored {scored} {name} characters, {SPLIT_DIR / name}.npy "
                f"holds {len(ids)}; run `dvc repro evaluate` first"
            )
    return registry.data_fingerprint(Vocab.load(VOCAB), splits["val"], splits["test"])


if __name__ == "__main__":
    sys.exit(main())
