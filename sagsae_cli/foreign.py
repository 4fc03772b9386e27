"""SAEs made elsewhere, read from the files their libraries write, acting on raw activations.

- **SAELens** (``cfg.json`` + ``sae_weights.safetensors``; ``SAE.save_model``): standard, gated, jumprelu,
  topk and batchtopk, honouring ``apply_b_dec_to_input``, ``normalize_activations`` (none,
  constant_norm_rescale, layer_norm) and the stored dtype (computed in float32).
- **sparsify** (EleutherAI; ``cfg.json`` + ``sae.safetensors`` per hookpoint, ``SparseCoder.save_to_disk``):
  ``encoder.weight`` (M, d), ``encoder.bias``, ``W_dec`` (M, d), ``b_dec``, optional ``W_skip``; TopK or
  GroupMax of ReLU((x - b_dec) W^T + b).
- **dictionary_learning** (``ae.pt`` state dict + ``config.json`` with ``trainer.dict_class``): AutoEncoder,
  GatedAutoEncoder, JumpReluAutoEncoder, AutoEncoderTopK (and BatchTopKSAE, whose saved threshold
  makes it a JumpReLU at inference); its trainer folds any activation scaling into the saved biases.

Each becomes a ``ForeignSAE``: ``encode`` / ``decode`` on raw activations with the library's own
formulas (tests compare them with the libraries' forward passes), ``W_dec`` (latents x d) for the
opposed-pairs census, and the model and hook it records (for the store check). sagsae's own run
directories are read by ``sae.load_sae``; ``detect`` tells them apart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sagsae_cli.errors import SagsaeError
from sagsae_cli.files import SAE_CFG, SAE_WEIGHTS, TRAIN_CFG

SOURCES = ("sagsae", "saelens", "sparsify", "dictionary_learning")


def detect(path: str | Path) -> str:
    """Which library wrote the SAE directory ``path`` (one of SOURCES), or a one-line refusal."""
    p = Path(path)
    if not p.exists():
        raise SagsaeError(f"{p} does not exist: no run directories matched; check the path")
    if (p / TRAIN_CFG).exists():
        return "sagsae"
    if (p / SAE_CFG).exists() and (p / SAE_WEIGHTS).exists():
        return "saelens"
    if (p / SAE_CFG).exists() and (p / "sae.safetensors").exists():
        return "sparsify"
    if (p / "ae.pt").exists() and (p / "config.json").exists():
        return "dictionary_learning"
    inner = sorted(q.parent.name for q in p.glob("*/sae.safetensors")) if p.is_dir() else []
    hint = (
        f": a sparsify checkpoint holds one folder per hookpoint; give one of {', '.join(inner[:4])}"
        if inner
        else ": give a sagsae run directory, a SAELens directory (cfg.json + sae_weights.safetensors), a sparsify "
        "hookpoint folder (cfg.json + sae.safetensors) or a dictionary_learning trainer folder (ae.pt + config.json)"
    )
    raise SagsaeError(f"{p} is not an SAE directory sagsae can read{hint}")


@dataclass
class ForeignSAE:
    """An SAE made elsewhere: its tensors (float32), how it encodes, and what it records."""

    source: str
    architecture: str  # standard, gated, jumprelu, topk, groupmax
    path: Path
    t: dict[str, torch.Tensor]  # W_enc (d, M), b_enc (M), W_dec (M, d), b_dec (d), and per architecture
    k: int = 0
    apply_b_dec_to_input: bool = True
    normalize: str = "none"  # SAELens's normalize_activations
    rescale_by_decoder_norm: bool = False  # SAELens TopK's rescale_acts_by_decoder_norm
    dtype: str = "float32"  # as stored
    model_name: str = ""
    hook_name: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def d_in(self) -> int:
        return int(self.t["W_dec"].shape[1])

    @property
    def d_sae(self) -> int:
        return int(self.t["W_dec"].shape[0])

    @property
    def W_dec(self) -> torch.Tensor:
        return self.t["W_dec"]

    @property
    def name(self) -> str:
        return f"{self.source}:{self.architecture}"

    def to(self, device) -> ForeignSAE:
        self.t = {k: v.to(device) for k, v in self.t.items()}
        return self

    # --- the forward pass on raw activations ----------------------------------------------------
    def _norm_in(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        if self.normalize == "constant_norm_rescale":
            scale = (self.d_in**0.5) / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            return x * scale, ("scale", scale)
        if self.normalize == "layer_norm":  # SAELens: (x - mu) / (std + 1e-5) in, x * std + mu out
            mu = x.mean(-1, keepdim=True)
            x = x - mu
            std = x.std(-1, keepdim=True)
            return x / (std + 1e-5), ("ln", mu, std)
        return x, ()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self._encode(x)[0]

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        t = self.t
        x, undo = self._norm_in(x.float())
        if self.apply_b_dec_to_input:
            x = x - t["b_dec"]
        pre = x @ t["W_enc"]
        if self.architecture == "gated":
            gate = (pre + t["b_gate"]) > 0
            return gate * torch.relu(pre * t["r_mag"].exp() + t["b_mag"]), undo
        pre = pre + t["b_enc"]
        if self.rescale_by_decoder_norm:
            pre = pre * t["W_dec"].norm(dim=-1)
        if self.architecture == "jumprelu":
            return torch.relu(pre) * (pre > t["threshold"]), undo
        acts = torch.relu(pre)
        if self.architecture == "topk":
            top = acts.topk(self.k, dim=-1)
            return torch.zeros_like(acts).scatter_(-1, top.indices, top.values), undo
        if self.architecture == "groupmax":  # sparsify: the max of each of k equal groups of latents
            values, idx = acts.unflatten(-1, (self.k, -1)).max(dim=-1)
            idx = idx + torch.arange(0, acts.shape[-1], acts.shape[-1] // self.k, device=acts.device)
            return torch.zeros_like(acts).scatter_(-1, idx, values), undo
        return acts, undo

    def decode(self, f: torch.Tensor, undo: tuple = (), x: torch.Tensor | None = None) -> torch.Tensor:
        w_dec = self.t["W_dec"]
        if self.rescale_by_decoder_norm:
            w_dec = w_dec / w_dec.norm(dim=-1, keepdim=True)
        out = f @ w_dec + self.t["b_dec"]
        if "W_skip" in self.t and x is not None:
            out = out + x.float() @ self.t["W_skip"].T
        if undo and undo[0] == "scale":
            out = out / undo[1]
        elif undo and undo[0] == "ln":
            out = out * undo[2] + undo[1]
        return out

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(latent codes, reconstruction) of raw activations ``x``."""
        f, undo = self._encode(x)
        return f, self.decode(f, undo, x)


