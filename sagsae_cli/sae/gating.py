"""The gate + magnitude code shared by the Gated SAE and SA-GSAE, as one fused autograd function.

Given the shared projection u (tokens x latents):

    pi = u + b_gate
    s  = pi - clamp(pi, -theta-, theta+)   two-sided: ReLU(pi - theta+) - ReLU(-pi - theta-)
                                           (theta- = theta+ unless the thresholds are split)
    s  = ReLU(pi - theta)                  one-sided (no theta: the Gated SAE's ReLU(pi))
    m± = exp(r±) u + b_mag±
    f  = m+ [s > 0 and m+ > 0] + m- [s < 0 and m- < 0]       (the Bi-Jump-ReLU; tied: m+ = m-)
    l1 = sum |s| / tokens

The gate passes no gradient to b_gate or theta through f (a Heaviside); s and l1 do. Writing the
backward by hand saves about half the passes over the (tokens x latents) arrays that eager autograd
makes, which is what dominates an SAE step after the GEMMs. ``tests/test_sae_math.py`` checks it
against finite differences and against the reference formulas.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from sagsae_cli.sae.base import SAE, Output


def _forward(u, b_gate, theta, theta_neg, r_pos, b_pos, r_neg, b_neg, two_sided: bool, out=None):
    """(f, s, |s| per row, keep+, keep-, exp(r+), exp(r-)): the module docstring's forward, as pure tensor
    code (torch.compile can fuse it; ``use_compiled``), written into ``out`` = (s, f, keep+, keep-) when
    given (row blocks of whole-batch arrays, ``_blocks``). Masks select by multiplication (on CPU
    ``torch.where`` takes about three times as long), and the masks are 0/1 in u's dtype, so no cast is
    made."""
    o_s, o_f, o_kp, o_kn = out if out is not None else (None,) * 4  # out=None: new arrays
    pi = torch.add(u, b_gate, out=o_s)  # a new array (out=None) or o_s, worked on in place: pi -> s
    if two_sided:
        s = pi.sub_(torch.clamp(pi, -(theta if theta_neg is None else theta_neg), theta))
    else:  # theta None: the Gated SAE's ReLU(pi)
        s = (pi if theta is None else pi.sub_(theta)).clamp_min_(0.0)
    e_pos = r_pos.exp().to(u.dtype)
    m_pos = torch.addcmul(b_pos, u, e_pos, out=o_f)
    if r_neg is None:  # tied (or one-sided): one magnitude, kept where it agrees with the gate
        keep_pos = torch.mul(s, m_pos, out=o_kp).gt_(0)
        f = m_pos.mul_(keep_pos)  # m+ -> f in place
        keep_neg = e_neg = None
    else:
        e_neg = r_neg.exp().to(u.dtype)
        m_neg = torch.addcmul(b_neg, u, e_neg)
        # [s > 0 and m+ > 0] as ReLU(s) m+ > 0, a 0/1 mask in u's dtype: a bool mask would be cast at
        # every product with it, which on CPU runs unvectorised (the untied step: 808 -> 565 ms)
        keep_pos = torch.clamp(s, min=0.0, out=o_kp).mul_(m_pos).gt_(0)
        keep_neg = torch.clamp(s, max=0.0, out=o_kn).mul_(m_neg).gt_(0)
        f = m_pos.mul_(keep_pos).add_(m_neg.mul_(keep_neg))
    # per row, summed by the caller over the whole batch: one float32 accumulator over all tokens x
    # latents drifts (torch 2.13 on CPU: -0.55% at 4,096 x 4,608), a row of latents stays exact to ~1e-7
    return f, s, torch.linalg.vector_norm(s, 1, dim=-1, dtype=_wide(s)), keep_pos, keep_neg, e_pos, e_neg


def _backward(g_f, g_s, c, u, s, keep_pos, keep_neg, e_pos, e_neg, two_sided: bool, need: tuple, out=None):
    """The gradients of ``_forward``'s (f, s, l1) with respect to its inputs (None where not needed), with
    c = dL/dl1 / tokens, g_u written into ``out`` when given. The gate passes no gradient to b_gate or
    theta through f; s passes its own where it is open, and l1 its sign."""
    sign = torch.sign(s)  # 0 where the gate is closed, so sign^2 is the open mask
    # g_pi = g_s [s != 0] + c sign(s), as (g_s sign + c) sign: exact, three passes, one new array;
    # one-sided, sign is the 0/1 open mask: (g_s + c) sign, two passes
    if g_s is None:
        g_pi = torch.mul(sign, c, out=out)
    elif two_sided:
        g_pi = torch.mul(g_s, sign, out=out).add_(c).mul_(sign)
    else:
        g_pi = torch.add(g_s, c, out=out).mul_(sign)
    grads = [None] * 9
    if need[1]:
        grads[1] = _colsum(g_pi)
    if need[3]:  # split: ds/dtheta+ = -1 where s > 0, ds/dtheta- = +1 where s < 0 (float masks from sign)
        grads[2] = -_colsum(g_pi * sign.clamp(min=0.0)) if need[2] else None
        grads[3] = -_colsum(g_pi * sign.clamp(max=0.0))
    elif need[2]:  # ds/dtheta = -sign(s) (two-sided), -1 where open (one-sided)
        grads[2] = -_colsum(g_pi * sign) if two_sided else -_colsum(g_pi)
    g_u = g_pi  # the gradients through f are added in place: g_pi's own sums are taken
    if g_f is not None:
        for keep, e, i in ((keep_pos, e_pos, 4), (keep_neg, e_neg, 6)):
            if keep is None:
                continue
            g_m = g_f * keep
            if need[0]:
                g_u.addcmul_(g_m, e)
            if need[i]:
                grads[i] = _colsum(g_m * u) * e
            if need[i + 1]:
                grads[i + 1] = _colsum(g_m)
    grads[0] = g_u if need[0] else None
    return tuple(grads)


def _colsum(a: torch.Tensor) -> torch.Tensor:
    """A per-latent gradient: ``a`` summed over tokens, accumulated and returned in float32 at least (a bfloat16
    batch x width array summed into bfloat16 would keep three significant digits)."""
    return a.sum(0, dtype=_wide(a))


def _wide(a: torch.Tensor) -> torch.dtype:
    """float32, or a's dtype where it is wider (float64 in the gradient checks)."""
    return torch.promote_types(a.dtype, torch.float32)


