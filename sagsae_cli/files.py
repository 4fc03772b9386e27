"""Run-directory files and reading them safely: one home for the names and for the "damaged file"
message, so every stage says the same thing about a broken input."""

from __future__ import annotations

import json
import os
from pathlib import Path

from sagsae_cli.errors import SagsaeError, disk_space

TRAIN_CFG = "train_cfg.json"  # what produced a run (TrainConfig)
SAE_CFG = "cfg.json"  # the SAE, SAELens-style
SAE_WEIGHTS = "sae_weights.safetensors"
HISTORY = "history.parquet"


def read_json(path: Path, fix: str) -> dict:
    """A JSON object from ``path``; a missing, unreadable or garbled file is one line saying ``fix``."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise SagsaeError(f"{path} is unreadable ({type(e).__name__}): {fix}") from None
    if not isinstance(value, dict):
        raise SagsaeError(f"{path} is not a JSON object: {fix}")
    return value


REEVAL = "delete it and rerun `sagsae eval`"  # the fix for a damaged eval, census or checkpoints part


def read_parquet(path: Path, fix: str = "move it away and rerun to write a new one"):
    """A table we wrote earlier (every stage reads Parquet through here): a damaged one is one line saying
    ``fix``."""
    import pandas as pd

    try:
        return pd.read_parquet(path)
    except Exception as e:
        raise SagsaeError(f"{path} is not a readable table ({type(e).__name__}): {fix}") from None


def train_cfg(run_dir: Path) -> dict:
    return read_json(Path(run_dir) / TRAIN_CFG, "retrain the run with `sagsae train ... --force`")


def atomic_write(path: Path, write, flag: str = "--out") -> None:
    """Call ``write(tmp_path)`` then rename over ``path``: readers never see a partial file.
    ``flag`` is the option a user changes to write elsewhere (named if the disk is full)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with disk_space(str(path), flag):
            write(tmp)
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


class _WriteRecorder:
    """A file wrapper that keeps the OSError of a failed write: torch.save swallows it and reports
    only "unexpected pos", which would hide a full disk."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data):
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self):
        self.f.flush()


def torch_save(obj, path: Path) -> None:
    """torch.save(obj, path), raising the OSError itself when a write fails."""
    import torch  # only the trainer saves checkpoints: tables and plots stay free of torch

    with open(path, "wb") as f:
        out = _WriteRecorder(f)
        try:
            torch.save(obj, out)
        except RuntimeError:
            if out.error is not None:
                raise out.error from None
            raise


def lock_dir(path: Path, doing: str) -> int:
    """Take an exclusive flock on ``path/.lock`` (created if needed) and write our pid into it; a
    directory another process holds is one line saying so. Returns the fd for ``unlock``."""
    import fcntl

    fd = os.open(Path(path) / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SagsaeError(
            f"another process is {doing} {path}: wait for it to finish or choose another --out"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def lock_held(path: Path) -> bool:
    """True while another process holds ``path/.lock`` (a harvest or import still writing a store)."""
    import fcntl

    try:
        fd = os.open(Path(path) / ".lock", os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def unlock(fd: int) -> None:
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


# --- a run's snapshots: checkpoints/tokens-<13 digits>/ (cfg.json + weights), in training order ---
SNAPSHOT_PREFIX = "tokens-"


def snapshot_name(tokens: int) -> str:
    return f"{SNAPSHOT_PREFIX}{tokens:013d}"


def _snapshot_folders(checkpoints: Path) -> list[Path]:
    """The folders of ``checkpoints`` named as snapshots are (tokens-<13 digits>); anything else a user
    keeps there (a backup copy, notes) is neither read nor removed."""
    import re

    name = re.compile(rf"{SNAPSHOT_PREFIX}\d{{13}}")
    return [p for p in checkpoints.glob(f"{SNAPSHOT_PREFIX}*") if name.fullmatch(p.name) and p.is_dir()]


def snapshot_dirs(run_dir: Path) -> list[Path]:
    """A run's snapshots (directories holding cfg.json + weights), in training order."""
    d = Path(run_dir) / "checkpoints"
    if not d.is_dir():
        return []
    done = (p for p in _snapshot_folders(d) if (p / SAE_WEIGHTS).exists() and (p / SAE_CFG).exists())
    return sorted(done)  # a snapshot whose write was interrupted (full disk) is left out


def snapshot_tokens(path: Path) -> int:
    return int(Path(path).name[len(SNAPSHOT_PREFIX) :])
