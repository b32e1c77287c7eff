"""Trainings on one machine share its cores (train.num_threads: auto, src/utils/cores.py), and
the losses do not depend on how many threads a training gets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from src.config.schema import config_from_dict
from src.utils import cores
from src.utils.errors import KarnnaError
from tests.conftest import REPO, _env, tiny_params, write_params


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])


@pytest.fixture
def sleepers():
    procs: list[subprocess.Popen] = []
    yield lambda: procs.append(_sleeper()) or procs[-1]
    for proc in procs:
        proc.kill()
        proc.wait()


def test_the_cores_are_split_and_the_remainder_goes_to_the_earliest():
    assert [cores.share(2, rank, 1) for rank in range(1)] == [2]
    assert [cores.share(2, rank, 2) for rank in range(2)] == [1, 1]
    assert [cores.share(2, rank, 3) for rank in range(3)] == [1, 1, 1]  # at least one each
    assert [cores.share(8, rank, 3) for rank in range(3)] == [3, 3, 2]


def test_a_second_training_takes_half_and_the_first_gives_it_back(tmp_path, sleepers):
    path = tmp_path / "cores.json"
    other = sleepers()
    with cores.CoreShare(path, cores=2) as me:
        assert me.threads() == 2
        with cores.CoreShare(path, cores=2, pid=other.pid) as second:
            assert me.threads() == second.threads() == 1
            assert [m["pid"] for m in me.members()] == [os.getpid(), other.pid]
        assert me.threads() == 2
    assert json.loads(path.read_text()) == []


def test_a_killed_training_is_dropped_and_a_reused_pid_is_not_counted(tmp_path, sleepers):
    path = tmp_path / "cores.json"
    victim = sleepers()
    cores.CoreShare(path, cores=2, pid=victim.pid).join()  # never leaves: killed below
    with cores.CoreShare(path, cores=2) as me:
        assert me.threads() == 1
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        assert me.threads() == 2
        assert [m["pid"] for m in me.members()] == [os.getpid()]
        # an entry whose process id now belongs to a process started later (here: this one's)
        entries = json.loads(path.read_text()) + [{"pid": os.getpid(), "start": "1"}]
        path.write_text(json.dumps(entries))
        assert me.threads() == 2


def test_a_broken_registry_file_starts_the_count_again(tmp_path):
    path = tmp_path / "cores.json"
    path.write_text("{not json")
    with cores.CoreShare(path, cores=2) as me:
        assert me.threads() == 2
        assert json.loads(path.read_text()) == [me.me]


JOIN_AND_WAIT = """
import sys, time
from pathlib import Path
from src.utils.cores import CoreShare
share = CoreShare(Path(sys.argv[1]), cores=4)
share.join()
Path(sys.argv[2]).touch()
deadline = time.monotonic() + 120  # a test that failed does not leave it waiting forever
for name in sys.argv[3:]:
    while not Path(name).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    print(share.threads(), flush=True)
share.leave()
"""


def test_processes_that_start_at_once_all_count_each_other(tmp_path):
    """Without the lock, processes that read the file at the same moment each write back their
    own list, and some are lost."""
    path, go, leave = tmp_path / "cores.json", tmp_path / "go", tmp_path / "leave"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", JOIN_AND_WAIT, str(path), str(tmp_path / f"ready{i}"), str(go), str(leave)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(8)
    ]
    try:
        deadline = time.monotonic() + 60
        while not all((tmp_path / f"ready{i}").exists() for i in range(8)):
            assert time.monotonic() < deadline, "the processes did not register"
            time.sleep(0.05)
        assert len(json.loads(path.read_text())) == 8
        go.touch()
        assert [int(p.stdout.readline()) for p in procs] == [1] * 8  # 4 cores, 8 trainings
        leave.touch()
        for p in procs:
            p.communicate(timeout=60)
    finally:
        for p in procs:
            p.kill()
    assert json.loads(path.read_text()) == []


def test_the_registry_file_is_per_user_unless_named():
    assert cores.registry_path({cores.ENV: "/x/cores.json"}) == Path("/x/cores.json")
    assert cores.registry_path({}).name == "cores.json"
    assert f"karnna-{os.getuid()}" in str(cores.registry_path({}))


@pytest.mark.parametrize("value", ["auto", 0, 3])
def test_num_threads_takes_auto_zero_or_a_count(value):
    assert config_from_dict(tiny_params(train={"num_threads": value})).train.num_threads == value


@pytest.mark.parametrize("value", ["two", -1, 1.5])
def test_a_bad_num_threads_is_one_line(value):
    with pytest.raises(KarnnaError, match=r"params.yaml: train.num_threads: .*auto.*0") as err:
        config_from_dict(tiny_params(train={"num_threads": value}))
    assert "\n" not in str(err.value)


TOGGLED = """
import os, sys, tempfile
from pathlib import Path
from src.utils import cores
if sys.argv[1] == "strict":
    cores.reproducible_fp32(os.environ)  # as the training entry points do, before any product
