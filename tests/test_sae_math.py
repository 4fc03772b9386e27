"""The maths of docs/METHOD.md §3-§5, checked with autograd."""

import math
import shutil

import pytest
import torch

from sagsae_cli.metrics import l0
from sagsae_cli.sae import ARCHITECTURES, SAEConfig, build_sae, load_sae
from sagsae_cli.sae.jumprelu import jumprelu, step

D, N = 12, 20


def make(name, **kw):
    cfg = SAEConfig(architecture="", d_in=D, d_sae=N, l1=0.3, k=5, **kw)
    sae = build_sae(name, cfg, seed=1)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # move off the symmetric init so every path is exercised
        for name_, p in sae.named_parameters():
            if name_ not in ("W_dec",):
                p.add_(0.3 * torch.randn(p.shape, generator=g))
        if hasattr(sae, "log_threshold"):
            sae.log_threshold.fill_(math.log(0.4))
        if hasattr(sae, "log_threshold_neg"):  # split: a negative side that differs from the positive
            sae.log_threshold_neg.fill_(math.log(0.25))
    return sae


def x_batch(n=64, seed=0):
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed))


def grads_of(sae, term):
    sae.zero_grad(set_to_none=True)
    sae(x_batch()).losses[term].backward()
    return {n: (p.grad is not None and p.grad.abs().sum().item() > 0) for n, p in sae.named_parameters()}


@pytest.mark.parametrize("name", ["sa-gsae", "sa-gsae-untied", "sa-gsae-split"])
def test_sa_gsae_gradient_routes(name):
    sae = make(name)
    mags = {n for n, _ in sae.named_parameters() if n.startswith(("r_mag", "b_mag"))}
    thresholds = {n for n, _ in sae.named_parameters() if n.startswith("log_threshold")}
    assert len(thresholds) == (2 if name == "sa-gsae-split" else 1)
    mse = grads_of(sae, "mse")
    assert {n for n, v in mse.items() if v} == {"W_enc", "W_dec", "b_dec", *mags}  # not b_gate, theta
    sparsity = grads_of(sae, "sparsity")
    assert {n for n, v in sparsity.items() if v} == {"W_enc", "b_dec", "b_gate", *thresholds}
    aux = grads_of(sae, "aux")
    assert {n for n, v in aux.items() if v} == {"W_enc", "b_dec", "b_gate", *thresholds}
    assert not aux["W_dec"]  # the auxiliary reconstruction uses a frozen decoder


def test_gated_gradient_routes():
    sae = make("gated")
    assert {n for n, v in grads_of(sae, "mse").items() if v} == {"W_enc", "W_dec", "b_dec", "r_mag", "b_mag"}
    assert {n for n, v in grads_of(sae, "sparsity").items() if v} == {"W_enc", "b_dec", "b_gate"}
    assert {n for n, v in grads_of(sae, "aux").items() if v} == {"W_enc", "b_dec", "b_gate"}


def test_aux_pulls_theta_down_and_sparsity_pushes_it_up():
    # orthonormal decoder rows and x on one row: s undershoots x by theta, so only the L1 term
    # argues for a larger theta and the auxiliary term for a smaller one (docs/METHOD.md §4)
    cfg = SAEConfig(architecture="", d_in=20, d_sae=12, l1=0.3, settings={"theta0": 0.4})
    sae = build_sae("sa-gsae", cfg)
    with torch.no_grad():
        q, _ = torch.linalg.qr(torch.randn(20, 12, generator=torch.Generator().manual_seed(0)))
        sae.W_dec.copy_(q.T)
        sae.W_enc.copy_(q)
    x = 2.0 * sae.W_dec[:3].detach().repeat(4, 1)
    for term, sign in (("sparsity", -1), ("aux", +1)):
        sae.zero_grad(set_to_none=True)
        sae(x).losses[term].backward()
        g = sae.log_threshold.grad
        assert (sign * g[:3] > 0).all()  # descent moves log_theta by -grad
        assert (g[3:] == 0).all()  # closed latents get no gradient from either term


