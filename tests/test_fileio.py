import os
import stat

import numpy as np
import pytest

from src.utils import fileio


@pytest.fixture
def umask():
    """Set the process umask for one test, then put the old one back."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_an_atomic_write_has_the_mode_open_would_give(tmp_path, umask, mask, mode):
    """Written through a temporary file, yet readable by whom the umask allows: a team sharing a
    checkout reads each other's models and metrics."""
    umask(mask)
    assert fileio.new_file_mode() == mode
    fileio.write_json(tmp_path / "m.json", {"a": 1})
    fileio.write_npy(tmp_path / "a.npy", np.arange(3))
    with fileio.atomic_path(tmp_path / "deep" / "x.txt") as tmp:
        tmp.write_text("x")
    for name in ("m.json", "a.npy", "deep/x.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


def test_a_write_that_cannot_set_the_mode_leaves_nothing_behind(tmp_path, monkeypatch):
    (tmp_path / "m.json").write_text("old")

    def refuse(path, mode):
        raise PermissionError(1, "Operation not permitted", str(path))

    monkeypatch.setattr(fileio.os, "chmod", refuse)
    with pytest.raises(PermissionError):
        fileio.write_json(tmp_path / "m.json", {"a": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"] and (tmp_path / "m.json").read_text() == "old"
