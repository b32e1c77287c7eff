"""Training speed on the seed's recipe: the project's training step against the seed's, side by side.

    python -m benchmarks.train_speed [--cycles 8] [--steps 2] [--threads 0] [--quality-steps 30] [--json PATH]

The recipe: 2 x 512 LSTM, dropout 0.5, batches of 100 x 100 characters of the novel.
- reference: benchmarks.reference (one-hot inputs, fp32, a numpy batch per step, the loss
  fetched at every step).
- project: src.training.loop.train_step, the step of src/training/loop.py's loop (CharRNN with params.yaml's 64-wide embedding,
  batches as views of one tensor, src.training.device's autocast, Adam, clipping, the loss kept on the
  device and fetched every 25 steps), in bf16 autocast and in fp32.
The process is set up as the train stage's (benchmarks.common.training_process: glibc keeps
freed memory; --glibc-default leaves it off), so the reference runs with it too.
A cycle runs --steps steps of each, then times the matmul peak (benchmarks.peak: the fastest
kernel on the fastest of the LSTM's GEMM shapes, picked once at the start), in an order that
rotates from cycle to cycle: load from other processes hits every variant alike. Reported:
medians over all timed steps, and the median over cycles of each cycle's ratio and utilisation
(achieved model FLOP/s over that cycle's peak of the precision used). Where torch cannot run a
bf16 LSTM on the CPU (src.training.device.cpu_bf16_fails: an AVX2 CPU), the bf16 rows are left out and the
goals are judged on fp32, the precision the pipeline's 'auto' takes there.

Then the quality check: src.training.loop.train() itself, on the whole novel, for --quality-steps
steps in fp32 and in bf16 from the same seed and in fp32 from the next seed; the validation loss
(whole validation split) of bf16 is judged against the fp32 seed-to-seed difference.
"""

from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from benchmarks import peak
from benchmarks.common import (
    add_glibc_default,
    fmt_rate,
    machine,
    median,
    novel_split,
    table,
    threads_arg,
    time_each,
    training_process,
    write_json,
)
from benchmarks.reference import SeedTrainer
from src.config.schema import config_from_dict
from src.data import batches
from src.data.vocab import Vocab
from src.model.charrnn import CharRNN, ModelSpec
from src.training.device import cpu_bf16_fails, resolve_precision
from src.training.loop import train, train_step
from src.training.state import TrainPaths

LSTM_SIZE, NUM_LAYERS, DROPOUT, BATCH, SEQ_LEN, EMBEDDING = 512, 2, 0.5, 100, 100, 64
LOG_INTERVAL = 25
CPU = torch.device("cpu")


class ProjectTrainer:
    """src/training/loop.py's step on the seed recipe, one step at a time so that it can be interleaved."""

    def __init__(
        self,
        train_ids: np.ndarray,
        vocab_size: int,
        precision: str,
        device: torch.device = CPU,
        batch_size: int = BATCH,
        seed: int = 1234,
    ):
        torch.manual_seed(seed)
        self.device, self.batch_size = device, batch_size
        self.model = CharRNN(ModelSpec(vocab_size, EMBEDDING, LSTM_SIZE, NUM_LAYERS, DROPOUT)).to(device).train()
        self.opt = torch.optim.Adam(self.model.parameters(), lr=2e-3)
        self.amp = resolve_precision(precision, device)
        self.grid = batches.batchify(torch.from_numpy(train_ids.astype(np.int64)).to(device), batch_size)
        self.batches = self._forever()
        self.pending: list[torch.Tensor] = []

    def _forever(self):
        while True:
            self.hidden = self.model.init_hidden(self.batch_size, self.device)
            yield from batches.windows(self.grid, SEQ_LEN)

    def step(self) -> None:
        x, y = next(self.batches)
        loss, _, self.hidden = train_step(self.model, self.opt, None, x, y, self.hidden, self.amp, 5.0)
        self.pending.append(loss)
        if len(self.pending) == LOG_INTERVAL:
            torch.stack(self.pending).tolist()
            self.pending.clear()

    def timed_steps(self, n: int) -> list[float]:
        return time_each(self.step, n)


