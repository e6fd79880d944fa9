"""The CPU allocator setting, observed through the kernel's page-fault count in a fresh process."""

import json
import platform
import subprocess
import sys

import pytest

PROBE = """
import json, resource, sys, torch
from easynlp_artist.runtime import tune_cpu_allocator
applied = tune_cpu_allocator() if sys.argv[1] == "tuned" else False
faults = []
for _ in range(10):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(1 << 24)  # 64 MiB, then two more of the same size while one is alive
    y = x + 1
    del x
    z = y * 2
    del y, z
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "faults": faults}))
"""


def probe(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's mallopt")
def test_tuned_allocator_reuses_freed_blocks_instead_of_faulting_them_in_again():
    plain, tuned = probe("default"), probe("tuned")
    page = 4096
    # default glibc: each 64 MiB block is mmapped and unmapped, so every round faults its pages in
    assert min(plain["faults"]) >= (1 << 26) // page // 2, plain
    # tuned: after the heap has grown to the working set, rounds fault nothing in. Most rounds, not
    # every one: the kernel may still reclaim a freed block's pages (one round of ten faulted 64 MiB
    # in once, on a busy machine), while the default faults in every round
    assert tuned["applied"] is True
    quiet = [f < 256 for f in tuned["faults"][3:]]
    assert sum(quiet) >= len(quiet) - 2, tuned
