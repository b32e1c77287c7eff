import platform
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO

# Allocate and free a 64 MiB tensor 30 times and count the page faults of the last nine. With the
# setting, torch's 64-byte-aligned blocks first fragment the heap for ~15 rounds (RSS ~860 MB here),
# then are reused; glibc's default unmaps and faults the whole block in again every round.
_FAULTS = textwrap.dedent("""
    import resource, sys, torch
    from src.device import keep_freed_memory
    applied = keep_freed_memory() if sys.argv[1] == "keep" else None
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


def _faults(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", _FAULTS, mode], cwd=REPO, capture_output=True, text=True, check=True)
    applied, faults = out.stdout.split()
    return applied, int(faults)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_keep_freed_memory_stops_refaulting_freed_blocks():
    applied, kept = _faults("keep")
    _, default = _faults("default")
    assert applied == "True"
    # glibc's default unmaps the 64 MiB block at every free: 9 x 16k pages fault in again.
    assert default > 9 * 16_000 * 0.9, default
    assert kept < 2_000, kept