def pick_peak_kernels(seconds: float, precisions: list[str]) -> dict[str, tuple[str, peak.Shape]]:
    """The fastest (kernel, shape) of each precision, measured once, to be re-timed every cycle."""
    shapes = peak.lstm_shapes(BATCH, SEQ_LEN, LSTM_SIZE)
    result = peak.measure(shapes, precisions, seconds)
    best = {}
    for precision, r in result.items():
        kernel, what = max(r["rates"], key=r["rates"].get)
        best[precision] = (kernel, next(s for s in shapes if s.what == what))
    return best


def throughput(args, vocab: Vocab, train_ids: np.ndarray) -> dict[str, Any]:
    recipe = (train_ids, vocab.size, LSTM_SIZE, NUM_LAYERS, DROPOUT, BATCH, SEQ_LEN)
    make = {
        "reference": lambda: SeedTrainer(*recipe),
        "reference bf16": lambda: SeedTrainer(*recipe, amp=torch.bfloat16),
        "fp32": lambda: ProjectTrainer(train_ids, vocab.size, "fp32"),
        "bf16": lambda: ProjectTrainer(train_ids, vocab.size, "bf16"),
    }  # where torch has no bf16 LSTM on this CPU, the fp32 rows only
    trainers = {k: m() for k, m in make.items() if not (args.no_bf16 and "bf16" in k)}
    for t in trainers.values():
        t.timed_steps(2)  # warm-up: oneDNN builds its kernels on first use
    # without a bf16 LSTM, bf16 GEMMs are beside the point (and an AVX2 CPU's took seconds each)
    precisions = ["fp32"] if args.no_bf16 else ["fp32", "bf16"]
    kernels = pick_peak_kernels(args.peak_seconds * 4, precisions)
    print("peak kernels: " + ", ".join(f"{p} {k} on {s.m}x{s.k}x{s.n}" for p, (k, s) in kernels.items()), flush=True)
    peak_fns = {p: (peak.KERNELS[k](s, peak.DTYPES[p]), s.flops) for p, (k, s) in kernels.items()}
    gemms = step_gemms(vocab.size)
    roof_shapes = [s for g in gemms.values() for s, _ in g]
    roof_rates: dict[str, dict] = {p: {} for p in precisions}  # (m, k, n) -> the fastest FLOP/s measured
    steps: dict[str, list[float]] = {name: [] for name in trainers}
    cycles: list[dict[str, float]] = []
    order = list(trainers) + ["peak"]
    for c in range(args.cycles):
        cycle = {}
        for task in order[c % len(order) :] + order[: c % len(order)]:
            if task == "peak":
                with torch.no_grad():
                    for p, (fn, flops) in peak_fns.items():
                        cycle[f"peak {p}"] = peak.gemm_rate(fn, flops, args.peak_seconds)
                    for p, best in roof_rates.items():  # every GEMM shape of the steps, this cycle and best
                        rates = peak.shape_rates(roof_shapes, p, args.roofline_seconds)
                        for name, g in gemms.items():
                            cycle[f"roofline {name} {p}"] = peak.roofline_seconds(g, rates) / (BATCH * SEQ_LEN)
                        for key, rate in rates.items():
                            best[key] = max(rate, best.get(key, 0.0))
            else:
                rates = [BATCH * SEQ_LEN / t for t in trainers[task].timed_steps(args.steps)]
                steps[task].extend(rates)
                cycle[task] = median(rates)
        cycles.append(cycle)
        print(
            f"cycle {c + 1}/{args.cycles}: "
            + ", ".join(
                f"{k} {fmt_rate(v)}" + ("FLOP/s" if k.startswith("peak") else " chars/s")
                for k, v in cycle.items()
                if not k.startswith("roofline")
            ),
            flush=True,
        )
    roofline = {
        name: {p: peak.roofline_seconds(g, roof_rates[p]) / (BATCH * SEQ_LEN) for p in roof_rates}
        for name, g in gemms.items()
    }  # seconds per character at each precision
    return {
        "steps": steps,
        "cycles": cycles,
        "peak_kernels": {p: [k, s.what] for p, (k, s) in kernels.items()},
        "roofline_s_per_char": roofline,
        "roofline_rates": {p: {"x".join(map(str, k)): r for k, r in v.items()} for p, v in roof_rates.items()},
    }


