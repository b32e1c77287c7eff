"""Stage sample: text from models/best.pt primed with sample.prime -> samples/sample.txt, printed
as it is drawn."""

import os
import sys

from pipeline.common import BEST, SAMPLES, clear_outputs, load_config, stage, tracking_uri
from src.data.vocab import PRIME_PARAM
from src.generation.sampling import stream
from src.model import checkpoint
from src.tracking import runs, wal
from src.utils import fileio


@stage
def main() -> None:
    cfg = load_config()
    wal.bound_client_retries(os.environ)  # a dead store fails in seconds, not minutes
    s = cfg.sample
    model, vocab, payload = checkpoint.load(BEST, "cpu")
    vocab.encode_prime(s.prime, PRIME_PARAM)  # the one sample.* value params.yaml's checks cannot judge
    path = SAMPLES / "sample.txt"
    clear_outputs(path)  # persist in dvc.yaml: removed here, once the inputs are checked
    pieces = []
    for (piece,) in stream(model, vocab, s.prime, s.length, top_k=s.top_k, temperature=s.temperature, seed=s.seed):
        pieces.append(piece)
        sys.stdout.write(piece)
        sys.stdout.flush()
    print()
    text = "".join(pieces)
    fileio.write_text(path, text + "\n")  # whole, once drawn: never a half-written sample
    # The head of the sample as a tag: a column that `mlflow ui` can show beside the losses.
    runs.log_to_run(
        payload.get("run_id"),
        tracking_uri(),
        artifacts=[path],
        tags={"sample": text[:500]},
        pending=BEST.parent / wal.FOLDER,
    )


if __name__ == "__main__":
    sys.exit(main())
