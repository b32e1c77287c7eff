import numpy as np
import pytest
import torch

from src.data import batches
from src.data.splits import split_ids
from src.model.charrnn import CharRNN, ModelSpec
from src.utils.errors import KarnnaError


def test_targets_are_the_next_character_everywhere():
    stream = torch.arange(24)
    grid = batches.batchify(stream, 3)
    pairs = list(batches.windows(grid, 3))
    for x, y in pairs:
        assert torch.equal(y, x + 1)  # also at the last position: no wrap-around to x[:, 0]
    # The windows of a row tile it: every input position once, every target its successor.
    xs = torch.cat([x for x, _ in pairs], dim=1)
    assert torch.equal(xs, grid[:, :-1])
    assert [x.size(1) for x, _ in pairs] == [3, 3, 1]
    assert batches.num_windows(grid.size(1), 3) == len(pairs)


def test_windows_are_views_not_copies():
    grid = batches.batchify(torch.arange(100), 4)
    x, y = next(batches.windows(grid, 5))
    assert x.data_ptr() == grid.data_ptr()
    assert y.untyped_storage().data_ptr() == grid.untyped_storage().data_ptr()


def test_split_is_contiguous_and_independent_of_batch_shape():
    ids = np.arange(1000)
    s = split_ids(ids, 0.1, 0.05)
    assert len(s.train) + len(s.val) + len(s.test) == 1000
    assert np.array_equal(np.concatenate([s.train, s.val, s.test]), ids)
    assert len(s.val) == 100 and len(s.test) == 50
    # No batch_size or seq_len goes in: the split is a function of the text and fractions only.
    assert np.array_equal(split_ids(ids, 0.1, 0.05).val, s.val)


def test_too_short_text_is_a_clear_error():
    with pytest.raises(KarnnaError, match="too short"):
        split_ids(np.arange(5), 0.1, 0.0)
    with pytest.raises(KarnnaError, match="lower train.batch_size"):
        batches.batchify(torch.arange(10), 8)


def test_carried_state_equals_one_long_sequence():
    """Carrying (h, c) across windows gives the same outputs as reading the row in one go."""
    torch.manual_seed(0)
    model = CharRNN(ModelSpec(vocab_size=11, embedding_dim=4, lstm_size=8, num_layers=2, dropout=0.0)).eval()
    grid = batches.batchify(torch.randint(0, 11, (2 * 41,)), 2)
    with torch.no_grad():
        whole, _ = model(grid[:, :-1])
        hidden = model.init_hidden(2)
        parts = []
        for x, _ in batches.windows(grid, 7):
            out, hidden = model(x, hidden)
            parts.append(out)
    assert torch.allclose(torch.cat(parts, dim=1), whole, atol=1e-6)
