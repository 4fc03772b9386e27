"""Deterministic fault points for tests: ``SAGSAE_FAULT=<event>:<n>[:<signal>]`` makes the process
send itself ``signal`` (default KILL) right after the n-th ``<event>`` (``commit``: a store commit that
is not the final one; ``create``: a new store's root written, its arrays not yet; ``checkpoint``: a
training checkpoint; ``eval``: one evaluated SAE's row written). Kill-and-resume tests use it instead of
racing a timer against the machine's speed. Unset, it costs one dict lookup per event.
"""

from __future__ import annotations

import os
import signal

_counts: dict[str, int] = {}


def fault_point(event: str) -> None:
    spec = os.environ.get("SAGSAE_FAULT")
    if not spec:
        return
    parts = spec.split(":")
    if parts[0] != event:
        return
    _counts[event] = _counts.get(event, 0) + 1
    if _counts[event] == int(parts[1]):
        sig = getattr(signal, f"SIG{parts[2].upper()}") if len(parts) > 2 else signal.SIGKILL
        # to this thread, so its Python handler runs before raise_signal returns (os.kill targets the
        # process, and a worker thread may take the signal first)
        signal.raise_signal(sig)
