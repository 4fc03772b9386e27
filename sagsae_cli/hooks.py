"""Hookpoints: their names, and where each one lives in a decoder block of every model family.

Hookpoints at layer L (docs/METHOD.md §6), by what is actually added to the residual stream:

| family (model_type)                    | attn_out                   | mlp_out                     | resid_mid |
|----------------------------------------|----------------------------|-----------------------------|-----------|
| llama, mistral, qwen2/3, smollm3, gemma | self_attn output           | mlp output                  | input of post_attention_layernorm |
| gemma2, gemma3_text (sandwich norms)   | post_attention_layernorm output | post_feedforward_layernorm output | input of pre_feedforward_layernorm |
| olmo2 (post-norms only)                | post_attention_layernorm output | post_feedforward_layernorm output | input of mlp |
| phi3 (residual dropouts: identity in eval) | self_attn output        | mlp output                  | input of post_attention_layernorm |
| gpt_neox (Pythia), sequential          | attention output           | mlp output                  | input of post_attention_layernorm |
| gpt_neox parallel residual             | attention output           | mlp output                  | resid_pre + attn_out (our definition) |
| gpt2                                   | attn output                | mlp output                  | input of ln_2 |

resid_pre is the layer's input, resid_post its output.

One table (``site``) says, for each hook kind, which module of the block carries it and whether it is
that module's input or output; ``Capture`` (harvest) reads there and ``splice.Splice`` (loss
recovered) writes there, so adding a hook kind or a family touches this file only. resid_mid is
resid_pre + attn_out by definition: it is *read* at the input of ``Family.mid_input`` where a family
has one (the same value, computed by the model), and always *written* through attn_out, since
replacing a norm's input would not change the residual stream that bypasses it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from sagsae_cli.errors import SagsaeError

HOOKS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
TL_NAMES = {
    "hook_resid_pre": "resid_pre",
    "hook_resid_mid": "resid_mid",
    "hook_resid_post": "resid_post",
    "hook_attn_out": "attn_out",
    "hook_mlp_out": "mlp_out",
}


@dataclass(frozen=True)
class Family:
    layers: str  # attribute path of the decoder layer list
    attn: str  # module whose output is what attention adds to the residual
    mlp: str  # module whose output is what the MLP adds to the residual
    mid_input: str | None  # module whose input is resid_mid (None: resid_pre + attn_out)


LLAMA = Family("model.layers", "self_attn", "mlp", "post_attention_layernorm")
FAMILIES = {
    **{t: LLAMA for t in ("llama", "mistral", "qwen2", "qwen3", "smollm3", "gemma", "phi3")},
    # OLMo2 normalises after attention and after the MLP (no pre-norms): what is added to the
    # residual is the post-norms' output, and the MLP's input is resid_mid itself
    "olmo2": Family("model.layers", "post_attention_layernorm", "post_feedforward_layernorm", "mlp"),
    "gemma2": Family(
        "model.layers", "post_attention_layernorm", "post_feedforward_layernorm", "pre_feedforward_layernorm"
    ),
    "gemma3_text": Family(
        "model.layers", "post_attention_layernorm", "post_feedforward_layernorm", "pre_feedforward_layernorm"
    ),
    "gpt_neox": Family("gpt_neox.layers", "attention", "mlp", "post_attention_layernorm"),
    "gpt2": Family("transformer.h", "attn", "mlp", "ln_2"),
}


@dataclass(frozen=True)
class Site:
    module: str  # attribute of the decoder block ("" = the block itself)
    side: str  # "input" or "output" of that module
    writable: bool = True  # False: replacing it here would not replace the hookpoint (resid_mid)


def site(fam: Family, hook: str) -> Site | None:
    """Where ``hook`` is read; None when it is computed as resid_pre + attn_out."""
    return {
        "resid_pre": Site("", "input"),
        "resid_post": Site("", "output"),
        "attn_out": Site(fam.attn, "output"),
        "mlp_out": Site(fam.mlp, "output"),
        "resid_mid": Site(fam.mid_input, "input", writable=False) if fam.mid_input else None,
    }[hook]


def _first(output):
    return output[0] if isinstance(output, tuple) else output


def _with_first(output, new):
    return (new, *output[1:]) if isinstance(output, tuple) else new


def on_site(block: nn.Module, where: Site, fn: Callable[[torch.Tensor], torch.Tensor | None]):
    """Hook ``fn`` on the tensor at ``where`` in ``block``; a tensor ``fn`` returns replaces it (None
    leaves it). Returns the handle."""
    mod = getattr(block, where.module) if where.module else block
    if where.side == "input":

        def pre(module, args, kwargs):
            new = fn(args[0] if args else kwargs["hidden_states"])
            if new is None:
                return None
            return ((new, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": new})

        return mod.register_forward_pre_hook(pre, with_kwargs=True)

    def post(module, args, output):
        new = fn(_first(output))
        return None if new is None else _with_first(output, new)

    return mod.register_forward_hook(post)


def parse_hook(hook: str, layer: int | None) -> tuple[str, int | None]:
    """'resid_mid' or a TransformerLens name 'blocks.8.hook_resid_mid' -> (hook, layer)."""
    if hook.startswith("blocks."):
        parts = hook.split(".")
        if len(parts) == 3 and parts[1].isdigit() and parts[2] in TL_NAMES:
            return TL_NAMES[parts[2]], int(parts[1])
        raise SagsaeError(
            f"unknown hook {hook!r}: use blocks.<layer>.hook_<name> or one of {', '.join(HOOKS)}"
        )
    if hook not in HOOKS:
        raise SagsaeError(
            f"unknown hook {hook!r}: choose one of {', '.join(HOOKS)} (or blocks.L.hook_resid_mid)"
        )
    return hook, layer


def family_of(model: nn.Module) -> tuple[str, Family]:
    mtype = model.config.model_type
    if mtype not in FAMILIES:
        raise SagsaeError(
            f"architecture {mtype!r} is not supported for harvesting: supported are {', '.join(sorted(FAMILIES))}"
        )
    fam = FAMILIES[mtype]
    if mtype == "gpt_neox" and getattr(model.config, "use_parallel_residual", True):
        fam = Family(fam.layers, fam.attn, fam.mlp, None)
    return mtype, fam


def decoder_layers(model: nn.Module, fam: Family) -> nn.ModuleList:
    obj = model
    for part in fam.layers.split("."):
        obj = getattr(obj, part)
    return obj


def hook_definition(model: nn.Module, hook: str, layer: int) -> str:
    """What ``hook`` is in this model, in words (stored in a store's metadata)."""
    _, fam = family_of(model)
    where = site(fam, hook)
    if where is None:
        return (
            f"resid_pre + attn_out at layer {layer} (parallel residual: defined by sagsae, docs/METHOD.md §6)"
        )
    path = f"{fam.layers}.{layer}" + (f".{where.module}" if where.module else "")
    return f"{where.side} of {path}"


class StopForward(Exception):
    """Raised after the hooked layer: nothing downstream is computed."""


class Capture:
    """Registers hooks that capture hookpoints of one layer, and optionally stop the forward there.

    Use as a context manager; after ``model(ids)`` (which raises StopForward when ``stop``),
    ``capture.get(hook)`` is a (batch, seq, d) tensor.
    """

    def __init__(self, model: nn.Module, hooks: list[str], layer: int, stop: bool = True):
        _, self.fam = family_of(model)
        layers = decoder_layers(model, self.fam)
        if not 0 <= layer < len(layers):
            raise SagsaeError(f"--layer {layer} is out of range: this model has layers 0..{len(layers) - 1}")
        self.block, self.hooks, self.stop = layers[layer], hooks, stop
        self.acts: dict[str, torch.Tensor] = {}
        self._handles = []

    def __enter__(self):
        need = set(self.hooks)
        if "resid_mid" in need and site(self.fam, "resid_mid") is None:  # computed in get()
            need = (need - {"resid_mid"}) | {"resid_pre", "attn_out"}
        for hook in sorted(need):
            self._handles.append(
                on_site(self.block, site(self.fam, hook), lambda x, h=hook: self._keep(h, x))
            )

        def stop(module, args, output):  # registered last: runs after a resid_post capture
            if self.stop:
                raise StopForward

        self._handles.append(self.block.register_forward_hook(stop))
        return self

    def _keep(self, hook: str, x: torch.Tensor) -> None:
        self.acts[hook] = x

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        return exc[0] is StopForward  # swallow the early stop

    def get(self, hook: str) -> torch.Tensor:
        if hook == "resid_mid" and site(self.fam, "resid_mid") is None:
            return self.acts["resid_pre"] + self.acts["attn_out"]
        return self.acts[hook]


def run_to_layer(
    model: nn.Module, input_ids: torch.Tensor, hooks: list[str], layer: int
) -> dict[str, torch.Tensor]:
    """Forward until layer ``layer`` has run; returns the requested hookpoints (batch, seq, d)."""
    with Capture(model, hooks, layer) as cap:
        model(input_ids=input_ids, use_cache=False)
    return {h: cap.get(h) for h in hooks}
