"""Correctness and training speed on a CUDA GPU: one script to run on a lent GPU machine.

    python -m benchmarks.gpu_check [--out gpu_check.json] [--batches 100,256,512] [--seconds 3]
                                   [--train-steps 300]

On this project's GPU machine (the device tool: one prepared run, then give the machine back),
whose python3 holds a CUDA build of torch:

    PYTHONUNBUFFERED=1 python3 -m benchmarks.gpu_check --out $OUT/gpu_check.json

1. Correctness: the same model (dropout 0, as two devices never draw the same masks) on the
   same 100 x 100 batch, on the CPU and on the GPU, in fp32 and in bf16 autocast: the losses
   must agree within a relative tolerance and the gradients point the same way (cosine); the
   validation scorer (src.training.evaluate) too.
2. The GPU's matmul peak (torch.mm, fp32 and bf16, the LSTM's shapes and 8192^3).
3. Training throughput of the project's step (benchmarks.train_speed.ProjectTrainer: cuDNN
   LSTM, the whole corpus on the device so no batch crosses from the host, loss fetched every
   25 steps) for 2 x 512 at batch 100 x 100 (the seed's) and larger batches, bf16 and fp32.
4. The real loop: src.training.loop.train() for --train-steps steps (validation and checkpoints
   included), and the estimated time of the seed's full recipe (20 epochs) at the measured rate.
5. Sampling: src.generation.sampling.generate() on the GPU, one sample and 128 at once.
Uses the novel where it is found (../shared/data/anna.txt does not travel to the device
machine), else random characters from a fixed seed: speed does not depend on the text.
Exits 0 with a message where torch sees no CUDA GPU, 1 where a correctness check fails.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks import peak
from benchmarks.common import fmt_rate, machine, novel_path, novel_split, table, write_json
from benchmarks.train_speed import BATCH, EMBEDDING, LSTM_SIZE, NUM_LAYERS, SEQ_LEN, ProjectTrainer
from src.config.schema import config_from_dict
from src.data import batches
from src.data.vocab import Vocab, build_vocab
from src.generation.sampling import generate
from src.model.charrnn import CharRNN, ModelSpec
from src.training import evaluate
from src.training.device import autocast, resolve_precision
from src.training.loop import train
from src.training.state import TrainPaths

CPU = torch.device("cpu")
# (loss relative difference, gradient cosine): cuDNN may use TF32 for fp32 RNN GEMMs.
TOLERANCE = {"fp32": (2e-3, 0.999), "bf16": (2e-2, 0.99)}
SEED_EPOCHS = 20


def corpus(n_train: int = 1_786_701, n_val: int = 198_522) -> tuple[Vocab, np.ndarray, np.ndarray, str]:
    if novel_path() is not None:
        vocab, train_ids, val_ids = novel_split()
        return vocab, train_ids, val_ids, "the novel"
    vocab = build_vocab("".join(chr(33 + i) for i in range(83)), "lf")
    ids = np.random.default_rng(0).integers(0, vocab.size, n_train + n_val).astype(vocab.dtype)
    return vocab, ids[:n_train], ids[n_train:], "random characters (the novel was not found)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_same_batch(train_ids: np.ndarray, vocab_size: int, device: torch.device, precision: str) -> dict:
    torch.manual_seed(0)
    models = {CPU: CharRNN(ModelSpec(vocab_size, EMBEDDING, LSTM_SIZE, NUM_LAYERS, 0.0)).train()}
    models[device] = copy.deepcopy(models[CPU]).to(device)
    x, y = next(batches.windows(batches.batchify(torch.from_numpy(train_ids.astype(np.int64)), BATCH), SEQ_LEN))
    losses, grads = {}, {}
    for dev, model in models.items():
        with autocast(dev, resolve_precision(precision, dev)):
            logits, _ = model(x.to(dev))
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.to(dev).flatten())
        loss.backward()
        losses[dev] = loss.item()
        grads[dev] = torch.cat([p.grad.float().flatten().cpu() for p in model.parameters()])
    rel = abs(losses[device] - losses[CPU]) / losses[CPU]
    cos = F.cosine_similarity(grads[device], grads[CPU], dim=0).item()
    tol_loss, tol_cos = TOLERANCE[precision]
    return {
        "what": f"training loss + gradients, {precision}",
        "cpu": losses[CPU],
        "gpu": losses[device],
        "rel_diff": rel,
        "grad_cosine": cos,
        "ok": rel <= tol_loss and cos >= tol_cos,
        "tolerance": f"rel <= {tol_loss:g}, cos >= {tol_cos:g}",
    }


def check_scorer(val_ids: np.ndarray, vocab_size: int, device: torch.device, precision: str) -> dict:
    torch.manual_seed(1)
    model = CharRNN(ModelSpec(vocab_size, EMBEDDING, LSTM_SIZE, NUM_LAYERS, 0.5))
    ids = torch.from_numpy(val_ids[:20_000].astype(np.int64))
    scores = {}
    for dev in (CPU, device):
        scores[dev] = evaluate.stream_loss(model.to(dev), ids.to(dev), 16, 500, resolve_precision(precision, dev))
    rel = abs(scores[device] - scores[CPU]) / scores[CPU]
    tol_loss, _ = TOLERANCE[precision]
    return {
        "what": f"validation scorer, {precision}",
        "cpu": scores[CPU],
        "gpu": scores[device],
        "rel_diff": rel,
        "grad_cosine": None,
        "ok": rel <= tol_loss,
        "tolerance": f"rel <= {tol_loss:g}",
    }


def matmul_peak(device: torch.device, seconds: float) -> dict[str, float]:
    shapes = peak.lstm_shapes(BATCH, SEQ_LEN, LSTM_SIZE)
    if device.type == "cuda":  # seconds a product on a CPU
        shapes.append(peak.Shape(8192, 8192, 8192, "large square"))
    out = {}
    for name, dtype in peak.DTYPES.items():
        rates = []
        for s in shapes:
            a = torch.randn(s.m, s.k, dtype=dtype, device=device)
            b = torch.randn(s.k, s.n, dtype=dtype, device=device)

            def mm(a=a, b=b):
                torch.mm(a, b)
                sync(device)

            rates.append(peak.gemm_rate(mm, s.flops, seconds / len(shapes)))
        out[name] = max(rates)
    return out


def train_rate(
    train_ids: np.ndarray, vocab_size: int, device: torch.device, batch: int, precision: str, seconds: float
) -> float:
    trainer = ProjectTrainer(train_ids, vocab_size, precision, device, batch)
    for _ in range(5):
        trainer.step()  # warm-up: cuDNN picks its kernels on first use
    sync(device)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(25):
            trainer.step()
        steps += 25
        sync(device)
    return steps * batch * SEQ_LEN / (time.perf_counter() - start)


def real_loop(vocab: Vocab, train_ids: np.ndarray, val_ids: np.ndarray, device: torch.device, steps: int) -> dict:
    cfg = config_from_dict(
        {
            "model": {"embedding_dim": EMBEDDING, "lstm_size": LSTM_SIZE, "num_layers": NUM_LAYERS, "dropout": 0.5},
            "train": {
                "batch_size": BATCH,
                "seq_len": SEQ_LEN,
                "max_steps": steps,
                "eval_interval": steps,
                "device": device.type,
                "precision": "auto",
            },
            "tracking": {"enabled": False},
        }
    )
    with tempfile.TemporaryDirectory(prefix="karnna-gpu-") as tmp:
        paths = TrainPaths(Path(tmp) / "best.pt", Path(tmp) / "last.pt")
        result = train(cfg, vocab, train_ids, val_ids, paths, progress=False, log=lambda _: None)
    return {
        "steps": result.steps,
        "chars_per_sec": result.chars_per_sec,
        "val_loss": result.best_val_loss,
        "seconds": result.seconds,
        "precision": result.precision,
    }


def sampling(vocab: Vocab, device: torch.device) -> dict:
    torch.manual_seed(0)
    model = CharRNN(ModelSpec(vocab.size, EMBEDDING, LSTM_SIZE, NUM_LAYERS, 0.5)).eval()
    prime = vocab.chars[-1]
    greedy_cpu = generate(model, vocab, prime, 200, top_k=1)[0]
    model.to(device)
    greedy_gpu = generate(model, vocab, prime, 200, top_k=1)[0]
    out = {"greedy_same_chars": sum(a == b for a, b in zip(greedy_cpu, greedy_gpu)) / len(greedy_cpu)}
    for n, length in ((1, 500), (128, 200)):
        generate(model, vocab, prime, 20, seed=1, num_samples=n)
        start = time.perf_counter()
        generate(model, vocab, prime, length, seed=1, num_samples=n)
        out[f"batch {n}"] = n * length / (time.perf_counter() - start)
    return out


def print_checks(checks: list[dict]) -> None:
    print()
    print(
        table(
            ["check", "CPU", "GPU", "relative difference", "gradient cosine", "tolerance", "ok"],
            [
                [
                    c["what"],
                    f"{c['cpu']:.5f}",
                    f"{c['gpu']:.5f}",
                    f"{c['rel_diff']:.2e}",
                    "-" if c["grad_cosine"] is None else f"{c['grad_cosine']:.5f}",
                    c["tolerance"],
                    "yes" if c["ok"] else "NO",
                ]
                for c in checks
            ],
        ),
        flush=True,
    )


def time_training(
    train_ids: np.ndarray,
    vocab_size: int,
    device: torch.device,
    batches: str,
    seconds: float,
    peaks: dict[str, float],
) -> list[dict]:
    flops = peak.flops_per_char(EMBEDDING, LSTM_SIZE, NUM_LAYERS, vocab_size)
    rows, speeds = [], []
    for batch in (int(b) for b in batches.split(",")):
        for precision in ("bf16", "fp32"):
            cps = train_rate(train_ids, vocab_size, device, batch, precision, seconds)
            speeds.append(
                {
                    "batch": batch,
                    "precision": precision,
                    "chars_per_sec": cps,
                    "utilisation": cps * flops / peaks[precision],
                }
            )
            rows.append(
                [
                    f"{NUM_LAYERS}x{LSTM_SIZE}, batch {batch} x {SEQ_LEN}",
                    precision,
                    fmt_rate(cps),
                    f"{cps * flops / peaks[precision] * 100:.1f}%",
                    f"{SEED_EPOCHS * len(train_ids) / cps / 60:.1f} min",
                ]
            )
            print(f"throughput: batch {batch} {precision}: {fmt_rate(cps)} chars/s", flush=True)
    print()
    print(
        table(
            [
                "training step",
                "precision",
                "chars/s",
                "utilisation (matmul peak)",
                f"{SEED_EPOCHS} epochs at this rate",
            ],
            rows,
        )
    )
    return speeds


def time_real_loop(
    vocab: Vocab,
    train_ids: np.ndarray,
    val_ids: np.ndarray,
    device: torch.device,
    steps: int,
    speeds: list[dict],
    report: dict[str, Any],
) -> None:
    loop = real_loop(vocab, train_ids, val_ids, device, steps)
    report["real_loop"] = loop
    seed_rate = (
        next(s["chars_per_sec"] for s in speeds if s["batch"] == BATCH and s["precision"] == "bf16")
        if any(s["batch"] == BATCH for s in speeds)
        else loop["chars_per_sec"]
    )
    report["seed_recipe_minutes"] = SEED_EPOCHS * len(train_ids) / seed_rate / 60
    print(
        f"\nsrc.training.loop.train(), {loop['steps']} steps ({loop['precision']}, validation and checkpoints included): "
        f"{fmt_rate(loop['chars_per_sec'])} chars/s, val loss {loop['val_loss']:.4f}. The seed's full recipe "
        f"({SEED_EPOCHS} epochs, batch {BATCH} x {SEQ_LEN}, bf16): about {report['seed_recipe_minutes']:.1f} min; "
        f"goal >= 1M chars/s at batch {BATCH}: {'met' if seed_rate >= 1e6 else 'not met'}"
    )


def time_sampling(vocab: Vocab, device: torch.device, report: dict[str, Any]) -> None:
    samples = sampling(vocab, device)
    report["sampling"] = samples
    print(
        f"sampling on the GPU: batch 1 {fmt_rate(samples['batch 1'])} chars/s, batch 128 "
        f"{fmt_rate(samples['batch 128'])} chars/s; greedy text, CPU vs GPU: "
        f"{samples['greedy_same_chars'] * 100:.0f}% of characters the same"
    )


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None, help="write the figures here as JSON")
    p.add_argument("--batches", default="100,256,512", help="batch sizes to time (default: %(default)s)")
    p.add_argument("--seconds", type=float, default=3.0, help="timing per configuration (default: %(default)s)")
    p.add_argument("--train-steps", type=int, default=300, help="steps of the real loop (default: %(default)s)")
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # cpu: try the script itself, anywhere
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        build = f"a CUDA {torch.version.cuda} build" if torch.version.cuda else "a CPU-only build"
        print(
            f"gpu_check: torch {torch.__version__} ({build}) sees no CUDA GPU here: nothing was checked. "
            "Run it on a machine with an NVIDIA GPU and a CUDA build of torch."
        )
        return 0
    device = torch.device(args.device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "no GPU (script check on the CPU)"
    cudnn = torch.backends.cudnn.version() if device.type == "cuda" else None
    print(f"{machine()}; {gpu}; cuDNN {cudnn}")
    vocab, train_ids, val_ids, text = corpus()
    print(f"text: {text}, {len(train_ids):,} training characters", flush=True)
    report: dict[str, Any] = {"machine": machine(), "gpu": gpu, "cudnn": cudnn, "text": text}

    checks = [check_same_batch(train_ids, vocab.size, device, pr) for pr in ("fp32", "bf16")]
    checks += [check_scorer(val_ids, vocab.size, device, pr) for pr in ("fp32", "bf16")]
    print_checks(checks)
    report["checks"] = checks

    peaks = matmul_peak(device, args.seconds)
    report["matmul_peak"] = peaks
    print(f"\nmatmul peak: fp32 {fmt_rate(peaks['fp32'])}FLOP/s, bf16 {fmt_rate(peaks['bf16'])}FLOP/s", flush=True)

    speeds = time_training(train_ids, vocab.size, device, args.batches, args.seconds, peaks)
    report["throughput"] = speeds

    time_real_loop(vocab, train_ids, val_ids, device, args.train_steps, speeds, report)

    time_sampling(vocab, device, report)
    report["ok"] = all(c["ok"] for c in checks)
    write_json(args.out, report)
    if not report["ok"]:
        print("gpu_check: a correctness check failed (see the table above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
