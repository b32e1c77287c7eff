"""Stage sample: text from models/best.pt primed with sample.prime -> samples/sample.txt, printed."""

import sys

from pipeline.common import BEST, SAMPLES, clear_outputs, load_config, stage, tracking_uri
from src import checkpoint, fileio, tracking
from src.errors import KarnnaError
from src.sample import generate


@stage
def main() -> None:
    cfg = load_config()
    s = cfg.sample
    model, vocab, payload = checkpoint.load(BEST, "cpu")
    try:  # the one sample.* value params.yaml's checks cannot judge: before the old sample goes
        vocab.encode(s.prime)
    except KarnnaError as exc:
        raise KarnnaError(f"sample.prime {s.prime!r}: {exc}") from None
    path = SAMPLES / "sample.txt"
    clear_outputs(path)  # persist in dvc.yaml: removed here, once the inputs are checked
    (text,) = generate(model, vocab, s.prime, s.length, top_k=s.top_k, temperature=s.temperature, seed=s.seed)
    fileio.write_text(path, text + "\n")
    print(text)
    # The head of the sample as a tag: a column that `mlflow ui` can show beside the losses.
    tracking.log_to_run(payload.get("run_id"), tracking_uri(), artifacts=[path], tags={"sample": text[:500]})


if __name__ == "__main__":
    sys.exit(main())
