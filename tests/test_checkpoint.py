import os
import pickle

import pytest
import torch

from src.data.vocab import build_vocab
from src.model import checkpoint
from src.model.charrnn import CharRNN, ModelSpec
from src.utils.errors import KarnnaError
from tests.conftest import assert_no_temp_files


def _model_and_vocab():
    vocab = build_vocab("abcdef \n", "lf")
    torch.manual_seed(0)
    return CharRNN(ModelSpec(vocab.size, 4, 8, 2, 0.1)), vocab


def test_round_trip(tmp_path):
    model, vocab = _model_and_vocab()
    path = tmp_path / "m.pt"
    checkpoint.save(path, model, vocab, step=17, extra={"val_loss": 1.5, "run_id": None})
    loaded, vocab2, payload = checkpoint.load(path)
    assert vocab2 == vocab and payload["step"] == 17 and payload["val_loss"] == 1.5
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    assert not loaded.training
    assert_no_temp_files(tmp_path)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_crafted_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "karnna-checkpoint", "version": 1, "payload": _Exploit()}, path)
    with pytest.raises(KarnnaError, match="refused"):
        checkpoint.load(path)
    assert not (tmp_path / "pwned").exists() and not os.path.exists("pwned")


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    model, vocab = _model_and_vocab()
    path = tmp_path / "m.pt"
    checkpoint.save(path, model, vocab, step=1)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(KarnnaError, match="truncated or corrupt"):
        checkpoint.load(path)


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(KarnnaError, match="not found"):
        checkpoint.load(tmp_path / "nope.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(KarnnaError, match="not a karnna checkpoint"):
        checkpoint.load(tmp_path / "other.pt")


def test_failed_save_leaves_previous_checkpoint_intact(tmp_path):
    model, vocab = _model_and_vocab()
    path = tmp_path / "m.pt"
    checkpoint.save(path, model, vocab, step=1)
    before = path.read_bytes()
    with pytest.raises((pickle.PicklingError, AttributeError)):
        checkpoint.save(path, model, vocab, step=2, extra={"bad": lambda: None})  # not picklable
    assert path.read_bytes() == before
    assert_no_temp_files(tmp_path)


def test_checkpoint_from_another_vocabulary_is_refused(tmp_path):
    model, vocab = _model_and_vocab()
    checkpoint.check_vocab(vocab, build_vocab("abcdef \n", "lf"), tmp_path / "m.pt")
    with pytest.raises(KarnnaError, match=r"another vocabulary.*characters differ: \['g'\]"):
        checkpoint.check_vocab(vocab, build_vocab("abcdefg \n", "lf"), tmp_path / "m.pt")
    with pytest.raises(KarnnaError, match="newline policy"):
        checkpoint.check_vocab(vocab, build_vocab("abcdef \n", "keep"), tmp_path / "m.pt")
