"""Stage evaluate: models/best.pt on the whole validation split (and the test split when set),
in fp32 with the fixed evaluate.* layout -> metrics/eval.json (nats, bits per char, perplexity)."""

import os
import sys

from pipeline.common import BEST, METRICS, SPLIT_DIR, VOCAB, clear_outputs, load_config, stage, tracking_uri
from src.data import batches
from src.data.vocab import Vocab
from src.model import checkpoint
from src.tracking import runs, wal
from src.training import evaluate
from src.training.device import configure_process, resolve_device, shared_cores
from src.utils import cores, fileio


def evaluate_best(cfg, device, rebalance) -> dict:
    """models/best.pt on the val (and test) split -> {"step", "val": scores, "test": scores}."""
    model, vocab, payload = checkpoint.load(BEST, device)
    checkpoint.check_vocab(vocab, Vocab.load(VOCAB), BEST)
    clear_outputs(METRICS / "eval.json")  # persist in dvc.yaml: removed here, once the inputs are checked
    results = {"step": payload["step"], "run_id": payload.get("run_id")}
    for name in ("val", "test"):
        ids = fileio.map_npy(SPLIT_DIR / f"{name}.npy")  # each chunk is copied to the device as it is read
        if len(ids) < 2:
            continue
        loss = evaluate.stream_loss(
            model,
            batches.Ids(ids, device),
            cfg.evaluate.rows,
            cfg.evaluate.chunk_len,
            progress=name,
            on_chunk=rebalance,
        )
        results[name] = {**evaluate.scores(loss), "chars": int(len(ids))}
        r = results[name]
        print(f"evaluate: {name} {r['loss']:.4f} nats/char, {r['bpc']:.4f} bpc, perplexity {r['perplexity']:.3f}")
    return results


@stage
def main() -> None:
    cfg = load_config()
    cores.reproducible_fp32(os.environ)  # before torch's first product: the score does not depend on the share
    wal.bound_client_retries(os.environ)  # a dead store fails in seconds, not minutes
    device = resolve_device(cfg.train.device)
    configure_process(cfg.train.num_threads, device)
    # Beside a training (a queued grid), evaluation takes its share of the cores, not all of them.
    with shared_cores(cfg.train.num_threads, device, cores.registry_path(os.environ)) as rebalance:
        if (threads := rebalance()) is not None:
            print(f"evaluate: {threads} of {cores.usable_cores()} cores, shared with the other karnna trainings here")
        results = evaluate_best(cfg, device, rebalance)
    run_id = results.pop("run_id")
    fileio.write_json(METRICS / "eval.json", results)
    # eval_ keeps these apart from training's val_loss series, which they would otherwise extend.
    flat = {
        f"eval_{split}_{k}": v
        for split, r in results.items()
        if isinstance(r, dict)
        for k, v in r.items()
        if k != "chars"
    }
    runs.log_to_run(
        run_id,
        tracking_uri(),
        metrics=flat,
        artifacts=[METRICS / "eval.json"],
        step=results["step"],
        pending=BEST.parent / wal.FOLDER,
    )


if __name__ == "__main__":
    sys.exit(main())
