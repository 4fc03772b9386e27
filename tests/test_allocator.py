"""sagsae_cli.allocator: freed large arrays are reused rather than page-faulted in again (glibc)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PROBE = r"""
import json, resource, sys, torch
from sagsae_cli.allocator import reuse_large_blocks
on = reuse_large_blocks(sys.argv[1] == "1")
x = torch.randn(1024, 16384)  # 64 MiB: above glibc's 32 MiB ceiling for heap blocks
def step():  # three arrays the size of x, made and freed, as a training step's are
    a = x + 1
    b = a * 2
    return float((b - x)[0, 0])
for _ in range(10):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):
    step()
print(json.dumps({"on": on, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def probe(enable: bool, **env) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, "1" if enable else "0"],
        capture_output=True, text=True, check=True, env={**os.environ, **env},
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_large_arrays_are_reused_without_page_faults():
    system = probe(False)
    reused = probe(True)
    assert not system["on"] and reused["on"]
    # glibc's default faults every new array in again: 3 arrays x 8 steps (fewer faults with
    # transparent huge pages, but as many arrays); with reuse an array is faulted in only when the heap
    # grows, which after warm-up is rare (0 or 1 array in 8 steps here, depending on the heap's layout)
    assert system["faults"] > 0 and 4 * reused["faults"] <= system["faults"], (reused, system)


def test_system_allocator_kept_on_request():
    assert probe(True, SAGSAE_MALLOC="system")["on"] is False
