"""Text from a karnna checkpoint, one character at a time from a prime string:

python -m src.sample --checkpoint models/best.pt --prime Far --length 500
python -m src.sample --run "<run id or name>" --which last     # a training run's checkpoint
python -m src.sample --model models:/karnna-char-lstm@champion  # or models:/<name>/<version>

--run and --model look in the tracking store the stages use: MLFLOW_TRACKING_URI, else the
repo's mlflow.db.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Optional

from src.config.schema import SampleConfig
from src.data.vocab import PRIME_OPTION
from src.generation.sampling import check_request, stream
from src.model import checkpoint
from src.serving import lookup
from src.tracking import wal
from src.utils import faults, repo

ROOT = Path(__file__).resolve().parents[1]


def main(argv: Optional[list[str]] = None) -> int:
    d = SampleConfig()
    p = argparse.ArgumentParser(prog="python -m src.sample", description="Generate text from a karnna checkpoint.")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", type=Path, help=f"a checkpoint file (default: {repo.Layout(Path()).best})")
    source.add_argument("--run", help="a training run in the tracking store, by id or name (mlflow ui's Run Name)")
    source.add_argument("--model", help="a registered model: models:/<name>@<alias> or models:/<name>/<version>")
    p.add_argument("--which", choices=lookup.WHICH, default="best", help="--run's checkpoint (default: %(default)s)")
    p.add_argument("--prime", default=d.prime, help="text to start from (default: %(default)r)")
    p.add_argument("--length", type=int, default=d.length, help="new characters to write (default: %(default)s)")
    p.add_argument(
        "--top-k", type=int, default=d.top_k, help="sample among the k likeliest; 0: all (default: %(default)s)"
    )
    p.add_argument("--temperature", type=float, default=d.temperature, help="default: %(default)s")
    p.add_argument("--seed", type=int, default=None, help="fix the random draws (default: a fresh seed)")
    p.add_argument("--greedy", action="store_true", help="always take the likeliest character (top-k 1)")
    p.add_argument("--num-samples", type=int, default=1, help="independent samples, generated as one batch")
    p.add_argument("--device", default="cpu", help="cpu, cuda or mps (default: %(default)s)")
    args = p.parse_args(argv)
    if args.which != "best" and args.run is None:
        p.error("--which goes with --run")
    uri = repo.tracking_uri(os.environ, ROOT)
    if args.run or args.model:
        wal.bound_client_retries(os.environ)  # a dead store fails in seconds, not minutes
    return faults.run(lambda: sample(args, uri), "src.sample", store=uri if args.run or args.model else None)


def load_model(args: argparse.Namespace, uri: str):
    """The model and vocabulary of --checkpoint, --run or --model (fetched from store `uri`)."""
    if args.run is None and args.model is None:
        return checkpoint.load(args.checkpoint or repo.Layout(Path()).best, args.device)[:2]
    with tempfile.TemporaryDirectory(prefix="karnna-sample-") as folder:
        if args.run is not None:
            path = lookup.run_checkpoint(uri, args.run, args.which, Path(folder), say=_note)
        else:
            path = lookup.model_checkpoint(uri, args.model, Path(folder))
        return checkpoint.load(path, args.device)[:2]


def _note(line: str) -> None:
    print(line, file=sys.stderr)


def sample(args: argparse.Namespace, uri: str) -> int:
    top_k = 1 if args.greedy else args.top_k
    check_request(args.length, top_k, args.temperature, args.seed, args.num_samples, option=True)
    model, vocab = load_model(args, uri)
    vocab.encode_prime(args.prime, PRIME_OPTION)
    pieces = stream(model, vocab, args.prime, args.length, top_k, args.temperature, args.seed, args.num_samples)
    try:
        if args.num_samples == 1:  # as it is drawn: a long text starts at once
            for (piece,) in pieces:
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
        else:  # drawn side by side, printed one after another
            print("\n\n".join("".join(texts) for texts in zip(*pieces)))
        sys.stdout.flush()
    except BrokenPipeError:  # the reader had enough (`| head`): stop quietly, as `yes | head` does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 128 + signal.SIGPIPE
    return 0


if __name__ == "__main__":
    sys.exit(main())
