"""How much MLflow logging slows training: the same small training with tracking off, on with
src.tracking's sender thread, and on with MLflow's own asynchronous logging instead.

    python -m benchmarks.tracking_overhead [--repeats 5] [--steps 300] [--lstm-size 128] [--threads 1]

Runs alternate off / thread / mlflow-async (after one warm-up of each), so drift in the
machine's load hits all three.
Reported per mode, as medians: the training loop's wall time; the CPU time of train() over all
threads; the time the loop spends inside the reporter's calls (all it waits for); the CPU time
of the threads that send batches to the store (the extra work itself, which other load on the
machine disturbs far less than the wall times); and, with tracking on, finish_training
(the artifacts; model logging and registration moved to the register stage), which runs once after training. The store is a SQLite file in a temporary folder, as in `dvc repro`.
The text is random characters from a fixed seed: speed does not depend on what is read.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import torch
from mlflow.entities import Metric

from benchmarks.common import machine
from src.config.schema import config_from_dict
from src.data.vocab import build_vocab
from src.tracking import runs
from src.training.device import configure_process
from src.training.loop import train
from src.training.report import Reporter
from src.training.state import TrainPaths


class TimedReporter(Reporter):
    """Passes every call on to `inner` and adds up the seconds spent in them."""

    def __init__(self, inner: Reporter):
        self.inner = inner
        self.run_id = inner.run_id
        self.seconds = 0.0

    def _timed(self, fn, *args) -> None:
        start = time.perf_counter()
        fn(*args)
        self.seconds += time.perf_counter() - start

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._timed(self.inner.log_params, params)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self._timed(self.inner.log_metrics, metrics, step)

    def log_artifact(self, path: Path, artifact_path: Optional[str] = None) -> None:
        self._timed(self.inner.log_artifact, path, artifact_path)

    def on_eval(self, step: int, val_loss: float) -> None:
        self._timed(self.inner.on_eval, step, val_loss)

    def flush(self) -> None:
        self._timed(self.inner.flush)

    def wait(self) -> None:
        self._timed(self.inner.wait)


class MlflowAsyncReporter(runs.MlflowReporter):
    """src.tracking's reporter with MLflow's own asynchronous logging
    (`MlflowClient.log_batch(..., synchronous=False)`) in place of its sender thread for metrics."""

    _sent: list = []

    def flush(self) -> None:
        if self._pending:
            batch, self._pending = self._pending, []
            metrics = [Metric(k, v, t, s) for k, v, t, s in batch]
            operation = self.outbox.client.log_batch(self.run_id, metrics=metrics, synchronous=False)
            self._sent = [*self._sent, operation]

    def wait(self) -> None:
        self.flush()
        sent, self._sent = self._sent, []
        for operation in sent:
            operation.wait()
        super().wait()  # params and artifacts still go through the sender thread


# mode -> the reporter class start_training_run builds (None: tracking off)
MODES = {"off": None, "thread": runs.MlflowReporter, "mlflow-async": MlflowAsyncReporter}


def make_text(n_chars: int) -> str:
    alphabet = np.array(list("abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ.,;:!?'\"-\n"))
    return "".join(np.random.default_rng(0).choice(alphabet, n_chars))


def one_run(cfg, uri: str, vocab, train_ids, val_ids, work: Path, mode: str) -> dict:
    paths = TrainPaths(best=work / "best.pt", last=work / "last.pt")
    start = time.perf_counter()
    original = runs.MlflowReporter
    runs.MlflowReporter = MODES[mode] or original  # the class start_training_run builds
    try:
        return _one_run(cfg, uri, vocab, train_ids, val_ids, paths, start)
    finally:
        runs.MlflowReporter = original


def _one_run(cfg, uri, vocab, train_ids, val_ids, paths, start) -> dict:
    work = paths.best.parent
    with runs.start_training_run(cfg, uri) as reporter:
        timed = TimedReporter(reporter)
        cpu_start, main_start = time.process_time(), time.thread_time()
        result = train(cfg, vocab, train_ids, val_ids, paths, reporter=timed, progress=False, log=lambda _: None)
        if cfg.tracking.enabled:
            reporter.wait()  # so that the sender's last batch is counted
        cpu = time.process_time() - cpu_start
        sender_cpu = max(0.0, cpu - (time.thread_time() - main_start))
        loop_end = time.perf_counter()
        reporter.finish_training(result, best=paths.best, last=paths.last, vocab=work / "vocab.json")
        if cfg.tracking.enabled:
            reporter.wait()  # the sender thread uploads the artifacts
        finish = time.perf_counter() - loop_end
    return {
        "loop": result.seconds,
        "cpu": cpu,
        "sender_cpu": sender_cpu,
        "in_reporter": timed.seconds,
        "finish": finish if cfg.tracking.enabled else 0.0,
        "total": time.perf_counter() - start,
        "chars_per_sec": result.chars_per_sec,
    }


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.tracking_overhead", description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7, help="timed runs per mode (default: %(default)s)")
    p.add_argument("--steps", type=int, default=300, help="optimiser steps per run (default: %(default)s)")
    p.add_argument("--lstm-size", type=int, default=128, help="one LSTM layer of this size (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    args = p.parse_args(argv)
    configure_process(args.threads, torch.device("cpu"))  # what the train stage does; train() does not

    raw = {
        "model": {"embedding_dim": 32, "lstm_size": args.lstm_size, "num_layers": 1, "dropout": 0.0},
        "train": {
            "batch_size": 16,
            "seq_len": 64,
            "max_steps": args.steps,
            "eval_interval": 100,
            "log_interval": 25,
            "device": "cpu",
            "precision": "fp32",
            "num_threads": args.threads,
        },
        "evaluate": {"rows": 4, "chunk_len": 200},
        "tracking": {"log_every": 10, "experiment": "overhead", "model_name": "overhead-bench"},
    }
    text = make_text(120_000)
    vocab = build_vocab(text, "lf")
    ids = vocab.encode(text)
    cut = int(len(ids) * 0.9)
    off = config_from_dict({**raw, "tracking": {**raw["tracking"], "enabled": False}})
    configs = {mode: off if cls is None else config_from_dict(raw) for mode, cls in MODES.items()}
    print(
        f"machine: {machine(args.threads)}; "
        f"model 1x{args.lstm_size}, batch 16 x 64 chars, {args.steps} steps, evaluation every 100, "
        f"train loss logged every 10 steps, {args.repeats} runs per mode"
    )
    samples: dict[str, list[dict]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory(prefix="karnna-bench-") as tmp:
        work = Path(tmp)
        vocab.save(work / "vocab.json")
        uri = f"sqlite:///{work / 'mlflow.db'}"
        for i in range(args.repeats + 1):  # the first round warms up (and creates the store's tables)
            for mode in MODES:
                r = one_run(configs[mode], uri, vocab, ids[:cut], ids[cut:], work, mode)
                if i:
                    samples[mode].append(r)

    def med(mode: str, key: str) -> float:
        return statistics.median(r[key] for r in samples[mode])

    off_loop, off_cpu = med("off", "loop"), med("off", "cpu")
    print()
    print(
        "| tracking | training loop, wall s | vs off | train() CPU s | vs off | the loop waits in reporter calls s "
        "| sender thread CPU s (share of train() CPU) | finish_training s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for mode in MODES:
        loop, cpu, sender = med(mode, "loop"), med(mode, "cpu"), med(mode, "sender_cpu")
        print(
            f"| {mode} | {loop:.3f} | {(loop / off_loop - 1) * 100:+.1f}% | {cpu:.3f} | {(cpu / off_cpu - 1) * 100:+.1f}% "
            f"| {med(mode, 'in_reporter'):.4f} | {sender:.3f} ({sender / cpu * 100:.1f}%) | {med(mode, 'finish'):.2f} |"
        )
    print()
    for mode in MODES:
        print(
            f"each run, {mode:>3}: wall "
            + " ".join(f"{r['loop']:.3f}" for r in samples[mode])
            + "  CPU "
            + " ".join(f"{r['cpu']:.3f}" for r in samples[mode])
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
