"""Sampling when other processes take the cores after the GEMV path was chosen: generate() as
shipped (a threaded path watched, dropped when it collapses) against the first choice forced,
side by side.

    python -m benchmarks.sample_load [--repeats 3] [--calls 3] [--length 300] [--seed] [--load spin]

The model is benchmarks.sample_speed's (2 x 512 LSTM, random weights, the novel's characters,
prime "Far", top-k 5). Each variant runs in a process of its own (the variants alternate,
`--repeats` times), so that one's BLAS threads never spin beside the other's: generate() runs
once on a quiet machine, which measures the Stepper's paths (with --seed among the fp32 ones, as
the sample stage does), then `--calls` calls quiet and `--calls` calls beside another process
(--load: a busy loop holding one core, or a two-thread torch matmul loop):
- "as shipped": generate() with no path named: a threaded path is watched and dropped when it
  collapses (src.generation.stepper.THREADED, demote);
- "forced": generate(gemv=<the quiet choice>): the same arithmetic, never dropped (what a path
  chosen once did for the rest of the process before the watch).
Prints characters/s per phase and variant (medians over repeats of each process's median call)
and the paths each process ended on.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from benchmarks.common import fmt_rate, machine, median, table, timed, write_json
from benchmarks.sample_speed import PRIME, TOP_K, bench_model
from src.generation.sampling import generate
from src.generation.stepper import chosen

LOADS = {  # what the other process does
    "spin": "while True: pass",  # one core held: a thread of a two-thread product waits for its turn
    "matmul": "import torch; torch.set_num_threads(2); a = torch.randn(1024, 1024)\nwhile True: a @ a",
}


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sample_load", description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="processes per variant (default: %(default)s)")
    p.add_argument("--calls", type=int, default=3, help="generate() calls per process and phase")
    p.add_argument("--length", type=int, default=300, help="characters per call (a collapsed call: 10-20 s)")
    p.add_argument("--seed", action="store_true", help="seeded calls: the fp32 paths only, as the sample stage")
    p.add_argument("--load", choices=LOADS, default="spin", help="the other process (default: %(default)s)")
    p.add_argument("--child", choices=("as shipped", "forced"), help=argparse.SUPPRESS)
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    return p.parse_args(argv)


def child(args: argparse.Namespace) -> dict:
    """One variant in this process: -> its quiet choice, quiet and loaded chars/s, its last path."""
    model, vocab = bench_model()
    seed = 0 if args.seed else None
    generate(model, vocab, PRIME, 10, TOP_K, seed=seed)  # measures the paths, quiet
    ((key, (first, times)),) = chosen().items()
    gemv = first if args.child == "forced" else None

    def rate() -> float:
        return median(
            args.length / timed(lambda: generate(model, vocab, PRIME, args.length, TOP_K, seed=seed, gemv=gemv))
            for _ in range(args.calls)
        )

    quiet = rate()
    load = subprocess.Popen([sys.executable, "-c", LOADS[args.load]])
    try:
        time.sleep(1.0)  # the load's threads running before the first call
        loaded = rate()
    finally:
        load.kill()
        load.wait()
    return {
        "first": first,
        "times_us": {p: t * 1e6 for p, t in times.items()},
        "quiet": quiet,
        "loaded": loaded,
        "last": chosen()[key][0] if gemv is None else gemv,
    }


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return 0
    print(machine(torch.get_num_threads()) + f"; load: {args.load}; {'a seed' if args.seed else 'no seed'}")
    runs: dict[str, list[dict]] = {"as shipped": [], "forced": []}
    for _ in range(args.repeats):
        for variant in runs:
            cmd = [
                sys.executable,
                "-m",
                "benchmarks.sample_load",
                "--child",
                variant,
                "--load",
                args.load,
                "--calls",
                str(args.calls),
                "--length",
                str(args.length),
            ] + (["--seed"] if args.seed else [])
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            runs[variant].append(json.loads(out.strip().splitlines()[-1]))
            r = runs[variant][-1]
            print(
                f"{variant}: quiet choice {r['first']} ({', '.join(f'{p} {t:.0f} us' for p, t in r['times_us'].items())}), "
                f"quiet {fmt_rate(r['quiet'])}, loaded {fmt_rate(r['loaded'])} chars/s, ended on {r['last']}"
            )
    rows = [
        [
            v,
            fmt_rate(median(r["quiet"] for r in rs)),
            fmt_rate(median(r["loaded"] for r in rs)),
            ", ".join(sorted({r["last"] for r in rs})),
        ]
        for v, rs in runs.items()
    ]
    print(table(["variant", "quiet chars/s", "loaded chars/s", "path at the end"], rows))
    ratio = median(a["loaded"] / f["loaded"] for a, f in zip(runs["as shipped"], runs["forced"]))
    print(f"loaded, as shipped against forced (median of the repeats' ratios): {ratio:.2f}x")
    write_json(
        args.json,
        {
            "machine": machine(torch.get_num_threads()),
            "load": args.load,
            "seed": args.seed,
            "runs": runs,
            "loaded_ratio": ratio,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
