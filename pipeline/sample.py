"""Stage sample: text from models/best.pt primed with sample.prime -> samples/sample.txt, printed."""

import os
import sys

from pipeline.common import BEST, SAMPLES, load_config, stage, tracking_uri
from src import checkpoint, fileio, tracking, tracking_wal
from src.sample import generate


@stage
def main() -> None:
    cfg = load_config()
    for name, value in tracking_wal.CLIENT_LIMITS.items():  # a dead store fails in seconds, not minutes
        os.environ.setdefault(name, value)
    s = cfg.sample
    model, vocab, payload = checkpoint.load(BEST, "cpu")
    (text,) = generate(model, vocab, s.prime, s.length, top_k=s.top_k, temperature=s.temperature, seed=s.seed)
    path = SAMPLES / "sample.txt"
    fileio.write_text(path, text + "\n")
    print(text)
    # The head of the sample as a tag: a column that `mlflow ui` can show beside the losses.
    tracking.log_to_run(
        payload.get("run_id"),
        tracking_uri(),
        artifacts=[path],
        tags={"sample": text[:500]},
        pending=BEST.parent / tracking_wal.FOLDER,
    )


if __name__ == "__main__":
    sys.exit(main())