def step_gemms(vocab_size: int) -> dict[str, list[tuple[peak.Shape, int]]]:
    """The GEMMs of the project's and the reference's step (one-hot inputs: no input gradient)."""
    return {
        "project": peak.step_gemms(BATCH, SEQ_LEN, EMBEDDING, LSTM_SIZE, NUM_LAYERS, vocab_size),
        "reference": peak.step_gemms(BATCH, SEQ_LEN, vocab_size, LSTM_SIZE, NUM_LAYERS, vocab_size, input_grad=False),
    }


def quality(args, vocab: Vocab, train_ids: np.ndarray, val_ids: np.ndarray) -> list[dict]:
    runs = []
    with tempfile.TemporaryDirectory(prefix="karnna-bench-") as tmp:
        paths = TrainPaths(Path(tmp) / "best.pt", Path(tmp) / "last.pt")
        for precision, seed in (("fp32", args.seed), ("bf16", args.seed), ("fp32", args.seed + 1)):
            cfg = config_from_dict(
                {
                    "model": {
                        "embedding_dim": EMBEDDING,
                        "lstm_size": LSTM_SIZE,
                        "num_layers": NUM_LAYERS,
                        "dropout": DROPOUT,
                    },
                    "train": {
                        "batch_size": BATCH,
                        "seq_len": SEQ_LEN,
                        "max_steps": args.quality_steps,
                        "eval_interval": args.quality_steps,
                        "device": "cpu",
                        "precision": precision,
                        "num_threads": args.threads,
                        "seed": seed,
                    },
                    "tracking": {"enabled": False},
                }
            )
            result = train(cfg, vocab, train_ids, val_ids, paths, progress=False, log=lambda _: None)
            runs.append(
                {"precision": precision, "seed": seed, "val_loss": result.best_val_loss, "seconds": result.seconds}
            )
            print(
                f"quality: {precision} seed {seed}: val loss {result.best_val_loss:.4f} after "
                f"{args.quality_steps} steps ({result.seconds:.0f} s)",
                flush=True,
            )
    return runs


