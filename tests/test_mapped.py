"""Memory-mapped splits (src/data/batches.py Ids and Grid, fileio.map_npy): the same windows, the
same losses and the same scores as the splits loaded whole as int64 tensors; the split stage's
block copies are np.save's files."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from src.config.schema import config_from_dict
from src.data import batches
from src.data.splits import split_ids, split_sizes
from src.model.charrnn import CharRNN, ModelSpec
from src.training import evaluate, loop
from src.training.loop import train
from src.training.state import TrainPaths, fingerprint
from src.utils import fileio
from tests.conftest import tiny_params


def mapped(tmp_path, name: str, ids: np.ndarray) -> np.ndarray:
    fileio.write_npy(tmp_path / f"{name}.npy", ids)
    return fileio.map_npy(tmp_path / f"{name}.npy")


def in_memory(ids, device) -> torch.Tensor:
    """What train() and the evaluate stage built before the splits were mapped."""
    return torch.from_numpy(np.asarray(ids).astype(np.int64)).to(device)


def test_a_mapped_grid_gives_the_windows_of_the_whole_tensor(tmp_path, tiny_data):
    _, tr, _ = tiny_data
    ids = mapped(tmp_path, "train", tr)
    assert isinstance(ids, np.memmap)
    old = list(batches.windows(batches.batchify(in_memory(tr, "cpu"), 4), 16))
    new = list(batches.windows(batches.batchify(batches.Ids(ids), 4), 16))
    assert len(old) == len(new)
    for (x0, y0), (x1, y1) in zip(old, new):
        assert x1.dtype == y1.dtype == torch.int64
        assert torch.equal(x0, x1) and torch.equal(y0, y1)


def test_training_on_mapped_splits_gives_the_in_memory_losses(tmp_path, tiny_data, monkeypatch):
    vocab, tr, va = tiny_data
    cfg = config_from_dict(tiny_params())

    def run(name, train_ids, val_ids):
        paths = TrainPaths(tmp_path / f"{name}-best.pt", tmp_path / f"{name}-last.pt")
        return train(cfg, vocab, train_ids, val_ids, paths, progress=False, log=lambda _: None)

    mapped_run = run("mapped", mapped(tmp_path, "train", tr), mapped(tmp_path, "val", va))
    # The path before mapping: each split converted whole to an int64 tensor on the device.
    monkeypatch.setattr(loop.batches, "Ids", in_memory)
    whole_run = run("whole", tr, va)
    assert mapped_run.train_history == whole_run.train_history
    assert mapped_run.val_history == whole_run.val_history
    assert mapped_run.best_val_loss == whole_run.best_val_loss


def test_a_mapped_split_scores_what_the_tensor_scores(tmp_path, tiny_data):
    vocab, _, va = tiny_data
    model = CharRNN(ModelSpec(vocab.size, 4, 8, 2, 0.0))
    ids = mapped(tmp_path, "val", va)
    for rows, chunk_len in ((4, 7), (16, 500)):
        assert evaluate.stream_loss(model, batches.Ids(ids), rows, chunk_len) == evaluate.stream_loss(
            model, in_memory(va, "cpu"), rows, chunk_len
        )


def test_the_resume_fingerprint_of_a_mapped_split_is_the_arrays(tmp_path, tiny_data):
    _, tr, va = tiny_data
    cfg = config_from_dict(tiny_params())
    assert fingerprint(cfg, mapped(tmp_path, "t", tr), mapped(tmp_path, "v", va)) == fingerprint(cfg, tr, va)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32])
def test_block_copies_are_np_saves_files(tmp_path, dtype, monkeypatch):
    monkeypatch.setattr(fileio, "_BLOCK", 7)  # blocks that end inside an id
    ids = np.arange(1000, dtype=np.int64).astype(dtype)
    source = tmp_path / "encoded.npy"
    fileio.write_npy(source, ids)
    parts = split_ids(ids, 0.1, 0.0)
    start = 0
    for name, size in zip(("train", "val", "test"), split_sizes(len(ids), 0.1, 0.0)):
        fileio.write_npy_range(tmp_path / f"{name}.npy", source, start, start + size)
        start += size
        buf = io.BytesIO()
        np.save(buf, getattr(parts, name), allow_pickle=False)
        assert (tmp_path / f"{name}.npy").read_bytes() == buf.getvalue(), name
