import os
import platform
import subprocess
import sys
import textwrap

import pytest
import torch

from src.training import device
from src.training.device import cpu_bf16_fails, cpu_has_fast_bf16, resolve_precision
from src.utils.errors import KarnnaError
from tests.conftest import REPO

# Allocate and free a 64 MiB tensor 30 times and count the page faults of the last nine. With the
# setting, torch's 64-byte-aligned blocks first fragment the heap for ~15 rounds (RSS ~860 MB here),
# then are reused; glibc's default unmaps and faults the whole block in again every round.
# argv[1]: the code that sets `applied` (what the process does to malloc before the rounds).
_FAULTS = textwrap.dedent("""
    import resource, sys, torch
    applied = None
    exec(sys.argv[1])
    def once():
        t = torch.ones(16 << 20)
        del t
    for _ in range(21):
        once()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(9):
        once()
    print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")
SET_UP = "import torch; from src.training.device import configure_process; applied = configure_process(1, torch.device({!r}))"
GLIBC = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")


def faults(setup: str) -> tuple[str, int]:
    """(`applied` as printed, page faults of nine 64 MiB allocations) in a fresh process after `setup`."""
    out = subprocess.run([sys.executable, "-c", _FAULTS, setup], cwd=REPO, capture_output=True, text=True, check=True)
    applied, n = out.stdout.split()
    return applied, int(n)


@GLIBC
def test_the_stages_process_set_up_stops_refaulting_freed_blocks_on_cpu():
    applied, kept = faults(SET_UP.format("cpu"))
    not_applied, default = faults(SET_UP.format("cuda"))  # the GPU's memory is not malloc's
    assert (applied, not_applied) == ("True", "False")
    # glibc's default unmaps the 64 MiB block at every free: 9 x 16k pages fault in again.
    assert default > 9 * 16_000 * 0.9, default
    assert kept < 2_000, kept


X86 = pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="oneDNN's instruction-set cap is x86's")


@X86
def test_the_bf16_probe_finds_what_onednn_cannot_run_on_an_avx2_cpu():
    # ONEDNN_MAX_CPU_ISA=AVX2 makes oneDNN run as on an AVX2 CPU (a laptop): no bf16 LSTM there
    code = "from src.training.device import cpu_bf16_fails as f; print(f('lstm') is not None, f('gru') is not None)"
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False"], out.stderr


def test_auto_precision_is_bf16_where_the_cpu_has_bf16_instructions_and_torch_runs_it():
    if not cpu_has_fast_bf16():
        pytest.skip("this CPU has no bf16 dot-product instructions")
    assert cpu_bf16_fails("lstm") is None
    assert resolve_precision("auto", torch.device("cpu")) == torch.bfloat16


def test_a_bf16_precision_torch_cannot_run_is_an_error_and_auto_is_fp32(monkeypatch):
    monkeypatch.setattr(device, "cpu_bf16_fails", lambda cell="lstm": "could not create a primitive descriptor")
    monkeypatch.setattr(device, "cpu_has_fast_bf16", lambda cpuinfo=None: True)
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) is None and resolve_precision("fp32", cpu) is None
    with pytest.raises(KarnnaError, match=r"train\.precision is bf16, but torch cannot run a bf16 GRU.*fp32"):
        resolve_precision("bf16", cpu, "gru")


def test_the_bf16_probe_leaves_torchs_random_stream_alone():
    cpu_bf16_fails.cache_clear()
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    cpu_bf16_fails("rnn")
    assert torch.equal(torch.rand(3), expected)