BLOCK = 1 << 19
"""Elements per row block of the gate code on CPU with one thread (2 MiB per float32 array): its ~20
elementwise passes over a block then run in cache instead of streaming whole (tokens x latents) arrays
through memory: at width 4,608, batch 4,096 the gate code takes 9-14 passes' time instead of 17-28
(``benchmarks/gate_bench.py --block``; docs/ARCHITECTURE.md). None: whole arrays. With several threads the
arrays stay whole: every op over a block is a parallel region of its own, and on a machine where
another process holds a core the threads then wait on each other at each of them (measured: the gate
code took 18-600 passes' time instead of ~15). On CUDA a launch per block would cost more than it saves."""


def _blocks(u: torch.Tensor) -> list[slice]:
    """Row slices of u over which the gate code runs: one unless u is a CPU matrix of more than two
    blocks' worth of elements and torch runs one thread."""
    if (
        BLOCK is None
        or u.dim() != 2
        or u.device.type != "cpu"
        or u.numel() <= 2 * BLOCK
        or torch.get_num_threads() != 1
    ):
        return [slice(None)]
    rows = max(1, BLOCK // u.shape[1])
    return [slice(i, i + rows) for i in range(0, u.shape[0], rows)]


def _add(acc, g):
    return g if acc is None else acc.add_(g) if g is not None else acc


def forward_blocks(u, b_gate, theta, theta_neg, r_pos, b_pos, r_neg, b_neg, two_sided: bool):
    """``_forward`` over u's row blocks into whole-batch arrays: (f, s, l1, keep+, keep-, exp(r+), exp(r-))."""
    blocks = _blocks(u)
    if len(blocks) == 1 or _impl["forward"] is not _forward:  # compiled: one fused kernel, no blocks
        f, s, rows, *rest = _impl["forward"](
            u, b_gate, theta, theta_neg, r_pos, b_pos, r_neg, b_neg, two_sided
        )
        return (f, s, rows.sum() / max(u.shape[0], 1), *rest)
    # the dtype the whole-array code's results take (u's: _GateCode casts the vectors to it)
    dtype = torch.promote_types(u.dtype, b_gate.dtype)
    s, f, kp = (torch.empty(u.shape, dtype=dtype, device=u.device) for _ in range(3))
    kn = torch.empty_like(s) if r_neg is not None else None
    rows = torch.empty(u.shape[0], dtype=_wide(s), device=u.device)  # per-row |s| sums, as _forward
    for b in blocks:
        out = (s[b], f[b], kp[b], kn[b] if kn is not None else None)
        _, _, rows[b], _, _, e_pos, e_neg = _forward(
            u[b], b_gate, theta, theta_neg, r_pos, b_pos, r_neg, b_neg, two_sided, out
        )
    return f, s, rows.sum() / u.shape[0], kp, kn, e_pos, e_neg


def backward_blocks(g_f, g_s, g_l1, u, s, keep_pos, keep_neg, e_pos, e_neg, two_sided: bool, need: tuple):
    """``_backward`` over u's row blocks: the vector gradients summed over blocks, g_u whole."""
    c = g_l1 / max(u.shape[0], 1) if g_l1 is not None else torch.zeros((), dtype=s.dtype, device=s.device)
    blocks = _blocks(u)
    if len(blocks) == 1 or _impl["backward"] is not _backward:
        return _impl["backward"](g_f, g_s, c, u, s, keep_pos, keep_neg, e_pos, e_neg, two_sided, need)
    g_u = torch.empty_like(s)  # s's dtype, as the whole-array code's g_pi
    grads = [None] * 9
    for b in blocks:
        part = _backward(
            None if g_f is None else g_f[b],
            None if g_s is None else g_s[b],
            c,
            u[b],
            s[b],
            keep_pos[b],
            None if keep_neg is None else keep_neg[b],
            e_pos,
            e_neg,
            two_sided,
            need,
            out=g_u[b],
        )
        grads[1:] = [_add(a, g) for a, g in zip(grads[1:], part[1:])]  # part[0]: g_u's block, written
    grads[0] = g_u if need[0] else None
    return tuple(grads)


_EAGER = {"forward": _forward, "backward": _backward}
_COMPILED: dict = {}  # made on first use
_impl = dict(_EAGER)


def use_compiled(enable: bool = True) -> bool:
    """Run the gate code's forward and backward through ``torch.compile`` (one fused kernel each
    instead of about twenty passes over the tokens x latents arrays) or eagerly (the default).
    Compiling takes tens of seconds per shape and needs a C++ compiler on CPU (Triton on CUDA);
    returns whether the compiled path is now in use."""
    if not enable:
        _impl.update(_EAGER)
        return False
    if not _COMPILED:
        _COMPILED.update({k: torch.compile(f, dynamic=False) for k, f in _EAGER.items()})
    _impl.update(_COMPILED)
    return True


@contextmanager
def compiled(enable: bool = True):
    """The gate code compiled (``enable``) or eager inside the block; eager again after it."""
    use_compiled(enable)
    try:
        yield
    finally:
        use_compiled(False)


class _GateCode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, b_gate, theta, theta_neg, r_pos, b_pos, r_neg, b_neg, two_sided):
        # the per-latent vectors in u's dtype: under bf16 autocast every batch x width array (s, f, the
        # masks, the gradients) stays bf16 instead of being promoted to float32 by u + b_gate; autograd
        # returns the vectors' gradients (float32 sums, _colsum) to the float32 parameters
        b_gate, theta, theta_neg, b_pos, b_neg = (
            None if t is None else t.to(u.dtype) for t in (b_gate, theta, theta_neg, b_pos, b_neg)
        )
        f, s, l1, keep_pos, keep_neg, e_pos, e_neg = forward_blocks(
            u, b_gate, theta, theta_neg, r_pos, b_pos, r_neg, b_neg, two_sided
        )
        ctx.save_for_backward(u, s, keep_pos, keep_neg, e_pos, e_neg)
        ctx.two_sided = two_sided
        return f, s, l1

    @staticmethod
    def backward(ctx, g_f, g_s, g_l1):
        u, s, keep_pos, keep_neg, e_pos, e_neg = ctx.saved_tensors
        return backward_blocks(
            g_f, g_s, g_l1, u, s, keep_pos, keep_neg, e_pos, e_neg, ctx.two_sided, tuple(ctx.needs_input_grad)
        )


