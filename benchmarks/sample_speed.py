"""Sampling speed: src.generation.sampling.generate against the seed's per-character loop, side by side.

    python -m benchmarks.sample_speed [--rounds 5] [--length 2000] [--ref-length 200]
                                      [--batch 128] [--batch-length 200] [--threads 0] [--cell lstm] [--json PATH]

The project's model is a 2 x 512 network of `--cell` (an LSTM by default), the reference the
seed's 2 x 512 LSTM, both over 83 characters (the novel's file, licence included; random
weights: the speed does not depend on them), top-k 5, prime "Far".
- reference: benchmarks.reference.seed_sample, batch 1, one nn.LSTM call per character and a
  numpy argsort for top-k; timed at --threads and at one thread, and the faster of the two is
  the baseline of every ratio (so that a thread setting that suits the reference badly does not
  flatter the project); a ratio is the median over rounds of each round's own ratio.
- project: generate() with one sample, with a seed (the fp32 paths, the plain loop's text) and
  without (every path, int8 and bf16 included), and with --batch samples at once (total
  characters/s), the latter at --threads and at one thread.
- the floor: one character's matrix-vector products alone (the stepper's weights, read once, by
  the fastest of the Stepper's candidate paths: numpy's BLAS on its threads or one, torch, bf16,
  int8; the share of the fastest fp32 products alone is printed too),
  the rate sampling would reach if nothing else cost anything; batch-1 utilisation is the median
  over rounds of each round's rate against that round's floor.
  Batched utilisation is model FLOP/s against the fp32 matmul peak (benchmarks.peak) at the same
  thread count, measured in the same rounds.
Rounds run every variant in a rotating order; figures are medians over rounds.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional

import torch

from benchmarks import peak
from benchmarks.common import fmt_rate, machine, median, read_novel, table, threads_arg, time_each, timed, write_json
from benchmarks.reference import SeedLSTM, seed_sample
from src.data.vocab import Vocab, build_vocab
from src.generation.sampling import generate
from src.generation.stepper import EXACT_PATHS, GEMV_PATHS, blas_threads, chosen, paths_for
from src.model.cells import CELLS
from src.model.charrnn import CharRNN, ModelSpec

LSTM_SIZE, NUM_LAYERS, PRIME, TOP_K = 512, 2, "Far", 5
SEEDED, UNSEEDED = "project, batch 1, a seed", "project, batch 1, no seed"


def bench_model(cell: str = "lstm") -> tuple[CharRNN, Vocab]:
    """The sampling benchmarks' model: 2 x 512 of `cell` over the novel's characters, random
    weights from seed 0 (the speed does not depend on them), in eval mode; and the vocabulary."""
    vocab = build_vocab(read_novel(), "lf")
    torch.manual_seed(0)
    return CharRNN(ModelSpec(vocab.size, 64, LSTM_SIZE, NUM_LAYERS, 0.5, cell)).eval(), vocab


def gemv_product_seconds(model: CharRNN, repeats: int = 200) -> dict[str, float]:
    """Seconds of one character's matrix-vector products, nothing else, on each of the Stepper's
    candidate paths (src.generation.stepper.paths_for; torch on one thread, as generate() runs it); the
    fastest is the GEMV floor, the rate sampling would reach if nothing else cost anything. Each
    path is timed as a burst of `repeats` characters' products back to back (the mean, as a
    generate() call meets the machine's load over its whole length, not the median of quiet
    microseconds)."""
    mats = [w.detach() for n in range(NUM_LAYERS) for w in model.layer_weights(n)[:2]]
    mats = mats[1:] + [model.head.weight.detach()]  # the first input projection is a table lookup
    vec = torch.randn(1, LSTM_SIZE)
    before = torch.get_num_threads()
    torch.set_num_threads(1)

    def seconds(path: str) -> float:
        prepare, times = GEMV_PATHS[path]
        prepared = [prepare(w) for w in mats]

        def one_char():
            for w in prepared:
                times(vec, w)

        with blas_threads(path):
            time_each(one_char, 10)  # warm-up
            return timed(lambda: [one_char() for _ in range(repeats)]) / repeats

    try:
        with torch.inference_mode():
            return {path: seconds(path) for path in paths_for(model)}
    finally:
        torch.set_num_threads(before)


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sample_speed", description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default: %(default)s)")
    p.add_argument("--length", type=int, default=2000, help="characters per batch-1 generate() call")
    p.add_argument("--ref-length", type=int, default=200, help="characters per reference call")
    p.add_argument("--batch", type=int, default=128, help="samples generated at once (default: %(default)s)")
    p.add_argument("--batch-length", type=int, default=200, help="characters per sample in the batched call")
    p.add_argument("--threads", type=threads_arg, default="0", help="torch threads; 0: torch's default")
    p.add_argument(
        "--cell",
        choices=list(CELLS),
        default="lstm",
        help="the project's model.cell (the reference is the seed's LSTM); default: %(default)s",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    return p.parse_args(argv)


def make_tasks(args, model: CharRNN, vocab, thread_settings: list[int]) -> tuple[dict[str, tuple[Any, int]], dict]:
    """name -> (a timed run, the characters it makes); and the batched names -> their threads."""
    reference = SeedLSTM(vocab.size, LSTM_SIZE, NUM_LAYERS, 0.5).eval()
    char_to_id = {c: i for i, c in enumerate(vocab.chars)}

    def with_threads(n: int, fn):
        def run() -> float:
            torch.set_num_threads(n)
            try:
                return timed(fn)
            finally:
                torch.set_num_threads(args.threads)

        return run

    tasks: dict[str, tuple[Any, int]] = {}
    for n in thread_settings:
        tasks[f"reference, batch 1, {n} thread(s)"] = (
            with_threads(n, lambda: seed_sample(reference, char_to_id, vocab.chars, PRIME, args.ref_length, TOP_K)),
            args.ref_length,
        )
    for name, seed in ((SEEDED, 1), (UNSEEDED, None)):  # a seed: the fp32 paths only (src.sample)
        tasks[name] = (
            lambda seed=seed: timed(lambda: generate(model, vocab, PRIME, args.length, TOP_K, seed=seed)),
            args.length,
        )
    batched = {f"project, batch {args.batch}, {n} thread(s)": n for n in thread_settings}
    for name, n in batched.items():
        tasks[name] = (
            with_threads(
                n, lambda: generate(model, vocab, PRIME, args.batch_length, TOP_K, seed=1, num_samples=args.batch)
            ),
            args.batch * args.batch_length,
        )
    return tasks, batched


def run_rounds(args, tasks, model: CharRNN, thread_settings: list[int]):
    """Every task, the GEMV floor and the fp32 peak per round, in a rotating order; -> (rates per
    task, floor seconds, peaks per thread count), one entry per round."""
    gates = model.cell.gates
    shapes = [
        peak.Shape(args.batch, LSTM_SIZE, gates * LSTM_SIZE, "recurrent step of the batch"),
        peak.Shape(100 * args.batch, LSTM_SIZE, gates * LSTM_SIZE, "large"),
    ]
    for run, _ in tasks.values():
        run()  # warm-up
    rates: dict[str, list[float]] = {name: [] for name in tasks}
    products: list[dict[str, float]] = []  # per round: each path's products alone
    peaks: dict[int, list[float]] = {n: [] for n in thread_settings}
    names = list(tasks) + ["floor"]
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            if name == "floor":
                products.append(gemv_product_seconds(model))
                for n in thread_settings:
                    torch.set_num_threads(n)
                    peaks[n].append(peak.measure(shapes, ["fp32"], 0.4)["fp32"]["peak"])
                torch.set_num_threads(args.threads)
            else:
                run, chars = tasks[name]
                rates[name].append(chars / run())
        print(
            f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {fmt_rate(v[-1])}" for k, v in rates.items()), flush=True
        )
    return rates, products, peaks


def report(args, vocab, tasks, batched, rates, products, peaks, thread_settings) -> dict[str, Any]:
    floors = [min(p.values()) for p in products]
    fp32_floors = [min(t for path, t in p.items() if path in EXACT_PATHS) for p in products]
    ref_names = [f"reference, batch 1, {n} thread(s)" for n in thread_settings]
    ref_best = max(median(rates[name]) for name in ref_names)
    # Each round's ratio against that round's faster reference: load that comes and goes cancels.
    ref_by_round = [max(rates[name][r] for name in ref_names) for r in range(args.rounds)]
    floor_rate = 1.0 / median(floors)
    fp32_peak = {n: median(v) for n, v in peaks.items()}
    flops = peak.flops_per_char(0, LSTM_SIZE, NUM_LAYERS, vocab.size, training=False)
    rows, out = [], {}
    for name in tasks:
        cps = median(rates[name])
        if name in batched:
            top = fp32_peak[batched[name]]
            util = f"{cps * flops / top * 100:.0f}% of the fp32 peak at its threads, {fmt_rate(top)}FLOP/s"
        else:  # each round against its own floor, as the ratios
            share = median(mine * floor for mine, floor in zip(rates[name], floors))
            util = f"{share * 100:.0f}% of the GEMV floor {fmt_rate(floor_rate)} chars/s"
        ratio = median(mine / ref for mine, ref in zip(rates[name], ref_by_round))
        rows.append([name, fmt_rate(cps), fmt_rate(ref_best), f"{ratio:.1f}x", util])
        out[name] = {"chars_per_sec": cps, "vs_reference": ratio, "per_round": rates[name]}
    for (cell, _, threads, exact), (path, times) in chosen().items():
        print(
            f"path: the Stepper chose {path!r} for the {cell} at {threads} torch thread(s) by timing one step of "
            f"each {'fp32 ' if exact else ''}candidate (median us): "
            + ", ".join(f"{p} {t * 1e6:.0f}" for p, t in times.items())
        )
    print(
        "one character's products alone, per path (median us over rounds): "
        + ", ".join(f"{p} {median([r[p] for r in products]) * 1e6:.0f}" for p in products[0])
    )
    print()
    print(table(["sampling", "chars/s", "reference chars/s (best)", "ratio (median of rounds)", "utilisation"], rows))
    print(
        f"\nforward FLOPs per generated character (LSTM): {flops / 1e6:.2f}M (the first layer's input "
        "projection is a table lookup)"
    )
    many = max(out[name]["vs_reference"] for name in batched)
    for name in (SEEDED, UNSEEDED):
        single = out[name]["vs_reference"]
        share = median(mine * floor for mine, floor in zip(rates[name], floors))
        share32 = median(mine * floor for mine, floor in zip(rates[name], fp32_floors))
        print(
            f"goals, {name}: >= 5x: {'met' if single >= 5 else 'not met'} ({single:.1f}x); "
            f">= 50% of the GEMV floor: {'met' if share >= 0.5 else 'not met'} ({share * 100:.0f}%; "
            f"{share32 * 100:.0f}% of the fastest fp32 products alone)"
        )
    print(f"goal, batch {args.batch} >= 20x: {'met' if many >= 20 else 'not met'} ({many:.1f}x)")
    return {
        "machine": machine(args.threads),
        "cell": args.cell,
        "results": out,
        "stepper_choice": {f"{k[2]} threads{', fp32' if k[3] else ''}": v for k, v in chosen().items()},
        "gemv_floor_chars_per_sec": floor_rate,
        "products_seconds_per_path": {p: median([r[p] for r in products]) for p in products[0]},
        "fp32_peak": fp32_peak,
        "flops_per_char": flops,
    }


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    print(machine(args.threads) + f"; project cell: {args.cell}")
    model, vocab = bench_model(args.cell)
    thread_settings = sorted({args.threads, 1}, reverse=True)
    tasks, batched = make_tasks(args, model, vocab, thread_settings)
    rates, products, peaks = run_rounds(args, tasks, model, thread_settings)
    write_json(args.json, report(args, vocab, tasks, batched, rates, products, peaks, thread_settings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
