"""Loss recovered (docs/METHOD.md §6): the LM's next-token loss with a hookpoint replaced.

    LR = (CE_zero - CE_sae) / (CE_zero - CE_clean)

The replacement touches positions >= 1 only (position 0, the BOS / attention sink, is what SAEs are
not trained on, as in SAELens and sparsify), and the loss is taken over the same predictions in all
three passes. resid_mid is replaced by adding (new - old) to what attention adds to the residual:
in a sequential block the MLP's input and the residual stream then both see the replacement; in a
parallel block (Pythia's gpt_neox) the MLP reads resid_pre, so only the residual stream does.
Capture and splice sites come from the same table (``hooks.site``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from sagsae_cli.hooks import decoder_layers, family_of, on_site, site


class Splice:
    """Context manager: replace ``hook`` at ``layer`` by ``fn(activations)`` at positions >= 1."""

    def __init__(self, model: nn.Module, hook: str, layer: int, fn: Callable[[torch.Tensor], torch.Tensor]):
        _, self.fam = family_of(model)
        self.block = decoder_layers(model, self.fam)[layer]
        self.hook, self.fn, self.handles, self.pre = hook, fn, [], None

    def _replace(self, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        out[:, 1:] = self.fn(x[:, 1:].float()).to(x.dtype)
        return out

    def __enter__(self):
        where = site(self.fam, self.hook)
        if where is not None and where.writable:
            self.handles.append(on_site(self.block, where, self._replace))
        else:  # resid_mid = resid_pre + attn_out: add (new - old) to what attention adds

            def keep_pre(x):
                self.pre = x

            def attn(a):
                return self._replace(self.pre + a) - self.pre

            self.handles.append(on_site(self.block, site(self.fam, "resid_pre"), keep_pre))
            self.handles.append(on_site(self.block, site(self.fam, "attn_out"), attn))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles.clear()


@torch.no_grad()
def next_token_loss(model: nn.Module, ids: torch.Tensor) -> float:
    """Mean cross-entropy of predicting tokens 2.. from positions 1.. (position 0's prediction and
    the BOS itself are left out, since position 0 is never spliced)."""
    logits = model(input_ids=ids, use_cache=False).logits[:, 1:-1].float()
    return float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 2:].reshape(-1)))


LOGIT_BYTES = 256 * 2**20


@torch.no_grad()
def loss_recovered(model, ids: torch.Tensor, hook: str, layer: int, reconstruct, batch: int = 8) -> dict:
    """CE clean, zero-ablated and with ``reconstruct`` spliced in, and LR, over windows ``ids``."""
    ce = {"clean": 0.0, "zero": 0.0, "sae": 0.0}
    fns = {"zero": torch.zeros_like, "sae": reconstruct}
    # windows per forward: at most ``batch``, and few enough that the float32 logits stay within
    # LOGIT_BYTES (Gemma-3's 262k-token vocabulary makes 8 windows of 128 tokens 1 GiB of logits)
    vocab = model.get_output_embeddings().weight.shape[0]
    batch = max(1, min(batch, LOGIT_BYTES // (4 * vocab * max(1, ids.shape[1]))))
    for chunk in ids.split(batch):
        share = len(chunk) / len(ids)
        ce["clean"] += next_token_loss(model, chunk) * share
        for name, fn in fns.items():
            with Splice(model, hook, layer, fn):
                ce[name] += next_token_loss(model, chunk) * share
    denom = ce["zero"] - ce["clean"]
    lr = (ce["zero"] - ce["sae"]) / denom if abs(denom) > 1e-12 else float("nan")
    return {"ce_clean": ce["clean"], "ce_zero": ce["zero"], "ce_sae": ce["sae"], "loss_recovered": lr}


def eval_windows(store, tokenizer, max_windows: int) -> torch.Tensor | None:
    """Whole windows of the eval split rebuilt from stored token ids (BOS put back at position 0);
    windows with a filtered token are skipped. None when the store has no token ids."""
    import numpy as np

    n = store.rows("eval")
    seq = store.read_index("eval", "sequence_ids", 0, n)
    tok = store.read_index("eval", "token_ids", 0, n)
    pos = store.read_index("eval", "positions", 0, n)
    skip = 0 if store.meta.get("keep_bos") else 1
    if n == 0 or (tok < 0).all() or (skip and tokenizer.bos_token_id is None):
        return None
    context = int(store.meta.get("context", pos.max() + 1))
    windows = []
    starts = np.flatnonzero(np.r_[True, seq[1:] != seq[:-1]])
    ends = np.r_[starts[1:], n]
    for a, z in zip(starts, ends):
        if z - a != context - skip or not (pos[a:z] == np.arange(skip, context)).all():
            continue
        body = tok[a:z].tolist()
        windows.append(([tokenizer.bos_token_id] if skip else []) + body)
        if len(windows) >= max_windows:
            break
    return torch.tensor(windows) if windows else None


def splice_loss(store, model, tokenizer, max_windows: int, reconstruct) -> dict:
    """Loss recovered with ``reconstruct`` (raw activations in, raw out) spliced in at the store's hook."""
    ids = eval_windows(store, tokenizer, max_windows)
    if ids is None:
        return {}
    with torch.no_grad():
        out = loss_recovered(model, ids, store.meta["hook"], int(store.meta["layer"]), reconstruct)
    return {**out, "lr_windows": int(ids.shape[0])}


def lm_of_store(store, lr_windows: int, override: str | None, cache: dict):
    """(model, tokenizer, windows) of the model that made ``store``, or None (not an LM store, disabled)."""
    if lr_windows <= 0:
        return None
    if store.meta.get("source") != "lm":
        return None
    from sagsae_cli.models import store_model

    return (*store_model(store, cache, override), lr_windows)
