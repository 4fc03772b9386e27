"""User-facing errors: the CLI prints them as one line and exits with code 2."""

import errno
import os
from contextlib import contextmanager

DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # no space, quota, file-size limit


class SagsaeError(Exception):
    """Bad input or a state the user must fix. The message says what is wrong and what to do."""


def require(ok: bool, message: str) -> None:
    """Refuse bad input: ``SagsaeError(message)`` unless ``ok``. The stages check their own bounds
    with it, so the command line and the Python API refuse alike."""
    if not ok:
        raise SagsaeError(message)


class PeerError(SagsaeError):
    """Raised on the other ranks of a torchrun job when rank 0 hit a SagsaeError: rank 0 prints the
    message, the others exit with code 2 quietly instead of failing inside a collective."""


def _disk_full_reason(e: BaseException) -> str | None:
    """The OS's words if ``e`` is a full disk (also when a library wraps the OSError, as safetensors
    does), else None."""
    if isinstance(e, OSError) and e.errno in DISK_FULL:
        return e.strerror or os.strerror(e.errno)
    return next((os.strerror(n) for n in DISK_FULL if os.strerror(n) in str(e)), None)


@contextmanager
def disk_space(what: str | None = None, flag: str = "--out"):
    """A full disk (or quota, or file-size limit) while writing ``what`` (default: the file the
    error names) becomes a SagsaeError that suggests ``flag``."""
    try:
        yield
    except SagsaeError:
        raise  # already says what to do (and may quote the OS's words itself)
    except Exception as e:
        reason = _disk_full_reason(e)
        if reason is None:
            raise
        target = what or getattr(e, "filename", None) or "the output"
        raise SagsaeError(
            f"no space left to write {target} ({reason}): free some space or choose another {flag}, "
            "then rerun the same command (what was committed before is kept)"
        ) from None