def speed_table(thr: dict[str, Any], flops: dict[str, float], peaks: dict[str, float]) -> dict[str, dict]:
    precision = {"reference": "fp32", "reference bf16": "bf16", "fp32": "fp32", "bf16": "bf16"}
    model = {"reference": "reference", "reference bf16": "reference", "fp32": "project", "bf16": "project"}
    cycles, roof = thr["cycles"], thr["roofline_s_per_char"]
    ref = median(thr["steps"]["reference"])
    rows, out = [], {}
    for key, label in (
        ("reference", "reference: seed recipe, fp32, one-hot"),
        ("reference bf16", "reference with bf16 autocast"),
        ("fp32", "project, fp32"),
        ("bf16", "project, bf16 autocast"),
    ):
        if key not in thr["steps"]:
            continue
        cps = median(thr["steps"][key])
        ratio = median(c[key] / c["reference"] for c in cycles)
        util = median(c[key] * flops[key] / c[f"peak {precision[key]}"] for c in cycles)
        roof_s = median(c[f"roofline {model[key]} {precision[key]}"] for c in cycles)
        roof_util = median(c[key] * c[f"roofline {model[key]} {precision[key]}"] for c in cycles)
        best_util = cps * roof[model[key]][precision[key]]
        rows.append(
            [
                label,
                fmt_rate(cps),
                fmt_rate(ref),
                f"{ratio:.2f}x",
                f"{fmt_rate(cps * flops[key])}FLOP/s",
                f"{util * 100:.0f}% (peak {precision[key]} {fmt_rate(peaks[precision[key]])}FLOP/s)",
                f"{roof_util * 100:.0f}% (roofline {fmt_rate(1 / roof_s)} chars/s)",
                f"{best_util * 100:.0f}% ({fmt_rate(1 / roof[model[key]][precision[key]])} chars/s)",
            ]
        )
        out[key] = {
            "chars_per_sec": cps,
            "vs_reference": ratio,
            "utilisation": util,
            "roofline_utilisation": roof_util,
            "best_rates_roofline_utilisation": best_util,
        }
    print()
    print(
        table(
            [
                "training step",
                "chars/s",
                "reference chars/s",
                "ratio",
                "model FLOP/s",
                "utilisation (single peak)",
                "of the step's own roofline",
                "of the roofline at the run's best rates",
            ],
            rows,
        )
    )
    print(
        "roofline: every GEMM of the step (forward input projection and recurrent steps, backward input and "
        "recurrent gradients, weight gradients, output layer) at the fastest rate measured for its shape "
        "(torch.mm or oneDNN), FLOP-weighted: the step's time if it were nothing but its GEMMs. Own roofline: "
        "each cycle's rates, median over cycles (load cancels, as in the ratios); best rates: each shape's "
        "fastest in any cycle against the median step (lower while other processes load the machine)."
    )
    return out


def quality_verdict(args, runs: list[dict]) -> dict[str, Any]:
    verdict: dict[str, Any] = {}
    if runs:
        fp32, bf16, fp32_next = (r["val_loss"] for r in runs)
        noise = abs(fp32_next - fp32)
        verdict = {"bf16_minus_fp32": bf16 - fp32, "seed_noise": noise, "holds": bf16 - fp32 <= max(noise, 0.01)}
        print()
        print(
            table(
                ["precision", "seed", f"val loss after {args.quality_steps} steps", "minus fp32, same seed", "seconds"],
                [
                    [
                        r["precision"],
                        r["seed"],
                        f"{r['val_loss']:.4f}",
                        f"{r['val_loss'] - fp32:+.4f}",
                        f"{r['seconds']:.0f}",
                    ]
                    for r in runs
                ],
            )
        )
        print(
            f"\nbf16 - fp32 = {bf16 - fp32:+.4f} nats against a seed-to-seed difference of {noise:.4f}: "
            + ("the loss holds" if verdict["holds"] else "bf16 is worse than the noise")
        )
    return verdict


def goals_met(out: dict[str, dict], verdict: dict[str, Any]) -> dict[str, Optional[bool]]:
    """On the pipeline's CPU path: bf16, or fp32 where torch has no bf16 LSTM."""
    p = "bf16" if "bf16" in out else "fp32"
    goals = {
        f">= 1.5x reference ({p})": out[p]["vs_reference"] >= 1.5,
        f">= 60% of the {p} peak": out[p]["utilisation"] >= 0.6,
        f">= 75% of the {p} step's roofline": out[p]["roofline_utilisation"] >= 0.75,
        "loss no worse than fp32": verdict.get("holds"),
    }
    print(
        "goals: "
        + "; ".join(
            f"{k}: {'met' if ok else 'not met' if ok is not None else 'not checked'}" for k, ok in goals.items()
        )
    )
    return goals