@pytest.mark.parametrize("name", ["sa-gsae", "sa-gsae-untied", "sa-gsae-split", "gated", "relu"])
def test_gradcheck(name):
    """Autograd equals finite differences: for mse + sparsity in every parameter, and for the aux
    term in the parameters it does not stop-gradient (W_dec and b_dec's addend are frozen there).
    The Heaviside gates are piecewise constant, so away from their boundaries the numeric
    derivative sees no jump either."""
    sae = make(name).double()
    x = x_batch(16).double()
    params = dict(sae.named_parameters())

    def check(terms, names):
        def loss(*tensors):
            out = torch.func.functional_call(sae, {**params, **dict(zip(names, tensors))}, (x,))
            return sum(out.losses[t] for t in terms)

        inputs = [params[n].detach().clone().requires_grad_(True) for n in names]
        assert torch.autograd.gradcheck(loss, inputs, eps=1e-7, atol=1e-5, rtol=1e-4)

    check([t for t in ("mse", "sparsity")], list(params))
    if "aux" in sae(x).losses:
        check(["aux"], [n for n in params if n not in ("W_dec", "b_dec")])


def test_one_sided_with_tiny_theta_is_the_gated_sae():
    sa, gated = make("one-sided"), make("gated")
    with torch.no_grad():
        for n in ("W_enc", "W_dec", "b_dec", "b_gate", "r_mag", "b_mag"):
            getattr(sa, n).copy_(getattr(gated, n))
        sa.log_threshold.fill_(math.log(1e-12))
    x = x_batch()
    a, b = sa(x), gated(x)
    assert torch.allclose(a.f, b.f, atol=1e-9) and torch.allclose(a.x_hat, b.x_hat, atol=1e-6)
    for term in ("mse", "sparsity", "aux"):
        assert a.losses[term].item() == pytest.approx(b.losses[term].item(), rel=1e-6, abs=1e-9)
    assert (a.f >= 0).all()


def test_tied_equals_untied_with_equal_parameters():
    tied, untied = make("sa-gsae"), make("sa-gsae-untied")
    with torch.no_grad():
        for n in ("W_enc", "W_dec", "b_dec", "b_gate", "log_threshold"):
            getattr(untied, n).copy_(getattr(tied, n))
        for side in ("_pos", "_neg"):
            getattr(untied, "r_mag" + side).copy_(tied.r_mag)
            getattr(untied, "b_mag" + side).copy_(tied.b_mag)
    x = x_batch()
    a, b = tied(x), untied(x)
    assert torch.equal(a.f, b.f) and torch.equal(a.x_hat, b.x_hat)
    assert all(torch.equal(a.losses[t], b.losses[t]) for t in a.losses)


def test_split_thresholds_reduce_to_one_and_act_on_their_own_side():
    """With theta- = theta+ the split variant is SA-GSAE exactly; apart, each threshold's gradient
    comes only from its own side's open gates (METHOD.md §8: split thresholds)."""
    one, split = make("sa-gsae"), make("sa-gsae-split")
    with torch.no_grad():
        for n, p in one.named_parameters():
            getattr(split, n).copy_(p)
        split.log_threshold_neg.copy_(one.log_threshold)
    x = x_batch()
    a, b = one(x), split(x)
    assert torch.equal(a.f, b.f)
    for term in a.losses:
        assert torch.equal(a.losses[term], b.losses[term])
    with torch.no_grad():  # now only the negative side's gates move
        split.log_threshold_neg.fill_(math.log(1e6))
    c = split(x)
    assert (c.f >= 0).all() and torch.equal(c.f[c.f > 0], a.f[c.f > 0]) and (a.f < 0).any()
    split = make("sa-gsae-split")
    for side, param in ((1, "log_threshold"), (-1, "log_threshold_neg")):
        split.zero_grad(set_to_none=True)
        split(x).losses["sparsity"].backward()
        u = (x - split.b_dec) @ split.W_enc + split.b_gate
        opened = (side * u > getattr(split, param).exp()).any(0)  # latents open on this side
        g = getattr(split, param).grad
        assert (g[opened] < 0).all() and (g[~opened] == 0).all()  # L1 raises only what it sees open


