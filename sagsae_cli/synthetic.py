"""Synthetic ground truth (docs/METHOD.md §7): signed-axis data written as an ordinary activation store.

K unit axes v_k in R^d (orthonormal when K <= d). A *paired* axis carries two antipodal features
+v_k and -v_k with sparse non-negative intensities a+ and a-; a *one-sided* axis carries one.
x = sum_k (a+_k - a-_k) v_k + noise.

Every feature fires with probability p = l0 / n_features, so a token has ``l0`` active features on
average. The within-pair correlation ``rho`` in [-1, 0] sets how often both sides of a pair fire
together: P(both) = p^2 (1 + rho). rho = 0 is independence, rho = -1 means never both.

rho is the *co-firing lift minus one*, P(both) / (P(+) P(-)) - 1, not a correlation: the Pearson
correlation of the two sides' firing indicators is rho p / (1 - p), which is tiny for sparse features
(about -0.02 at rho = -1 with the defaults). So Protocol A's rho sweep barely changes the data: it
only decides whether the rare co-firings of a pair happen. Each store records both numbers in its
metadata (``rho`` and ``indicator_correlation``). Intensities are uniform on [0.5, 1.5].
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from sagsae_cli.errors import SagsaeError
from sagsae_cli.progress import progress_bar
from sagsae_cli.store import StoreWriter

PROTOCOLS = {
    "A": {"paired_fraction": 1.0, "rho": -1.0},  # all axes paired; sweep rho
    "B": {"paired_fraction": 0.5, "rho": -1.0},  # vary the fraction of paired axes
    "C": {"paired_fraction": 1.0, "rho": -1.0},  # fixed data; widths H vs 2H at training time
}
CONTEXT = 128  # rows per pseudo-sequence, so that splits never share a "sequence"


@dataclass(frozen=True)
class SyntheticConfig:
    protocol: str = "A"
    d: int = 64
    n_axes: int = 48
    rho: float = -1.0
    paired_fraction: float = 1.0
    l0: float = 2.0
    noise: float = 0.01
    tokens: int = 1_000_000
    eval_tokens: int = 100_000
    seed: int = 0
    dtype: str = "float32"

    @property
    def n_paired(self) -> int:
        return int(round(self.paired_fraction * self.n_axes))

    @property
    def p(self) -> float:
        return self.l0 / (self.n_axes + self.n_paired)

    def validate(self) -> None:
        if self.d < 1 or self.n_axes < 1:
            raise SagsaeError(f"--d and --n-axes must be >= 1 (got {self.d}, {self.n_axes})")
        checks = [
            (self.protocol in PROTOCOLS, f"--protocol must be one of {', '.join(PROTOCOLS)}"),
            (self.d >= 1 and self.n_axes >= 1, "--d and --n-axes must be positive"),
            (-1.0 <= self.rho <= 0.0, "--rho must lie in [-1, 0]"),
            (0.0 <= self.paired_fraction <= 1.0, "--paired-fraction must lie in [0, 1]"),
            (self.l0 > 0 and self.p <= 0.5, "--l0 must be positive and at most half the number of features"),
            (self.noise >= 0, "--noise must be non-negative"),
            (self.tokens > 0 and self.eval_tokens >= 0, "--tokens must be positive, --eval-tokens >= 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise SagsaeError(msg)


def make_axes(cfg: SyntheticConfig) -> tuple[np.ndarray, np.ndarray]:
    """Unit axes (K x d) and the paired flag per axis (the first round(f K) axes are paired)."""
    g = torch.Generator().manual_seed(cfg.seed)
    a = torch.randn(max(cfg.d, cfg.n_axes), cfg.d, generator=g, dtype=torch.float64)
    if cfg.n_axes <= cfg.d:
        q, _ = torch.linalg.qr(a.T)
        axes = q.T[: cfg.n_axes]
    else:
        axes = a[: cfg.n_axes] / a[: cfg.n_axes].norm(dim=1, keepdim=True)
    paired = np.arange(cfg.n_axes) < cfg.n_paired
    return axes.float().numpy(), paired


def sample_features(cfg: SyntheticConfig, paired: np.ndarray, n: int, g: torch.Generator):
    """Which features fire: boolean (n x K) masks for the + and the - side of every axis."""
    p = cfg.p
    q = p * p * (1.0 + cfg.rho)  # P(both sides of a pair fire)
    u = torch.rand(n, cfg.n_axes, generator=g)
    plus = u < p  # u < q: both sides; q <= u < p: plus only (one-sided axes: fires)
    minus = torch.from_numpy(paired) & ((u < q) | ((u >= p) & (u < 2 * p - q)))  # both, or minus only
    return plus, minus


def sample_coefficients(cfg: SyntheticConfig, paired: np.ndarray, n: int, g: torch.Generator):
    """Signed coefficients (n x K): a+ - a- with intensities uniform on [0.5, 1.5]."""
    plus, minus = sample_features(cfg, paired, n, g)
    mag = 0.5 + torch.rand(2, n, cfg.n_axes, generator=g)
    return mag[0] * plus - mag[1] * minus


def generate(cfg: SyntheticConfig, axes: np.ndarray, paired: np.ndarray, split: str, chunk: int, n: int):
    """Rows of chunk ``chunk`` of ``split``: deterministic in (seed, split, chunk)."""
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + (split == "eval") * 7_919 + chunk + 1)
    coef = sample_coefficients(cfg, paired, n, g)
    return coef @ torch.from_numpy(axes) + cfg.noise * torch.randn(n, cfg.d, generator=g)


def write_synthetic_store(cfg: SyntheticConfig, out: str, *, force: bool = False, quiet: bool = False):
    """Write (or resume writing) a synthetic store; returns the finished writer's row counts."""
    cfg.validate()
    axes, paired = make_axes(cfg)
    meta = {
        "source": "synthetic",
        "model": f"synthetic-protocol-{cfg.protocol}",
        "hook": f"rho={cfg.rho:g},paired={cfg.paired_fraction:g}",
        "hook_definition": "x = sum_k (a+_k - a-_k) v_k + noise (docs/METHOD.md §7)",
        "indicator_correlation": cfg.rho * cfg.p / (1 - cfg.p),  # of a pair's two firing indicators
        **asdict(cfg),
    }
    with StoreWriter(
        out, d=cfg.d, dtype=cfg.dtype, config={"synthetic": asdict(cfg)}, meta=meta, force=force
    ) as w:
        if w.complete:
            return {s: w.rows(s) for s in ("train", "eval")}
        if "truth" not in w.group:
            w.write_truth(axes, paired)
        rows_per_chunk = int(w.group["train/acts"].chunks[0])
        targets = {"train": cfg.tokens, "eval": cfg.eval_tokens}
        total = sum(targets.values())
        with progress_bar("synthetic", total=total, unit="tok", quiet=quiet) as bar:
            bar.advance(w.rows("train") + w.rows("eval"))
            seq_offset = {"train": 0, "eval": -(-cfg.tokens // CONTEXT)}
            for split, target in targets.items():
                while w.rows(split) < target:
                    start = w.rows(split)
                    chunk, n = start // rows_per_chunk, min(rows_per_chunk, target - start)
                    x = generate(cfg, axes, paired, split, chunk, n)
                    rows = np.arange(start, start + n)
                    w.append(
                        split, x, positions=rows % CONTEXT, sequence_ids=seq_offset[split] + rows // CONTEXT
                    )
                    w.commit()
                    bar.advance(n)
        w.commit(complete=True)
        return {s: w.rows(s) for s in ("train", "eval")}