def gate_code(u, b_gate, theta, r_pos, b_pos, r_neg=None, b_neg=None, two_sided=True, theta_neg=None):
    """(f, s, l1) as in the module docstring; theta is a per-latent tensor (None for the Gated SAE: s = ReLU(pi)),
    theta_neg the negative side's own threshold (None: theta on both sides)."""
    return _GateCode.apply(u, b_gate, theta, theta_neg, r_pos, b_pos, r_neg, b_neg, two_sided)


class GatedFamily(SAE):
    """Encode / forward shared by the Gated SAE and SA-GSAE; subclasses define ``_code(u)`` -> (f, s, l1).

    L = ||x - x_hat||^2 + lambda l1(s) + alpha ||x - (s sg(W_dec) + sg(b_dec))||^2
    """

    def _code(self, u: torch.Tensor):
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self._code(self.pre(x))[0]

    terms = ("mse", "sparsity", "aux")

    def forward(self, x: torch.Tensor, coef: float | None = None) -> Output:
        f, s, l1 = self._code(self.pre(x))
        x_hat = self.decode(f)
        losses = {"mse": self.mse(x, x_hat), "sparsity": self.coef(coef) * l1}
        if self.cfg.aux_coef:  # the gate's own code reconstructs x through a frozen decoder
            losses["aux"] = self.cfg.aux_coef * self.mse(x, s @ self.W_dec.detach() + self.b_dec.detach())
        return Output(x_hat, f, losses)