def test_bi_jump_relu_never_opens_both_sides_and_follows_the_gate_sign():
    sae = make("sa-gsae-untied")
    x = x_batch(512)
    u = sae.pre(x)
    pi = u + sae.b_gate
    theta = sae.log_threshold.exp()
    f = sae.encode(x)
    assert ((pi > theta) & (-pi > theta)).sum() == 0
    active = f != 0
    assert (pi[active].abs() > theta.expand_as(pi)[active]).all()
    assert (torch.sign(f[active]) == torch.sign(pi[active])).all()
    assert (f > 0).any() and (f < 0).any()


def test_l0_counts_negative_activations():
    f = torch.tensor([[1.0, -2.0, 0.0, 0.0], [0.0, 0.0, -0.5, 0.0]])
    assert l0(f) == 1.5


def test_jumprelu_straight_through_gradient_matches_the_paper():
    eps = 0.1
    z = torch.tensor([[0.50, 0.26, 0.31, -1.0], [0.22, 0.95, 0.29, 0.34]], requires_grad=True)
    theta = torch.tensor([0.3, 0.3, 0.3, 0.3], requires_grad=True)
    g_out = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    (jumprelu(z, theta, eps) * g_out).sum().backward()
    # by hand: |z - theta| < eps / 2 = 0.05 at (0,1) 0.04, (0,2) 0.01, (1,2) 0.01, (1,3) 0.04, where the
    # rectangle kernel K((z - theta) / eps) / eps is 10. d/dtheta = -theta * 10 * g_out summed there:
    # column 1: -0.3 * 10 * 2 = -6; column 2: -0.3 * 10 * (3 + 7) = -30; column 3: -0.3 * 10 * 8 = -24
    assert torch.allclose(theta.grad, torch.tensor([0.0, -6.0, -30.0, -24.0]))
    # d/dz: g_out where z > theta (0.50, 0.31 in row 0; 0.95, 0.34 in row 1)
    assert torch.equal(z.grad, torch.tensor([[1.0, 0.0, 3.0, 0.0], [0.0, 6.0, 0.0, 8.0]]))
    theta.grad = None
    z.grad = None
    (step(z, theta, eps) * z.shape[0]).backward()  # step() is the per-token mean of sum_i H
    assert torch.allclose(theta.grad, torch.tensor([0.0, -10.0, -20.0, -10.0]))  # -10 per kernel hit
    assert z.grad is None or z.grad.abs().sum() == 0


def test_topk_keeps_exactly_k():
    sae = make("topk")
    with torch.no_grad():
        sae.b_enc.fill_(100.0)  # all pre-activations positive: exactly k survive
    f = sae.encode(x_batch())
    assert ((f != 0).sum(-1) == 5).all()
    z = sae.pre(x_batch()) + sae.b_enc
    assert torch.equal(f.topk(5).values.sort().values, z.topk(5).values.sort().values)


