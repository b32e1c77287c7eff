"""Text from a karnna checkpoint, one character at a time from a prime string:

python -m src.sample --checkpoint models/best.pt --prime Far --length 500
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import Optional

from src.config.schema import SampleConfig
from src.data.vocab import PRIME_OPTION
from src.generation.sampling import check_request, stream
from src.model import checkpoint
from src.utils import faults, repo


def main(argv: Optional[list[str]] = None) -> int:
    d = SampleConfig()
    p = argparse.ArgumentParser(prog="python -m src.sample", description="Generate text from a karnna checkpoint.")
    p.add_argument("--checkpoint", type=Path, default=repo.Layout(Path()).best, help="default: %(default)s")
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
    return faults.run(lambda: sample(args), "src.sample")


def sample(args: argparse.Namespace) -> int:
    top_k = 1 if args.greedy else args.top_k
    check_request(args.length, top_k, args.temperature, args.seed, args.num_samples, option=True)
    model, vocab, _ = checkpoint.load(args.checkpoint, args.device)
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
