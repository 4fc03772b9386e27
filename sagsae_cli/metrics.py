"""Pure metric functions (docs/METHOD.md §6) on tensors. Latents are signed: "active" means f != 0."""

from __future__ import annotations

import torch


def l0(f: torch.Tensor) -> float:
    """Mean over tokens of #{i : f_i != 0}: negative activations count."""
    return float((f != 0).sum(-1).float().mean()) if f.shape[0] else 0.0


def fired(f: torch.Tensor) -> torch.Tensor:
    """Per latent: did it fire (either sign) on any token of this batch."""
    return (f != 0).any(0)


class R2:
    """Pooled R² = 1 - sum_t ||x_t - x_hat_t||^2 / sum_t ||x_t - mean||^2, accumulated over batches
    in float64 (the mean is the per-dimension mean over all tokens seen)."""

    def __init__(self):
        self.sse = 0.0
        self.n = 0
        self.sum = None
        self.sum_sq = 0.0

    def update(self, x: torch.Tensor, x_hat: torch.Tensor) -> None:
        x64 = x.double()
        self.sse += float((x64 - x_hat.double()).pow(2).sum())
        self.sum = x64.sum(0) if self.sum is None else self.sum + x64.sum(0)
        self.sum_sq += float(x64.pow(2).sum())
        self.n += x.shape[0]

    def value(self) -> float:
        if not self.n:
            return float("nan")
        sst = self.sum_sq - float(self.sum.pow(2).sum()) / self.n
        return 1.0 - self.sse / sst if sst > 0 else float("nan")