class _View:
    """An SAE made elsewhere seen as sagsae's SAEs are: ``encode`` on normalised rows (x / s), ``cfg.d_sae``,
    ``W_dec``; what ``browse.stream_stats`` and ``eval_rows_for`` read."""

    def __init__(self, fs: ForeignSAE, norm_factor: float):
        from types import SimpleNamespace

        self.fs, self.s = fs, float(norm_factor)
        self.cfg = SimpleNamespace(
            d_sae=fs.d_sae, d_in=fs.d_in, variant=fs.name, architecture=fs.architecture
        )

    @property
    def W_dec(self) -> torch.Tensor:
        return self.fs.W_dec

    def to(self, device):
        self.fs.to(device)
        return self

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.fs.encode(x * self.s)


def normalised_view(fs: ForeignSAE, norm_factor: float) -> _View:
    return _View(fs, norm_factor)


# --- readers, one per library -------------------------------------------------------------------------
def _tensors(path: Path, fix: str) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".pt":
            raw = torch.load(path, map_location="cpu", weights_only=True)
        else:
            from safetensors.torch import load_file

            raw = load_file(str(path))
    except Exception as e:
        raise SagsaeError(f"{path} is unreadable ({type(e).__name__}): {fix}") from None
    bad = [n for n, v in raw.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise SagsaeError(f"{path}: {', '.join(sorted(bad))} hold NaN or inf: this SAE cannot be evaluated")
    return raw


def _need(t: dict, names: tuple[str, ...], where: Path, arch: str) -> None:
    missing = [n for n in names if n not in t]
    if missing:
        raise SagsaeError(f"{where}: a {arch} SAE needs the tensors {', '.join(missing)}, which it lacks")


def _read_cfg(path: Path) -> dict:
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SagsaeError(
            f"{path} is unreadable ({type(e).__name__}): write the SAE's config again"
        ) from None
    if not isinstance(cfg, dict):
        raise SagsaeError(f"{path} is not a JSON object")
    return cfg


SAELENS_ARCHS = {"standard": "standard", "gated": "gated", "jumprelu": "jumprelu", "topk": "topk",
                 "batchtopk": "jumprelu", "jumprelu_skip_transcoder": None}  # fmt: skip


def _saelens(p: Path) -> ForeignSAE:
    cfg = _read_cfg(p / SAE_CFG)
    arch = SAELENS_ARCHS.get(cfg.get("architecture", "standard"))
    if arch is None:
        raise SagsaeError(
            f"{p}: SAELens architecture {cfg.get('architecture')!r} is not supported "
            f"(supported: {', '.join(k for k, v in SAELENS_ARCHS.items() if v)})"
        )
    t = {k: v.float() for k, v in _tensors(p / SAE_WEIGHTS, "save the SAE again with SAELens").items()}
    need = {"standard": ("W_enc", "b_enc"), "topk": ("W_enc", "b_enc"), "jumprelu": ("W_enc", "b_enc", "threshold"),
            "gated": ("W_enc", "b_gate", "r_mag", "b_mag")}[arch]  # fmt: skip
    _need(t, (*need, "W_dec", "b_dec"), p, arch)
    norm = cfg.get("normalize_activations", "none") or "none"
    if norm not in ("none", "constant_norm_rescale", "layer_norm"):
        raise SagsaeError(
            f"{p}: normalize_activations {norm!r} needs a scaling factor SAELens keeps outside the saved SAE: "
            "fold it into the weights (SAELens's fold_activation_norm_scaling_factor) and save again"
        )
    meta = cfg.get("metadata") or {}
    k = int(cfg.get("k") or meta.get("k") or 0)
    if arch == "topk" and k <= 0:
        raise SagsaeError(f"{p}: a topk SAE's cfg.json needs k")
    return ForeignSAE("saelens", arch, p, t, k=k, apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
                      normalize=norm, dtype=str(cfg.get("dtype", "float32")),
                      rescale_by_decoder_norm=bool(cfg.get("rescale_acts_by_decoder_norm", False)),
                      model_name=str(meta.get("model_name") or cfg.get("model_name") or ""),
                      hook_name=str(meta.get("hook_name") or cfg.get("hook_name") or ""), meta=cfg)  # fmt: skip


def _sparsify(p: Path) -> ForeignSAE:
    cfg = _read_cfg(p / SAE_CFG)
    raw = _tensors(p / "sae.safetensors", "save the SAE again with sparsify")
    _need(raw, ("encoder.weight", "encoder.bias", "W_dec", "b_dec"), p, "sparsify")
    if cfg.get("transcode"):
        raise SagsaeError(
            f"{p} is a sparsify transcoder (it predicts another activation): evaluate SAEs only"
        )
    t = {"W_enc": raw["encoder.weight"].float().T.contiguous(), "b_enc": raw["encoder.bias"].float(),
         "W_dec": raw["W_dec"].float(), "b_dec": raw["b_dec"].float()}  # fmt: skip
    if raw.get("W_skip") is not None:
        t["W_skip"] = raw["W_skip"].float()
    act = cfg.get("activation", "topk")
    # sparsify names hookpoints by module path (layers.6, layers.6.mlp); the folder is the hookpoint
    return ForeignSAE("sparsify", "groupmax" if act == "groupmax" else "topk", p, t, k=int(cfg.get("k", 32)),
                      dtype=str(raw["W_dec"].dtype).removeprefix("torch."), hook_name=p.name, meta=cfg)  # fmt: skip


DL_CLASSES = {"AutoEncoder": "standard", "GatedAutoEncoder": "gated", "JumpReluAutoEncoder": "jumprelu",
              "AutoEncoderTopK": "topk", "BatchTopKSAE": "batchtopk", "MatryoshkaBatchTopKSAE": "batchtopk"}  # fmt: skip


def _dictionary_learning(p: Path) -> ForeignSAE:
    cfg = _read_cfg(p / "config.json")
    trainer = cfg.get("trainer", cfg)
    cls = trainer.get("dict_class", "AutoEncoder")
    if cls not in DL_CLASSES:
        raise SagsaeError(
            f"{p}: dictionary_learning class {cls!r} is not supported ({', '.join(DL_CLASSES)})"
        )
    raw = {k: v.float() for k, v in _tensors(p / "ae.pt", "save the trainer's ae again").items()}
    g = raw.get
    kind = DL_CLASSES[cls]
    k, apply_b = int(trainer.get("k") or 0), True
    if kind == "standard":  # encoder/decoder are nn.Linear; `bias` is the pre-encoder and decoder bias
        _need(raw, ("encoder.weight", "encoder.bias", "decoder.weight", "bias"), p, cls)
        t = {
            "W_enc": g("encoder.weight").T,
            "b_enc": g("encoder.bias"),
            "W_dec": g("decoder.weight").T,
            "b_dec": g("bias"),
        }
    elif kind == "gated":
        _need(
            raw,
            ("encoder.weight", "decoder.weight", "decoder_bias", "r_mag", "gate_bias", "mag_bias"),
            p,
            cls,
        )
        t = {"W_enc": g("encoder.weight").T, "W_dec": g("decoder.weight").T, "b_dec": g("decoder_bias"),
             "r_mag": g("r_mag"), "b_gate": g("gate_bias"), "b_mag": g("mag_bias")}  # fmt: skip
    elif kind == "jumprelu":  # its apply_b_dec_to_input is False unless set after construction
        _need(raw, ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"), p, cls)
        t = {n: raw[n] for n in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")}
        apply_b = bool(trainer.get("apply_b_dec_to_input", False))
    else:  # TopK: decoder nn.Linear, b_dec subtracted first; BatchTopK keeps a threshold for inference
        _need(raw, ("encoder.weight", "encoder.bias", "b_dec"), p, cls)
        w_dec = g("decoder.weight").T if "decoder.weight" in raw else g("W_dec")
        t = {"W_enc": g("encoder.weight").T, "b_enc": g("encoder.bias"), "W_dec": w_dec, "b_dec": g("b_dec")}
        if not k and "k" in raw:
            k = int(raw["k"].item())
        if kind == "batchtopk":
            _need(raw, ("threshold",), p, cls)
            t["threshold"] = raw["threshold"].expand(t["W_enc"].shape[1]).clone()
            kind = "jumprelu"
        elif k <= 0:
            raise SagsaeError(f"{p}: an {cls} needs k (config.json's trainer.k or the ae's k buffer)")
    t = {n: v.contiguous() for n, v in t.items()}
    layer, sub = trainer.get("layer"), str(trainer.get("submodule_name") or "")
    return ForeignSAE("dictionary_learning", kind, p, t, k=k, apply_b_dec_to_input=apply_b,
                      model_name=str(trainer.get("lm_name") or ""), hook_name=sub or (f"layer {layer}" if layer is not None else ""),
                      meta=cfg)  # fmt: skip


READERS = {"saelens": _saelens, "sparsify": _sparsify, "dictionary_learning": _dictionary_learning}


def load_foreign(path: str | Path) -> ForeignSAE:
    """An SAE directory written by SAELens, sparsify or dictionary_learning (``detect`` decides which)."""
    p = Path(path)
    source = detect(p)
    if source == "sagsae":
        raise SagsaeError(f"{p} is a sagsae run directory: load it with sagsae_cli.sae.load_sae")
    sae = READERS[source](p)
    if sae.t["W_enc"].shape != (sae.d_in, sae.d_sae):
        raise SagsaeError(
            f"{p}: W_enc has shape {tuple(sae.t['W_enc'].shape)} but W_dec {tuple(sae.W_dec.shape)}: the files disagree"
        )
    return sae
