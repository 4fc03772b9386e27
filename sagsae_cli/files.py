"""Run-directory files and reading them safely: one home for the names and for the "damaged file"
message, so every stage says the same thing about a broken input."""

from __future__ import annotations

import json
from pathlib import Path

from sagsae_cli.errors import SagsaeError

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


def train_cfg(run_dir: Path) -> dict:
    return read_json(Path(run_dir) / TRAIN_CFG, "retrain the run with `sagsae train ... --force`")
