"""Host memory: let freed large buffers be reused instead of faulted in again (glibc on Linux).

An SAE training step on the CPU allocates about a dozen tokens x latents arrays (75 MiB each at batch
4,096 and width 4,608). glibc serves every block above 32 MiB with a fresh ``mmap`` and unmaps it on
``free``, and PyTorch's CPU allocator keeps no cache, so each of those arrays page-faults its whole size
in again: on the 2-core development VM a new array cost three to four times the arithmetic that fills
it, and the whole step ran at about 2.1x its GEMM floor instead of about 1.6x with 2 threads (1.73x and 1.23x with 1)
(``benchmarks/sae_step_bench.py`` prints both, side by side). With ``mmap`` off for large blocks they
come from the heap, where a freed block is reused without faults; the heap keeps up to 1 GiB of free
top instead of returning it at once. The price is memory: the heap fragments, and five SA-GSAE steps
at that size peaked at 1,418 MiB resident against 1,119 MiB with glibc's defaults.

``sagsae`` turns this on at start; ``SAGSAE_MALLOC=system`` leaves glibc's defaults alone.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt parameters (malloc.h)
GLIBC_DEFAULTS = {M_MMAP_MAX: 65536, M_TRIM_THRESHOLD: 128 * 1024}
REUSE_SETTINGS = {M_MMAP_MAX: 0, M_TRIM_THRESHOLD: 1 << 30}


def reuse_large_blocks(enable: bool = True) -> bool:
    """Serve large blocks from the reusable heap (``enable``) or restore glibc's defaults; returns
    whether large blocks are now reused. A no-op (False) off glibc, or with ``SAGSAE_MALLOC=system``."""
    if os.environ.get("SAGSAE_MALLOC", "").lower() == "system" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl has no libc.so.6, or no mallopt)
        return False
    settings = REUSE_SETTINGS if enable else GLIBC_DEFAULTS
    ok = all(mallopt(ctypes.c_int(k), ctypes.c_int(v)) == 1 for k, v in settings.items())
    return ok and enable