import torch
from src.config.schema import config_from_dict
from src.data.vocab import build_vocab
from src.training.loop import train
from src.training.state import TrainPaths
from tests.conftest import TINY_TEXT, tiny_params

# wide enough that MKL's fp32 products split their work by thread (a tiny model's do not)
cfg = config_from_dict(tiny_params(
    model={"embedding_dim": 64, "lstm_size": 256, "num_layers": 2},
    train={"batch_size": 32, "seq_len": 50, "max_steps": 4, "eval_interval": 2, "log_interval": 1,
           "precision": sys.argv[2]},
))
text = TINY_TEXT * 4
vocab = build_vocab(text, "lf")
ids = vocab.encode(text)
cut = len(ids) * 4 // 5

def run(on_log):
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        paths = TrainPaths(Path(tmp) / "best.pt", Path(tmp) / "last.pt")
        r = train(cfg, vocab, ids[:cut], ids[cut:], paths, progress=False, log=lambda _: None, on_log=on_log)
    return r.train_history, r.val_history

# one thread throughout, against a share that changes at every log point (1, 2, 1, ...)
print(run(lambda: None) == run(lambda: torch.set_num_threads(3 - torch.get_num_threads())))
"""


def _precisions() -> list[str]:
    from src.training.device import cpu_bf16_fails, cpu_has_fast_bf16

    return ["fp32"] + (["bf16"] if cpu_has_fast_bf16() and cpu_bf16_fails("lstm") is None else [])


def _toggled(mode: str, precision: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("MKL_CBWR", None)
    args = [sys.executable, "-c", TOGGLED, mode, precision]
    out = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.parametrize("precision", _precisions())
def test_the_losses_do_not_depend_on_the_threads_a_training_gets(precision):
    """A training's share changes while it runs (a second one starts, or ends): its numbers must
    not. fp32 needs MKL's strict mode (cores.reproducible_fp32), which the entry points set."""
    assert _toggled("strict", precision) == "True"


def test_without_the_strict_mode_fp32_would_depend_on_the_threads():
    """The control: the run above is wide enough to see a thread count in MKL's fp32 bits."""
    if _toggled("plain", "fp32") == "True":
        pytest.skip("this CPU's MKL gives these fp32 products the same bits on 1 and 2 threads anyway")


def _stage(repo: Path, name: str, registry: Path) -> subprocess.CompletedProcess:
    env = {**_env(), cores.ENV: str(registry)}
    proc = subprocess.run(
        [sys.executable, "-m", f"pipeline.{name}"], cwd=repo, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"pipeline.{name}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_the_evaluate_stage_takes_its_share_beside_a_training(stage_repo, tmp_path, sleepers):
    """In a queued grid one experiment's evaluation runs beside another's training: it takes its
    share of the cores, not all of them, and its score does not depend on the share."""
    registry = tmp_path / "cores.json"
    for name in ("corpus", "encode", "split", "train"):
        _stage(stage_repo, name, registry)
    alone = _stage(stage_repo, "evaluate", registry)
    score = (stage_repo / "metrics" / "eval.json").read_text()
    params = yaml.safe_load((stage_repo / "params.yaml").read_text())
    params["train"]["num_threads"] = "auto"
    write_params(stage_repo, params)
    usable = cores.usable_cores()
    cores.CoreShare(registry, pid=sleepers().pid).join()  # a training already running here
    beside = _stage(stage_repo, "evaluate", registry)
    share = cores.share(usable, 1, 2)
    assert f"evaluate: {share} of {usable} cores, shared" in beside.stdout, beside.stdout
    assert "cores, shared" not in alone.stdout  # num_threads 1: a fixed count takes no share
    assert (stage_repo / "metrics" / "eval.json").read_text() == score