def test_topk_aux_loss_only_with_dead_latents():
    sae = make("topk")
    quiet = sae(x_batch()).losses["aux"]  # no dead latent: the term is 0 and moves nothing
    assert quiet == 0
    sae.zero_grad()
    (sae(x_batch()).losses["mse"] + quiet).backward()
    with_zero = sae.W_dec.grad.clone()
    sae.zero_grad()
    sae(x_batch()).losses["mse"].backward()
    assert torch.equal(with_zero, sae.W_dec.grad)
    sae.tokens_since_fired[:7] = 10**9
    out = sae(x_batch())
    assert out.losses["aux"] > 0
    sae.zero_grad()
    out.losses["aux"].backward()
    assert sae.W_dec.grad[7:].abs().sum() == 0 and sae.W_dec.grad[:7].abs().sum() > 0


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_decoder_stays_unit_norm_after_steps(name):
    sae = make(name)
    sae.normalise_decoder()
    opt = torch.optim.Adam(sae.param_groups(1e-2), betas=(0.0, 0.999))
    for i in range(5):
        opt.zero_grad()
        sum(sae(x_batch(seed=i)).losses.values()).backward()
        sae.remove_parallel_grad()
        g = sae.W_dec.grad
        assert ((g * sae.W_dec).sum(1).abs() <= 1e-5 * g.norm(dim=1).clamp_min(1)).all()
        opt.step()
        sae.normalise_decoder()
        assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(N), atol=1e-6)


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_forward_codes_as_encode_and_decode(name):
    """`eval` reads f and x_hat from the forward pass (for the loss terms it also returns): they must be
    what encode and decode give, bit for bit, so its metrics do not move with that choice."""
    sae = make(name)
    x = torch.randn(300, D, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out, f = sae(x), sae.encode(x)
        x_hat = sae.decode(f)
    assert (f != 0).any() and (f == 0).any()  # a code with open and closed latents
    assert torch.equal(out.f, f) and torch.equal(out.x_hat, x_hat)


def test_param_counts_match_paper():
    m, d = N, D
    assert make("gated").param_count() == 2 * m * d + 3 * m + d
    assert make("sa-gsae").param_count() == 2 * m * d + 4 * m + d
    assert make("sa-gsae-untied").param_count() == 2 * m * d + 6 * m + d


def test_threshold_reset_and_ablation_switches():
    sae = make("sa-gsae")
    mask = torch.zeros(N, dtype=torch.bool)
    mask[:3] = True
    w_dec = sae.W_dec.clone()
    assert sae.reset_latents(mask) == {"log_threshold": 0, "b_gate": 0}
    assert torch.allclose(sae.log_threshold[:3], torch.full((3,), math.log(1e-3)))
    assert (sae.b_gate[:3] == 0).all() and (sae.b_gate[3:] != 0).all()
    assert torch.equal(sae.W_dec, w_dec)  # the paper's reset leaves the dictionary alone
    split = make("sa-gsae-split")
    assert list(split.reset_latents(mask)) == ["log_threshold", "log_threshold_neg", "b_gate"]
    assert torch.allclose(split.log_threshold_neg[:3], torch.full((3,), math.log(1e-3)))
    assert torch.allclose(split.log_threshold_neg[3:], torch.full((N - 3,), math.log(0.25)))
    assert make("no-reset").reset_latents(mask) == {}
    assert make("no-reset").reset_latents(mask, x_batch()) == {}


@pytest.mark.parametrize("name", ["sa-gsae", "sa-gsae-untied"])
def test_residual_reset_points_reset_latents_at_the_worst_tokens(name):
    """--reset-mode residual: the i-th reset latent (index order) takes the i-th largest residual row,
    normalised, as decoder row and encoder column, with a plain magnitude; the others keep theirs."""
    sae = make(name)
    with torch.no_grad():
        sae.log_threshold.copy_(torch.linspace(-3.0, -1.0, N))  # median (torch's lower one): -2.0526
    before = {n: p.detach().clone() for n, p in sae.named_parameters()}
    residual = torch.zeros(5, D)
    residual[0, 0], residual[1, 1], residual[2, :2] = 1.0, 3.0, torch.tensor([-2.0, 2.0])  # errors 1, 9, 8
    residual[3, 3] = 2.0  # error 4
    mask = torch.zeros(N, dtype=torch.bool)
    mask[[2, 7, 11]] = True
    touched = sae.reset_latents(mask, residual)
    assert touched["W_dec"] == 0 and touched["W_enc"] == 1
    expected = {
        2: torch.eye(D)[1],
        7: torch.tensor([-1.0, 1.0] + [0.0] * (D - 2)) / math.sqrt(2),
        11: torch.eye(D)[3],
    }
    for i, row in expected.items():
        assert torch.allclose(sae.W_dec[i], row) and torch.allclose(sae.W_enc[:, i], row), i
    keep = ~mask
    # thresholds start at the median (the lower middle of 20 values: the 10th), not at theta_0
    assert torch.allclose(sae.log_threshold[mask], torch.full((3,), -3.0 + 9 * 2.0 / 19))
    assert torch.equal(sae.W_dec[keep], before["W_dec"][keep]) and torch.equal(
        sae.W_enc[:, keep], before["W_enc"][:, keep]
    )
    for n in [n for n in touched if n.startswith(("r_mag", "b_mag"))]:
        p = dict(sae.named_parameters())[n]
        assert (p[mask] == 0).all() and torch.equal(p[keep], before[n][keep]), n
    # more reset latents than tokens: the last ones share the smallest residual kept; a zero residual
    # row gives no direction, so the latent keeps its row
    sae2 = make(name)
    w = sae2.W_dec.detach().clone()
    sae2.reset_latents(torch.ones(N, dtype=torch.bool), torch.zeros(3, D))
    assert torch.equal(sae2.W_dec, w)
    assert "aux" not in make("no-aux")(x_batch()).losses
    assert (make("one-sided").encode(x_batch()) >= 0).all()


def test_quantile_reset_reopens_a_latent_on_its_best_tokens():
    """--reset-mode quantile: a reset latent keeps its direction and gets a threshold halfway between
    the k-th and (k + 1)-th largest |u_i| of the batch (b_gate 0), so it fires on exactly its k
    best-matching tokens (k at least 1, at most rows - 1); at least theta_0; the others keep theirs."""
    sae = make("sa-gsae")
    x = torch.tensor([[0.5, -4.0], [3.0, 0.1], [-2.0, 1.0], [1.0, -0.2], [-0.25, 2.5]])
    x = torch.cat([x, torch.zeros(5, D - 2)], 1)
    with torch.no_grad():  # latent i reads coordinate i % 2 of x: u_i = x[:, i % 2]
        sae.W_enc.zero_()
        sae.W_enc[0, 0::2], sae.W_enc[1, 1::2] = 1.0, 1.0
        sae.b_dec.zero_()
        sae.r_mag.zero_()
        sae.b_mag.zero_()
    before = sae.log_threshold.detach().clone()
    mask = torch.zeros(N, dtype=torch.bool)
    mask[[0, 3, 6]] = True
    opening = sae.opening_thresholds(x, torch.tensor(2.0))
    # |x[:, 0]| sorted: 3, 2, 1, 0.5, 0.25 -> halfway between 2 and 1; |x[:, 1]|: 4, 2.5, 1, 0.2, 0.1
    assert torch.allclose(opening, torch.tensor([1.5, 1.75] * (N // 2)))
    for fires, want in ((1.4, [2.5, 3.25]), (0.0, [2.5, 3.25]), (9.0, [0.375, 0.15])):
        assert torch.allclose(sae.opening_thresholds(x, torch.tensor(fires))[:2], torch.tensor(want)), fires
    assert (sae.opening_thresholds(torch.zeros(4, D), torch.tensor(1.0)) == 1e-3).all()  # theta_0 floor
    assert sae.reset_latents(mask, opening=opening) == {"log_threshold": 0, "b_gate": 0}
    assert torch.allclose(sae.log_threshold[mask].exp(), torch.tensor([1.5, 1.75, 1.5]))
    assert (sae.b_gate[mask] == 0).all()
    assert torch.equal(sae.log_threshold[~mask], before[~mask])
    fires = (sae.encode(x) != 0).sum(0)
    assert fires[mask].tolist() == [2, 2, 2]
    assert make("no-reset").reset_latents(mask, opening=opening) == {}


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_save_load_exact_and_folded_export(tmp_path, name):
    sae = make(name)
    sae.save(tmp_path / "plain")
    back, s = load_sae(tmp_path / "plain")
    assert s == 1.0
    for (n, p), (_, q) in zip(sae.named_parameters(), back.named_parameters()):
        assert (
            torch.allclose(p, q, rtol=1e-6, atol=0) if n.startswith("log_threshold") else torch.equal(p, q)
        ), n
    scale = 7.5
    sae.save(tmp_path / "folded", norm_factor=scale)
    raw_model, _ = load_sae(tmp_path / "folded", normalised=False)
    x = x_batch()
    with torch.no_grad():
        f_norm = sae.encode(x)
        f_raw = raw_model.encode(x * scale)  # the export acts on raw activations
        assert torch.allclose(f_raw, f_norm, atol=1e-4)
        assert torch.allclose(raw_model.decode(f_raw), scale * sae.decode(f_norm), atol=1e-3)
    renorm, s = load_sae(tmp_path / "folded")
    assert s == scale and torch.allclose(renorm.W_dec, sae.W_dec, atol=1e-6)


def reference_sa_gsae(sae, x):
    """docs/METHOD.md §3-§4 written out literally with plain autograd (no fused kernel)."""
    u = (x - sae.b_dec) @ sae.W_enc
    pi = u + sae.b_gate
    theta = sae.log_threshold.exp()
    theta_neg = sae.log_threshold_neg.exp() if sae.cfg.split_threshold else theta
    tied = sae.cfg.tied
    r_pos, b_pos = (sae.r_mag, sae.b_mag) if tied else (sae.r_mag_pos, sae.b_mag_pos)
    r_neg, b_neg = (sae.r_mag, sae.b_mag) if tied else (sae.r_mag_neg, sae.b_mag_neg)
    g_pos = (pi - theta > 0).float()
    g_neg = (-pi - theta_neg > 0).float() * (0.0 if sae.cfg.one_sided else 1.0)
    f = g_pos * torch.relu(r_pos.exp() * u + b_pos) - g_neg * torch.relu(-(r_neg.exp() * u + b_neg))
    s = torch.relu(pi - theta) - (0.0 if sae.cfg.one_sided else 1.0) * torch.relu(-pi - theta_neg)
    x_hat = f @ sae.W_dec + sae.b_dec
    losses = {
        "mse": (x - x_hat).pow(2).sum(-1).mean(),
        "sparsity": sae.cfg.l1 * s.abs().sum(-1).mean(),
        "aux": sae.cfg.aux_coef * (x - (s @ sae.W_dec.detach() + sae.b_dec.detach())).pow(2).sum(-1).mean(),
    }
    return f, losses


@pytest.mark.parametrize(
    "name,compiled",
    [("sa-gsae", False), ("sa-gsae-untied", False), ("one-sided", False), ("sa-gsae-split", False),
     pytest.param("sa-gsae", True, marks=pytest.mark.skipif(not shutil.which("g++"), reason="torch.compile on CPU needs a C++ compiler"))],
)  # fmt: skip
def test_fused_kernel_matches_the_literal_formulas(name, compiled):
    """The hand-written forward and backward (eager, and under torch.compile: gating.compiled)
    against autograd through the paper's formulas."""
    from sagsae_cli.sae import gating

    with gating.compiled(compiled):
        check_against_literal_formulas(name)


def losses_and_grads(sae, x):
    out = sae(x)
    result = {"f": out.f.detach().clone()}
    for term, loss in out.losses.items():
        sae.zero_grad(set_to_none=True)
        loss.backward(retain_graph=True)
        result[term] = loss.detach().clone()
        result.update(
            {f"{term}/{n}": p.grad.clone() for n, p in sae.named_parameters() if p.grad is not None}
        )
    return result


@pytest.mark.parametrize("name", ["sa-gsae", "sa-gsae-untied", "one-sided", "sa-gsae-split", "gated"])
def test_gate_code_in_row_blocks(name, monkeypatch):
    """On one CPU thread the gate code runs over row blocks (gating.BLOCK): forward values and every
    gradient, summed over blocks, equal autograd through the paper's formulas (SA-GSAE family) and the
    gate code over whole arrays (all)."""
    from sagsae_cli.sae import gating

    sae, x = make(name).double(), x_batch(128).double()
    monkeypatch.setattr(gating, "BLOCK", None)
    whole = losses_and_grads(sae, x)
    monkeypatch.setattr(gating, "BLOCK", 3 * N)  # 3 rows of 20 latents: 43 blocks of a 128-token batch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert len(gating._blocks(torch.zeros(128, N))) == 43
        blocked = losses_and_grads(sae, x)
        if name != "gated":
            check_against_literal_formulas(name)
    finally:
        torch.set_num_threads(threads)
    assert whole.keys() == blocked.keys() and len(whole) > 10
    for key, value in whole.items():
        assert torch.allclose(blocked[key], value, atol=1e-12, rtol=1e-10), key
    torch.set_num_threads(2)
    try:  # several threads: whole arrays
        assert gating._blocks(torch.zeros(128, N)) == [slice(None)]
    finally:
        torch.set_num_threads(threads)


def test_gate_code_in_row_blocks_keeps_the_dtypes_of_a_bf16_input(monkeypatch):
    """A bfloat16 u (autocast) with float32 parameters: the blocks' results take the whole-array
    code's dtypes (float32 f, s and gradients) and values."""
    from sagsae_cli.sae import gating

    g = torch.Generator().manual_seed(0)
    u = torch.randn(64, N, generator=g).bfloat16()
    vec = [(0.3 * torch.randn(N, generator=g)).requires_grad_(True) for _ in range(5)]
    theta = torch.full((N,), 0.4)

    def run(block):
        monkeypatch.setattr(gating, "BLOCK", block)
        u_ = u.clone().requires_grad_(True)
        f, s, l1 = gating.gate_code(u_, vec[0], theta, vec[1], vec[2], vec[3], vec[4])
        for v in vec:
            v.grad = None
        (f.square().sum() + s.sum() + l1).backward()
        return [f, s, l1, u_.grad, *(v.grad for v in vec)]

    whole = run(None)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        blocked = run(2 * N)
    finally:
        torch.set_num_threads(threads)
    # every batch x width array in u's dtype (bf16), the loss and the per-latent gradients float32
    assert whole[0].dtype == whole[1].dtype == whole[3].dtype == torch.bfloat16
    assert whole[2].dtype == torch.float32 and all(g.dtype == torch.float32 for g in whole[4:])
    for a, b in zip(whole, blocked):
        assert a.dtype == b.dtype and torch.allclose(a.float(), b.float(), atol=1e-5, rtol=1e-5)


def check_against_literal_formulas(name):
    sae = make(name).double()
    x = x_batch(128).double()
    f_ref, ref = reference_sa_gsae(sae, x)
    out = sae(x)
    assert torch.allclose(out.f, f_ref, atol=1e-12)
    for term in ("mse", "sparsity", "aux"):
        assert out.losses[term].item() == pytest.approx(ref[term].item(), rel=1e-10)
        sae.zero_grad()
        ref[term].backward(retain_graph=True)
        want = {n: None if p.grad is None else p.grad.clone() for n, p in sae.named_parameters()}
        sae.zero_grad()
        out.losses[term].backward(retain_graph=True)
        for n, p in sae.named_parameters():
            a = torch.zeros_like(p) if want[n] is None else want[n]
            b = torch.zeros_like(p) if p.grad is None else p.grad
            assert torch.allclose(a, b, atol=1e-9), (term, n)


def test_sparsity_term_is_exact_on_large_batches():
    """sum |s| over tokens x latents in float32: a single accumulator drifts by ~0.1% at 2,048 x 4,608
    (torch 2.13, CPU); the gate code's term must match a float64 sum."""
    from sagsae_cli.sae.gating import gate_code

    g = torch.Generator().manual_seed(0)
    u = torch.randn(2048, 4608, generator=g)
    zero = torch.zeros(4608)
    theta = torch.full((4608,), 0.5)
    f, s, l1 = gate_code(u, zero, theta, zero, zero)
    want = s.double().abs().sum() / u.shape[0]
    assert float(l1) == pytest.approx(float(want), rel=1e-6)
