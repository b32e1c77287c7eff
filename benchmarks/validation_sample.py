"""What the sample at each validation costs, against the validation itself, on the default model.

    python -m benchmarks.validation_sample [--rounds 5] [--threads 0] [--chars 200]

A validation as the loop runs it (src.training.evaluate.stream_loss over the whole validation
split, evaluate.rows x evaluate.chunk_len, in the precision train.precision: auto picks here) and
the text it then writes (src.training.samples: train.sample_chars characters after sample.prime,
fp32), alternating, `--rounds` times each, on params.yaml's default model (weights as initialised:
the cost does not depend on them). Prints the medians and the sample's share of a validation.
"""

from __future__ import annotations

import argparse
import os
from typing import Optional

import torch

from benchmarks.common import machine, median, novel_split, table, threads_arg, timed, training_process
from src.config.schema import Config, with_overrides
from src.data.vocab import PRIME_PARAM
from src.training import evaluate
from src.training.device import precision_name, resolve_precision
from src.training.samples import draw
from src.training.setup import build_model, generators
from src.utils import cores


def main(argv: Optional[list[str]] = None) -> int:
    d = Config()
    p = argparse.ArgumentParser(prog="python -m benchmarks.validation_sample", description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5, help="validations and samples timed, each (default: %(default)s)")
    p.add_argument("--threads", type=threads_arg, default=0, help="torch threads; 0: one per core (default)")
    p.add_argument("--chars", type=int, default=d.train.sample_chars, help="train.sample_chars (default: %(default)s)")
    p.add_argument("--lstm-size", type=int, default=d.model.lstm_size, help="model.lstm_size (default: %(default)s)")
    p.add_argument("--val-chars", type=int, default=None, help="score this prefix of the split (default: all of it)")
    args = p.parse_args(argv)
    cores.reproducible_fp32(os.environ)  # as the train stage, before torch's first product
    _, malloc = training_process(args.threads)
    print(machine(torch.get_num_threads()))
    print(malloc)
    cfg = with_overrides(d, {"model.lstm_size": args.lstm_size, "train.sample_chars": args.chars})
    vocab, _, val_ids = novel_split()
    device = torch.device("cpu")
    amp = resolve_precision(cfg.train.precision, device, cfg.model.cell)
    model = build_model(cfg, vocab, generators(cfg.train.seed, device)[0]).train()
    val = torch.from_numpy(val_ids[: args.val_chars].astype("int64"))
    prime = vocab.encode_prime(cfg.sample.prime, PRIME_PARAM)
    s, ev = cfg.sample, cfg.evaluate

    def validation() -> None:
        evaluate.stream_loss(model, val, ev.rows, ev.chunk_len, amp)

    def sample() -> None:
        draw(model, prime, args.chars, s.top_k, s.temperature, s.seed)

    sample()  # the first forward builds kernels
    times: dict[str, list[float]] = {"validation": [], "sample": []}
    for _ in range(args.rounds):
        times["validation"].append(timed(validation))
        times["sample"].append(timed(sample))
    val_s, sample_s = median(times["validation"]), median(times["sample"])
    m = cfg.model
    print(
        f"{m.num_layers}x{m.lstm_size} {m.cell.upper()}, validation on {len(val):,} characters in "
        f"{precision_name(amp)}, sample of {args.chars} characters in fp32; medians of {args.rounds} rounds"
    )
    print(
        table(
            ["", "seconds", "per character", "share of a validation"],
            [
                ["validation", f"{val_s:.3f}", f"{val_s / len(val) * 1e6:.2f} us", "100%"],
                [
                    "sample",
                    f"{sample_s:.3f}",
                    f"{sample_s / max(args.chars, 1) * 1e3:.2f} ms",
                    f"{sample_s / val_s:.1%}",
                ],
            ],
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
