"""Stage sample: text from models/best.pt primed with sample.prime -> samples/sample.txt, printed."""

import sys

from pipeline.common import BEST, SAMPLES, load_config, stage, tracking_uri
from src import checkpoint, fileio, tracking
from src.sample import generate
from src.stepper import FP32


@stage
def main() -> None:
    cfg = load_config()
    s = cfg.sample
    model, vocab, payload = checkpoint.load(BEST, "cpu")
    # fp32 products: the tracked sample is the same text on a rerun, whichever path is fastest today
    (text,) = generate(
        model, vocab, s.prime, s.length, top_k=s.top_k, temperature=s.temperature, seed=s.seed, gemv=FP32
    )
    path = SAMPLES / "sample.txt"
    fileio.write_text(path, text + "\n")
    print(text)
    # The head of the sample as a tag: a column that `mlflow ui` can show beside the losses.
    tracking.log_to_run(payload.get("run_id"), tracking_uri(), artifacts=[path], tags={"sample": text[:500]})


if __name__ == "__main__":
    sys.exit(main())