def r2(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    acc = R2()
    acc.update(x, x_hat)
    return acc.value()


def axis_cosines(W_dec: torch.Tensor, axes: torch.Tensor) -> torch.Tensor:
    """|cos| between every decoder row (latent) and every ground-truth axis: (n_latents, K)."""
    w = W_dec / W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
    a = axes / axes.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (w.double() @ a.double().T).abs()


def axis_recovery(W_dec: torch.Tensor, axes: torch.Tensor, live: torch.Tensor | None = None) -> float:
    """Mean over axes of the best |cos| with any (live) decoder row."""
    cos = axis_cosines(W_dec, axes)
    if live is not None:
        cos = cos[live]
    return float(cos.max(0).values.mean()) if cos.shape[0] else 0.0


def latents_per_axis(
    W_dec: torch.Tensor, axes: torch.Tensor, live: torch.Tensor | None = None, min_cos: float = 0.9
) -> float:
    """Mean over axes of the number of live latents aligned with it (|cos| >= min_cos).
    1 is ideal for a signed SAE on antipodal pairs, 2 for a non-negative one."""
    cos = axis_cosines(W_dec, axes)
    if live is not None:
        cos = cos[live]
    return float((cos >= min_cos).sum(0).double().mean())


def axis_coverage(
    W_dec: torch.Tensor,
    axes: torch.Tensor,
    live: torch.Tensor,
    paired: torch.Tensor | None = None,
    min_cos: float = 0.9,
    merged_cos: float = 0.7,
) -> dict:
    """How a dictionary covers ground-truth axes. An axis is covered when a live latent lies within
    ``min_cos`` of it (either sign). A live latent that covers no axis is *merged* when its two best
    axes are both within ``merged_cos`` (one latent between two axes), else *stray*. Counts, with the
    covered paired axes apart when ``paired`` (a bool per axis) is given."""
    cos = axis_cosines(W_dec, axes)[live]
    covered = (cos >= min_cos).any(0)
    top2 = cos.topk(min(2, cos.shape[1]), dim=1).values
    loose = top2[:, 0] < min_cos
    merged = loose & (top2[:, 1] >= merged_cos) if top2.shape[1] > 1 else torch.zeros_like(loose)
    out = {
        "covered": int(covered.sum()),
        "uncovered": int((~covered).sum()),
        "merged": int(merged.sum()),
        "stray": int((loose & ~merged).sum()),
        "dead": int((~live).sum()),
    }
    if paired is not None:
        out["paired_covered"] = int((covered & paired).sum())
    return out


# --- bipolar census (docs/METHOD.md §6) ---------------------------------------------------------------
class Census:
    """Per-latent counts and masses on each sign, accumulated over batches."""

    def __init__(self, n_latents: int, device: str | torch.device = "cpu"):
        z = lambda: torch.zeros(n_latents, dtype=torch.float64, device=device)
        self.n_pos, self.n_neg, self.mass_pos, self.mass_neg = z(), z(), z(), z()

    def update(self, f: torch.Tensor) -> None:
        f = f.detach().double()
        self.n_pos += (f > 0).sum(0)
        self.n_neg += (f < 0).sum(0)
        self.mass_pos += f.clamp_min(0).sum(0)
        self.mass_neg += (-f).clamp_min(0).sum(0)

    def table(self):
        """One row per latent: n+, n-, mass+, mass-, minority share."""
        import pandas as pd

        n_pos, n_neg, mass_pos, mass_neg = (
            t.cpu() for t in (self.n_pos, self.n_neg, self.mass_pos, self.mass_neg)
        )
        total = n_pos + n_neg
        minority = torch.where(total > 0, torch.minimum(n_pos, n_neg) / total.clamp_min(1), 0.0)
        return pd.DataFrame(
            {
                "latent": range(len(total)),
                "n_pos": n_pos.long().numpy(),
                "n_neg": n_neg.long().numpy(),
                "mass_pos": mass_pos.numpy(),
                "mass_neg": mass_neg.numpy(),
                "minority_share": minority.numpy(),
            }
        )


def census_summary(table, threshold: float = 0.1) -> dict:
    """Live latents, bipolar fraction of live latents (minority share >= threshold), and the share of
    the bipolar (minority-side) mass held by the top 1% and 10% of the *live* latents (dead ones
    would inflate the denominator's count and shrink the top-k)."""
    live = (table["n_pos"] + table["n_neg"]) > 0
    n_live = int(live.sum())
    bipolar = live & (table["minority_share"] >= threshold)
    minority_mass = (
        table.loc[live, ["mass_pos", "mass_neg"]].min(axis=1).sort_values(ascending=False).to_numpy()
    )
    total = minority_mass.sum()

    def top(frac):
        k = max(1, int(round(frac * len(minority_mass))))
        return float(minority_mass[:k].sum() / total) if total > 0 else float("nan")

    return {
        "live": n_live,
        "bipolar": int(bipolar.sum()),
        "bipolar_frac": float(bipolar.sum() / n_live) if n_live else 0.0,
        "bipolar_mass_top1": top(0.01),
        "bipolar_mass_top10": top(0.10),
    }


# --- the data ---------------------------------------------------------------------------------
def spectrum(x: torch.Tensor, shares=(0.5, 0.9, 0.99)) -> dict:
    """How many directions the rows ``x`` (tokens x d) use: the principal components needed for each
    share of the variance around the mean (``dims_50`` ...), the participation ratio
    (sum of the covariance's eigenvalues)² / (sum of their squares) (d for isotropic data, 1 for data on
    one line) and the largest component's share. A low-dimensional hookpoint leaves a wide dictionary
    latents that the sparsity penalty retires (docs/RESULTS.md, attn_out)."""
    x64 = x.double()
    ev = torch.linalg.svdvals(x64 - x64.mean(0)).pow(2)  # the covariance's eigenvalues, times the rows
    total = float(ev.sum())
    if total <= 0:
        raise ValueError("the rows have no variance")
    cum = ev.cumsum(0) / total
    out = {f"dims_{round(100 * q):d}": int((cum < q - 1e-12).sum()) + 1 for q in shares}
    out["participation_ratio"] = total**2 / float(ev.pow(2).sum())
    out["top1_share"] = float(ev[0]) / total
    return out


# --- convergence --------------------------------------------------------------------------------
def tokens_to_converge(tokens, r2, l0, r2_tol: float = 0.005, l0_tol: float = 0.1) -> float:
    """Tokens after which a run stays converged: the first checkpoint from which every later one
    (the final one included) has held-out R² within ``r2_tol`` of the final R² and L0 within
    ``l0_tol`` (relative) of the final L0. Points are (tokens, R², L0) in any order; the last in tokens
    is the final one. NaN for an empty history."""
    import numpy as np

    if len(tokens) == 0:
        return float("nan")
    t, r, z = _by_tokens(tokens, r2, l0)
    return _settled_from(t, (np.abs(r - r[-1]) <= r2_tol) & (np.abs(z - z[-1]) <= l0_tol * abs(z[-1])))


def tokens_to_objective(tokens, objective, rel_tol: float = 0.01) -> float:
    """Tokens after which a run's held-out training objective (the loss it minimises, at its own
    coefficient) stays within ``rel_tol`` (relative) of its final value: the first checkpoint from
    which every later one is. Unlike ``tokens_to_converge`` it needs no tolerance on L0, so a run that
    keeps sparsifying counts as unconverged only while doing so still lowers its loss. NaN for an
    empty history or one whose objective is missing (tables evaluated before it was recorded)."""
    import numpy as np

    v = np.asarray(objective, dtype=float)
    if len(tokens) == 0 or np.isnan(v).any():
        return float("nan")
    t, v = _by_tokens(tokens, v)
    return _settled_from(t, np.abs(v - v[-1]) <= rel_tol * abs(v[-1]))


def last_stretch(tokens, r2, objective) -> tuple[float, float]:
    """What a run's final stretch, from its second-to-last checkpoint to its last, still changed: R²
    gained (absolute) and objective lost (relative to the last value). NaN with fewer than two points
    (the objective's NaN where it was not recorded)."""
    if len(tokens) < 2:
        return float("nan"), float("nan")
    _, r, v = _by_tokens(tokens, r2, objective)
    return float(r[-1] - r[-2]), float(v[-2] / v[-1] - 1)


def _by_tokens(tokens, *series):
    """``tokens`` and each series as float arrays, in the order of ``tokens`` (stable)."""
    import numpy as np

    order = np.argsort(np.asarray(tokens, dtype=float), kind="stable")
    return tuple(np.asarray(v, dtype=float)[order] for v in (tokens, *series))


def _settled_from(t, ok) -> float:
    """The first of the sorted checkpoints ``t`` from which ``ok`` holds to the end; NaN when it
    fails at the last one (a measure taken against the final point always holds there)."""
    import numpy as np

    bad = np.flatnonzero(~ok)
    if not len(bad):
        return float(t[0])
    return float(t[bad[-1] + 1]) if bad[-1] + 1 < len(t) else float("nan")


def tokens_on_frontier(
    tokens, r2, l0, frontier_l0, frontier_r2, r2_tol: float = 0.005, l0_tol: float = 0.1
) -> float:
    """Tokens after which a run stays on a final frontier: the first checkpoint from which every later
    one has held-out R² at most ``r2_tol`` below the frontier (points (``frontier_l0``,
    ``frontier_r2``), linear in log L0) at its own L0, and an L0 inside the frontier's range widened
    by ``l0_tol`` (relative; the frontier is held flat beyond its ends). Unlike
    ``tokens_to_converge``, a run that only moves *along* the frontier (sparsifying at the R² the
    frontier has there) counts as converged. NaN for an empty history or frontier, or a last point off
    the frontier."""
    import numpy as np

    if len(tokens) == 0 or len(frontier_l0) == 0:
        return float("nan")
    t, r, z = _by_tokens(tokens, r2, l0)
    fl, fr = np.asarray(frontier_l0, dtype=float), np.asarray(frontier_r2, dtype=float)
    inside = (z >= fl.min() * (1 - l0_tol)) & (z <= fl.max() * (1 + l0_tol)) & (z > 0)
    ok = inside & (r >= _interp_log(fl, fr, np.where(z > 0, z, 1.0)) - r2_tol)
    return _settled_from(t, ok)  # NaN: off the frontier at the end


# --- comparisons between frontiers (docs/METHOD.md §6) ----------------------------------------------
def _interp_log(l0s, values, grid):
    import numpy as np

    order = np.argsort(l0s)
    return np.interp(np.log(grid), np.log(np.asarray(l0s)[order]), np.asarray(values)[order])


def pareto_verdict(l0_a, r2_a, l0_b, r2_b, n_grid: int = 256) -> dict:
    """Does frontier A (points (L0, R²)) dominate B over the overlap of their L0 ranges?
    Both are interpolated linearly in log L0. Returns the overlap, ``dominates`` (A >= B everywhere
    on it), the largest negative gap of A - B (0 if none), the largest absolute gap, and where
    dominance fails: ``fail_l0`` (the L0 of the worst gap) and ``fail_lo``-``fail_hi`` (the L0 span
    where A lies below B; NaN when A dominates)."""
    import numpy as np

    lo, hi = max(min(l0_a), min(l0_b)), min(max(l0_a), max(l0_b))
    if not (lo > 0 and hi > lo):
        return {"overlap_lo": lo, "overlap_hi": hi, "overlap": False, "dominates": None,
                "worst_gap": float("nan"), "max_abs_gap": float("nan"), "fail_l0": float("nan"),
                "fail_lo": float("nan"), "fail_hi": float("nan")}  # fmt: skip
    grid = np.exp(np.linspace(np.log(lo), np.log(hi), n_grid))
    gap = _interp_log(l0_a, r2_a, grid) - _interp_log(l0_b, r2_b, grid)
    below = grid[gap < 0]
    return {
        "overlap_lo": float(lo),
        "overlap_hi": float(hi),
        "overlap": True,
        "dominates": bool(gap.min() >= 0),
        "worst_gap": float(min(0.0, gap.min())),
        "max_abs_gap": float(np.abs(gap).max()),
        # where dominance fails: the L0 of the worst gap and the span of L0 where A lies below B
        "fail_l0": float(grid[gap.argmin()]) if len(below) else float("nan"),
        "fail_lo": float(below.min()) if len(below) else float("nan"),
        "fail_hi": float(below.max()) if len(below) else float("nan"),
    }


def overlap_midpoint(l0_a, l0_b) -> float:
    """The geometric middle of the L0 range two frontiers share (NaN when they do not overlap): where a
    cell's dead fractions are matched when no L0 is given."""
    import math

    lo, hi = max(min(l0_a), min(l0_b)), min(max(l0_a), max(l0_b))
    return math.sqrt(lo * hi) if lo > 0 and hi >= lo else float("nan")


def dead_reduction(l0_a, dead_a, n_a, l0_b, dead_b, n_b, matched_l0: float | None = None, n_grid=256) -> dict:
    """Dead-fraction cut of A against B: absolute (dead_B - dead_A) at ``matched_l0`` (interpolated in
    log L0; NaN outside both ranges; None: at ``overlap_midpoint``) and the geometric mean over the L0 overlap of
    (dead_B + e) / (dead_A + e) with one floor e = 1 / max(n_A, n_B) for both sides, so that two
    dictionaries without a dead latent compare as 1x whatever their widths."""
    import numpy as np

    if matched_l0 is None:
        matched_l0 = overlap_midpoint(l0_a, l0_b)
    out = {
        "dead_cut_at_l0": float("nan"),
        "dead_ratio_geomean": float("nan"),
        "matched_l0": float(matched_l0),
    }
    lo, hi = max(min(l0_a), min(l0_b)), min(max(l0_a), max(l0_b))
    if lo <= matched_l0 <= hi:
        g = np.array([matched_l0])
        out["dead_cut_at_l0"] = float(_interp_log(l0_b, dead_b, g)[0] - _interp_log(l0_a, dead_a, g)[0])
    if lo > 0 and hi >= lo:
        grid = np.exp(np.linspace(np.log(lo), np.log(hi), n_grid))
        floor = 1.0 / max(n_a, n_b)
        ratio = (_interp_log(l0_b, dead_b, grid) + floor) / (_interp_log(l0_a, dead_a, grid) + floor)
        out["dead_ratio_geomean"] = float(np.exp(np.log(ratio).mean()))
    return out


# --- opposed pairs: what a one-signed SAE spends on the two signs of one direction -----------------------
def opposed_pairs(w_dec: torch.Tensor, tau: float = 0.9, live: torch.Tensor | None = None, block: int = 4096):
    """Pairs (i < j) of latents whose decoder rows are nearly opposite: cos(W_dec[i], W_dec[j]) <= -tau.
    Only ``live`` latents take part when given. The cosine matrix is computed in row blocks of ``block``
    latents (memory block x H, not H x H). Returns an (n, 3) float64 tensor of (i, j, cosine)."""
    w = torch.nn.functional.normalize(w_dec.detach().double(), dim=1)
    idx = torch.arange(w.shape[0]) if live is None else torch.nonzero(live.cpu(), as_tuple=True)[0]
    w = w[idx.to(w.device)]
    w32 = w.float()  # screened in float32 with a margin, kept by the exact float64 cosine
    found = []
    for start in range(0, w.shape[0], block):
        i, j = torch.nonzero(w32[start : start + block] @ w32.T <= -tau + 1e-4, as_tuple=True)
        i = i + start
        keep = j > i  # each pair once
        i, j = i[keep], j[keep]
        cos = (w[i] * w[j]).sum(1)
        ok = cos <= -tau
        found.append(torch.stack([idx[i[ok].cpu()].double(), idx[j[ok].cpu()].double(), cos[ok].cpu()], 1))
    return torch.cat(found) if found else torch.zeros(0, 3, dtype=torch.float64)


def cofiring(f: torch.Tensor, pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens on which each latent fires (H,), tokens on which both latents of each pair fire (n,)) in
    one batch of codes ``f`` (tokens x H); summed over batches by the caller."""
    on = f != 0
    i, j = pairs[:, 0].long().to(f.device), pairs[:, 1].long().to(f.device)
    return on.sum(0), (on[:, i] & on[:, j]).sum(0)


def pairs_table(pairs: torch.Tensor, fires: torch.Tensor, both: torch.Tensor, tokens: int):
    """One row per candidate pair: latents i and j, their decoder cosine, each one's firing frequency,
    and ``cofire``: the share of the rarer latent's firings on which the other fires too (0 = never
    together, as the two signs of one feature; 1 = always)."""
    import pandas as pd

    i, j = pairs[:, 0].long(), pairs[:, 1].long()
    fi, fj = fires[i].double(), fires[j].double()
    rarer = torch.minimum(fi, fj)
    cofire = torch.where(rarer > 0, both.double() / rarer.clamp_min(1), torch.zeros_like(rarer))
    return pd.DataFrame({"i": i.numpy(), "j": j.numpy(), "cos": pairs[:, 2].numpy(),
                         "freq_i": (fi / max(tokens, 1)).numpy(), "freq_j": (fj / max(tokens, 1)).numpy(),
                         "cofire": cofire.numpy()})  # fmt: skip


def opposed_summary(table, live: int, max_cofire: float = 0.05) -> dict:
    """From ``pairs_table``: the opposed pairs (both latents live, co-firing at most ``max_cofire``), their
    count and the share of live latents they occupy (a latent in two pairs counts once)."""
    ok = table[(table.freq_i > 0) & (table.freq_j > 0) & (table.cofire <= max_cofire)]
    members = len(set(ok.i) | set(ok.j))
    return {"opposed_pairs": len(ok), "opposed_pair_share": members / live if live > 0 else 0.0}
