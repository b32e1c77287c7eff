"""Stage train: the split -> models/best.pt (lowest validation loss) and models/last.pt,
metrics/train.json for `dvc metrics show`, plots/*.csv for `dvc plots show`."""

import os
import sys
from pathlib import Path

from pipeline.common import (
    BEST,
    LAST,
    METRICS,
    MODELS,
    PARAMS,
    PLOTS,
    SPLIT_DIR,
    VOCAB,
    clear_outputs,
    file_md5,
    load_config,
    main_repo_root,
    run_context,
    run_name,
    stage,
    tracking_uri,
)
from src.data import corpus
from src.data.vocab import PRIME_PARAM, Vocab
from src.tracking import runs, wal
from src.tracking.runs import DatasetInfo
from src.training.device import configure_process, resolve_device, resolve_precision, shared_cores
from src.training.loop import train
from src.training.state import TrainPaths, plan_resume
from src.utils import cores, fileio

# The outputs DVC does not cache: persist in dvc.yaml, so train() clears them before its first step.
OUTPUTS = (METRICS / "train.json", PLOTS / "train_loss.csv", PLOTS / "val_loss.csv")


def write_history(result) -> None:
    fileio.write_text(
        PLOTS / "train_loss.csv",
        "step,train_loss\n" + "".join(f"{s},{v:.5f}\n" for s, v in result.train_history),
    )
    fileio.write_text(
        PLOTS / "val_loss.csv",
        "step,val_loss\n" + "".join(f"{s},{v:.5f}\n" for s, v in result.val_history),
    )


def datasets(cfg, train_ids, val_ids) -> list[DatasetInfo]:
    """The split files as MLflow dataset inputs: DVC's hash, and where the corpus came from."""
    found = corpus.locate(cfg.data.path, main_repo_root())
    source = str(found.resolve()) if found is not None else cfg.data.url
    stem = Path(source.rstrip("/")).stem or "corpus"
    return [
        DatasetInfo(f"{stem}-{name}", file_md5(SPLIT_DIR / f"{name}.npy"), source, role, len(ids))
        for name, role, ids in (("train", "training", train_ids), ("val", "validation", val_ids))
    ]


@stage
def main() -> None:
    cfg = load_config()
    cores.reproducible_fp32(os.environ)  # before torch's first product
    wal.bound_client_retries(os.environ)  # a dead store fails in seconds, not minutes
    device = resolve_device(cfg.train.device)
    configure_process(cfg.train.num_threads, device)
    resolve_precision(cfg.train.precision, device, cfg.model.cell)  # a bf16 torch cannot run: before the run
    vocab = Vocab.load(VOCAB)
    # Memory-mapped: a step copies only its window, so memory does not grow with the corpus.
    train_ids = fileio.map_npy(SPLIT_DIR / "train.npy")
    # Check-only (not a param of this stage, dvc.yaml): a prime the sample stage could not encode
    # stops here, before the training rather than after it.
    vocab.encode_prime(cfg.sample.prime, PRIME_PARAM, text=vocab.decode(train_ids[:10_000]))
    val_ids = fileio.map_npy(SPLIT_DIR / "val.npy")
    uri = tracking_uri()
    context = run_context(SPLIT_DIR / "train.npy", SPLIT_DIR / "val.npy", VOCAB)
    paths = TrainPaths(best=BEST, last=LAST)
    # After a crash, models/last.pt (kept by DVC: persist) holds the state to continue from.
    resume = plan_resume(cfg, train_ids, val_ids, paths)
    # A resumed training continues the MLflow run its checkpoint names.
    resume_run_id = resume.get("run_id") if resume else None
    inputs = datasets(cfg, train_ids, val_ids)
    registry = cores.registry_path(os.environ)
    with (
        shared_cores(cfg.train.num_threads, device, registry) as rebalance,
        runs.start_training_run(
            cfg,
            uri,
            context,
            resume_run_id=resume_run_id,
            run_name=run_name(context),
            datasets=inputs,
            pending=MODELS / wal.FOLDER,
        ) as reporter,
    ):
        if (threads := rebalance()) is not None:
            print(f"train: {threads} of {cores.usable_cores()} cores, shared with the other karnna trainings here")
        result = train(
            cfg,
            vocab,
            train_ids,
            val_ids,
            paths,
            reporter=reporter,
            resume=resume,
            interim_chars=cfg.evaluate.interim_chars,
            on_start=lambda: clear_outputs(*OUTPUTS),
            on_log=rebalance,
        )
        write_history(result)
        fileio.write_json(METRICS / "train.json", result.metrics())
        reporter.finish_training(result, best=BEST, last=LAST, vocab=VOCAB, history=PLOTS, params_file=PARAMS)
    print(
        f"train: best val {result.best_val_loss:.4f} nats at step {result.best_step}, "
        f"{result.steps} steps in {result.seconds:.0f} s ({result.chars_per_sec / 1000:.1f}k char/s)"
    )
    if reporter.run_id:
        print(f"mlflow: run {reporter.run_id} in {uri}")


if __name__ == "__main__":
    sys.exit(main())
