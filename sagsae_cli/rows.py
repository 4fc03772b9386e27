"""Activation rows between disk and torch: the dtypes a store may hold (bfloat16 is kept on disk as its
uint16 bit pattern, Zarr having no bfloat16), their short names, and the two conversions, with the
checks every row passes on its way in (no NaN or inf, no float16 overflow)."""

from __future__ import annotations

import math

import numpy as np
import torch

from sagsae_cli.errors import SagsaeError, require

DTYPES = {
    "float32": ("float32", torch.float32),
    "float16": ("float16", torch.float16),
    "bfloat16": ("uint16", torch.bfloat16),
}
# the short names train's --dtype uses, accepted wherever a store or model dtype is asked for
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def check_norm_ratio(ratio: float) -> None:
    """harvest's and import's norm filter (``max_norm_ratio`` x the median norm): 0 keeps every row;
    below 1 it would drop the median row and most others."""
    require(
        math.isfinite(ratio) and (ratio == 0 or ratio >= 1),
        f"--max-norm-ratio must be 0 (keep every row) or at least 1 (got {ratio:g}): below 1 it drops most "
        "rows, the median row among them",
    )


FLOAT16_MAX = 65504.0


def to_torch(raw: np.ndarray, dtype: str, widen: bool = True) -> torch.Tensor:
    """Rows as read from disk -> a float32 tensor, or (``widen`` False) a tensor in the store's dtype
    (bfloat16, float16, float32), for a device to widen after the copy."""
    if dtype == "bfloat16":
        t = torch.from_numpy(raw.view(np.int16)).view(torch.bfloat16)
    else:
        t = torch.from_numpy(np.ascontiguousarray(raw))
    return t.float() if widen else t


def to_disk(x: torch.Tensor | np.ndarray, dtype: str) -> np.ndarray:
    """Float rows -> the array stored on disk, refusing NaN, inf and float16 overflow."""
    t = torch.as_tensor(x).detach().to("cpu")
    if not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).any(dim=-1).nonzero()[0, 0])
        raise SagsaeError(
            f"activations contain NaN or inf (first at row {bad} of the batch): "
            "check the model's dtype (try --model-dtype float32) and the input data"
        )
    if dtype == "float16" and t.numel() and float(t.abs().max()) > FLOAT16_MAX:
        raise SagsaeError(
            f"activation magnitude {float(t.abs().max()):.3g} exceeds float16's range (65504): "
            "use --dtype bfloat16 or --dtype float32"
        )
    t = t.to(DTYPES[dtype][1]).contiguous()
    if dtype == "bfloat16":
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()