def report(args, thr: dict[str, Any], runs: list[dict]) -> dict[str, Any]:
    v = args.vocab_size
    project, reference = (peak.flops_per_char(d, LSTM_SIZE, NUM_LAYERS, v) for d in (EMBEDDING, v))
    flops = {"reference": reference, "reference bf16": reference, "fp32": project, "bf16": project}
    cycles, roof = thr["cycles"], thr["roofline_s_per_char"]
    peaks = {p: median(c[f"peak {p}"] for c in cycles) for p in ("fp32", "bf16") if f"peak {p}" in cycles[0]}
    out = speed_table(thr, flops, peaks)
    fast = "bf16" if "bf16" in out else "fp32"
    rate = out[fast]["chars_per_sec"]
    print(
        f"\nratio and utilisation: medians over cycles of each cycle's own figures. FLOPs per character "
        f"(training, 3x forward): project {flops['fp32'] / 1e6:.2f}M, reference {flops['reference'] / 1e6:.2f}M. "
        f"At the {fast} rate an epoch ({args.train_chars:,} characters) takes {args.train_chars / rate / 60:.1f} "
        f"min, the seed's 20 epochs {20 * args.train_chars / rate / 3600:.1f} h."
    )
    verdict = quality_verdict(args, runs)
    goals = goals_met(out, verdict)
    return {
        "machine": args.machine,
        "keep_freed_memory": args.keep_freed_memory,
        "results": out,
        "peaks": peaks,
        "roofline_s_per_char": roof,
        "roofline_rates": thr["roofline_rates"],
        "flops_per_char": flops,
        "cycles": cycles,
        "peak_kernels": thr["peak_kernels"],
        "quality": runs,
        "quality_verdict": verdict,
        "goals": goals,
    }


def onednn_version() -> str:
    found = re.search(r"(oneDNN|MKL-DNN) v[\d.]+", torch.__config__.show())
    return found.group(0).replace("MKL-DNN", "oneDNN") if found else "no oneDNN in this torch build"


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.train_speed", description=__doc__.splitlines()[0])
    p.add_argument("--cycles", type=int, default=8, help="interleaved cycles (default: %(default)s)")
    p.add_argument("--steps", type=int, default=2, help="timed steps per variant and cycle (default: %(default)s)")
    p.add_argument("--peak-seconds", type=float, default=0.3, help="matmul timing per precision and cycle")
    p.add_argument(
        "--roofline-seconds",
        type=float,
        default=0.03,
        help="timing per GEMM shape, kernel and precision in each cycle (default: %(default)s)",
    )
    p.add_argument("--threads", type=threads_arg, default="0", help="torch threads; 0: torch's default")
    p.add_argument("--quality-steps", type=int, default=30, help="steps of the quality check; 0 skips it")
    add_glibc_default(p)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args(argv)
    # the reference runs with it too: same process
    args.keep_freed_memory, setup = training_process(args.threads, args.glibc_default)
    args.machine = machine(args.threads)
    print(args.machine)
    print(setup)
    print(
        "path: project on CPU with dropout: src.model's layer-by-layer oneDNN LSTM (one torch.lstm call per "
        "layer, time-major) with its own 16-bit dropout masks; reference: nn.LSTM (both layers in one call) with "
        f"ATen's bernoulli dropout; {onednn_version()}"
    )
    vocab, train_ids, val_ids = novel_split()
    args.vocab_size, args.train_chars = vocab.size, len(train_ids)
    print(
        f"seed recipe: {NUM_LAYERS}x{LSTM_SIZE} LSTM, dropout {DROPOUT}, batch {BATCH} x {SEQ_LEN}; "
        f"{args.cycles} cycles of {args.steps} timed steps per variant",
        flush=True,
    )
    failure = cpu_bf16_fails("lstm")
    args.no_bf16 = failure is not None
    if failure:
        print(f"bf16: torch cannot run a bf16 LSTM on this CPU ({failure}): fp32 rows only, no quality check")
    thr = throughput(args, vocab, train_ids)
    runs = quality(args, vocab, train_ids, val_ids) if args.quality_steps and not args.no_bf16 else []
    write_json(args.json, report(args, thr, runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
