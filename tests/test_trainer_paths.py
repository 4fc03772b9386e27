"""Trainer paths the review found untested: dead-latent resets (window, none in the final 20%,
cleared Adam moments), the threshold parameter group, lambda warm-up, initialisation, the data-driven
threshold start, snapshots, the TopK aux loss value and the bf16 fused kernel. Plus a golden
end-to-end run whose metrics must not move silently."""

import copy
import math
from pathlib import Path

import pytest
import torch
from conftest import OneProcess, run_cli

from sagsae_cli.errors import SagsaeError
from sagsae_cli.files import snapshot_dirs, snapshot_tokens
from sagsae_cli.metrics import l0
from sagsae_cli.recipe import TrainConfig, l1_factor
from sagsae_cli.run import Run, make_optimizer
from sagsae_cli.sae import SAEConfig, build_sae
from sagsae_cli.store import open_store
from sagsae_cli.train import train


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("tp") / "s"
    run_cli("harvest", "--source", "synthetic", "--d", 16, "--n-axes", 12, "--tokens", "40k", "--eval-tokens", "4k",
            "--seed", 5, "--out", path, "--quiet", check=0)  # fmt: skip
    return path


def _run(store, tmp_path, **kw):
    cfg = TrainConfig(store=str(store), **{"width": 24, "tokens": 20_000, "batch": 500, "lr": 1e-3, **kw})
    s = open_store(store)
    sample = s.read("train", 0, 4000, normalise=True)
    return Run(cfg, s.d, Path(tmp_path), sample, OneProcess(), force=False), s, sample


def test_initialisation(store, tmp_path):
    run, _, sample = _run(store, tmp_path)
    sae = run.sae
    assert torch.equal(sae.W_enc, sae.W_dec.T)  # W_enc = W_dec^T
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(24), atol=1e-6)
    assert torch.allclose(sae.b_dec, sample.mean(0), atol=1e-6)  # b_dec = data mean
    assert torch.allclose(sae.log_threshold.exp(), torch.full((24,), 1e-3))
    assert (sae.b_gate == 0).all()


def test_threshold_group_gets_its_multiple_and_lambda_warms_up(store, tmp_path):
    run, s, sample = _run(store, tmp_path, lr=1e-3, threshold_lr_mult=10.0, warmup_steps=1)
    groups = run.opt.param_groups
    theta = [g for g in groups if any(p is run.sae.log_threshold for p in g["params"])]
    assert len(theta) == 1 and theta[0]["lr_mult"] == 10.0
    assert all(p is not run.sae.log_threshold for g in groups if g is not theta[0] for p in g["params"])
    run.train_step(sample[:500], torch.autocast("cpu", enabled=False))
    assert theta[0]["lr"] == pytest.approx(1e-2) and groups[0]["lr"] == pytest.approx(1e-3)
    # lambda ramps linearly over the first 5% of the 40 steps (2 steps): half, then full; the step's
    # coefficient goes into the loss (forward's coef), the config keeps the requested one
    assert run.sae.cfg.l1 == 0.4
    out_half, out_full = run.sae(sample[:500], coef=0.2), run.sae(sample[:500])
    assert float(out_full.losses["sparsity"].detach()) == pytest.approx(
        2 * float(out_half.losses["sparsity"].detach())
    )
    assert l1_factor(0, run.cfg) == 0.5 and l1_factor(1, run.cfg) == 1.0 and l1_factor(30, run.cfg) == 1.0


def test_dead_latents_are_reset_with_cleared_moments_but_not_in_the_final_20_percent(store, tmp_path):
    run, s, sample = _run(store, tmp_path, dead_window=1000)  # 40 steps of 500; dead after 2 silent steps
    auto = torch.autocast("cpu", enabled=False)
    with torch.no_grad():
        run.sae.log_threshold[:3] = math.log(1e6)  # latents 0-2 can never fire
    run.train_step(sample[:500], auto)
    assert (run.sae.log_threshold[:3] == math.log(1e6)).all()  # 500 silent tokens: not dead yet
    run.train_step(sample[500:1000], auto)
    # after step 1, 1000 silent tokens: reset to theta_0, b_gate 0, Adam moments at 0
    assert torch.allclose(run.sae.log_threshold[:3].exp(), torch.full((3,), 1e-3))
    state = run.opt.state[run.sae.log_threshold]
    assert (state["exp_avg_sq"][:3] == 0).all() and (state["exp_avg_sq"][3:] != 0).any()
    assert (run.sae.b_gate[:3] == 0).all()
    # in the final 20% (steps >= 32) no reset happens, however long a latent has been silent
    run.step = 33
    with torch.no_grad():
        run.sae.log_threshold[:3] = math.log(1e6)
    run.sae.tokens_since_fired[:3] = 10**6
    run.train_step(sample[:500], auto)
    assert (run.sae.log_threshold[:3] == math.log(1e6)).all()


def _reset_after_two_steps(store, tmp_path, mode):
    """A run under ``--reset-mode mode`` whose latents 0-2 can never fire, trained two steps of 500
    tokens with a 1,000-token dead window, so they are reset after the second update: (the run, the
    second batch, the SAE before that step, that step's result)."""
    run, _, sample = _run(store, tmp_path / mode, dead_window=1000, reset_mode=mode)
    with torch.no_grad():
        run.sae.log_threshold[:3] = math.log(1e6)
    auto = torch.autocast("cpu", enabled=False)
    run.train_step(sample[:500], auto)
    x = sample[500:1000]
    before = copy.deepcopy(run.sae)
    return run, x, before, run.train_step(x, auto)


def test_residual_resets_point_dead_latents_at_the_batchs_worst_tokens(store, tmp_path, monkeypatch):
    """--reset-mode residual: the latents reset at a step take the directions of that batch's
    worst-reconstructed tokens (x - x_hat before the update), with their W_dec/W_enc moments cleared;
    every other parameter moves exactly as under our reconstruction's threshold-only reset."""
    plain = _reset_after_two_steps(store, tmp_path, "threshold")[0]
    moved, x, before, _ = _reset_after_two_steps(store, tmp_path, "residual")
    with torch.no_grad():
        residual = x - before(x).x_hat
    worst = residual.pow(2).sum(1).topk(3).indices
    dirs = residual[worst] / residual[worst].norm(dim=1, keepdim=True)
    assert torch.allclose(moved.sae.W_dec[:3], dirs, atol=1e-6)
    assert torch.allclose(moved.sae.W_enc[:, :3], dirs.T, atol=1e-6)
    assert not torch.allclose(plain.sae.W_dec[:3], dirs, atol=1e-2)  # the paper's reset keeps the old rows
    assert torch.equal(moved.sae.W_dec[3:], plain.sae.W_dec[3:])
    assert torch.equal(moved.sae.log_threshold[3:], plain.sae.log_threshold[3:])
    assert torch.allclose(plain.sae.log_threshold[:3].exp(), torch.full((3,), 1e-3))  # the paper's: theta_0
    # pointed: the median of the thresholds before the reset (latents 0-2 still at log 1e6: closed
    # gates give log theta no gradient)
    before = torch.cat([torch.full((3,), math.log(1e6)), plain.sae.log_threshold[3:].detach()])
    assert (moved.sae.log_threshold[:3] == before.median()).all()
    for name, at in (("W_dec", (slice(0, 3),)), ("W_enc", (slice(None), slice(0, 3)))):
        state = moved.opt.state[dict(moved.sae.named_parameters())[name]]
        assert (state["exp_avg_sq"][at] == 0).all() and (state["exp_avg_sq"] != 0).any(), name
    # torchrun would point each process's latents at its own tokens: refused before any work
    world = type("W", (OneProcess,), {"active": True, "size": 2})()
    monkeypatch.setattr("sagsae_cli.train.init_world", lambda dev: world)
    cfg = TrainConfig(store=str(store), width=24, tokens=20_000, batch=500, reset_mode="residual")
    with pytest.raises(SagsaeError, match="one process only"):
        train([cfg], tmp_path / "tr", quiet=True)
    assert not (tmp_path / "tr").exists()


def test_quantile_resets_reopen_dead_latents_at_the_average_firing_count(store, tmp_path, monkeypatch):
    """--reset-mode quantile: a latent reset at a step keeps its direction and gets, as threshold, the
    midpoint of the k-th and (k + 1)-th largest |u_i| of that batch under the updated encoder, k = the
    batch's active count over the width (rounded), so it fires on k of those tokens; everything else
    moves exactly as under the paper's theta_0 reset."""
    plain, _, _, plain_out = _reset_after_two_steps(store, tmp_path, "threshold")
    reopened, x, _, out = _reset_after_two_steps(store, tmp_path, "quantile")
    k = round(float(out["l0"]) * 500 / 24)
    assert k >= 1
    with torch.no_grad():
        u = ((x - reopened.sae.b_dec) @ reopened.sae.W_enc)[:, :3].abs()
    ranked = [sorted(col, reverse=True) for col in u.T.tolist()]
    expected = torch.tensor([(col[k - 1] + col[k]) / 2 for col in ranked])
    assert torch.allclose(reopened.sae.log_threshold[:3].exp(), expected, rtol=1e-5)
    assert torch.allclose(plain.sae.log_threshold[:3].exp(), torch.full((3,), 1e-3))
    with torch.no_grad():
        fires = (reopened.sae.encode(x)[:, :3] != 0).sum(0)
    assert fires.tolist() == [k] * 3  # its k best tokens (the sweep's average count), not all 500
    for name, p in plain.sae.named_parameters():
        q = dict(reopened.sae.named_parameters())[name]
        if name == "log_threshold":
            assert torch.equal(q[3:], p[3:])
        else:
            assert torch.equal(q, p), name
    assert float(plain_out["l0"]) == float(out["l0"])
    # torchrun would reopen each process's latents on its own tokens: refused before any work
    world = type("W", (OneProcess,), {"active": True, "size": 2})()
    monkeypatch.setattr("sagsae_cli.train.init_world", lambda dev: world)
    cfg = TrainConfig(store=str(store), width=24, tokens=20_000, batch=500, reset_mode="quantile")
    with pytest.raises(SagsaeError, match="quantile runs in one process only"):
        train([cfg], tmp_path / "tr", quiet=True)


def test_without_an_lr_decay_resets_stop_one_dead_window_before_the_end(store, tmp_path):
    """--lr-decay 0 leaves no final phase without resets: they now stop one dead window before the end
    (40 steps of 500, a window of 2,000 tokens = 4 steps: the last reset at step 35), so a latent reset
    at the last step cannot end the run dense."""
    run, s, sample = _run(store, tmp_path, dead_window=2000, decay_frac=0.0)
    assert run.cfg.reset_until == 36
    auto = torch.autocast("cpu", enabled=False)
    for step, resets in ((35, True), (36, False), (39, False)):
        run.step = step
        with torch.no_grad():
            run.sae.log_threshold[:3] = math.log(1e6)
        run.sae.tokens_since_fired[:3] = 10**6
        run.train_step(sample[:500], auto)
        assert bool((run.sae.log_threshold[:3] < 0).all()) == resets, step  # reset: back to about log(1e-3)
    # with the default decay the decay still decides (20% of 40 steps: no reset from step 32 on)
    run2, _, _ = _run(store, tmp_path / "b", dead_window=2000)
    assert run2.cfg.reset_until == 32
    # a shorter window still leaves the final 10% free of resets (a 1-step window: from step 36 on), a
    # longer one its own length (16 steps: from step 24 on)
    for window, until in ((500, 36), (8000, 24)):
        cfg = TrainConfig(
            store=str(store), width=24, tokens=20_000, batch=500, dead_window=window, decay_frac=0.0
        )
        assert cfg.reset_until == until, window


def test_non_finite_steps_are_found_later_without_a_sync_and_named_exactly(store, tmp_path):
    """The step reads nothing back from the device: a non-finite loss is remembered (its step, its
    value, whether the batch held NaN) and raised by check_finite(), which every log, snapshot and
    checkpoint calls first."""
    from sagsae_cli.errors import SagsaeError

    run, s, sample = _run(store, tmp_path)
    auto = torch.autocast("cpu", enabled=False)
    run.train_step(sample[:500], auto)
    run.check_finite()  # nothing wrong yet
    bad = sample[500:1000].clone()
    bad[7, 3] = float("nan")
    run.train_step(bad, auto)  # step 1: no exception here
    run.train_step(sample[:500], auto)  # step 2 (parameters are NaN by now: also non-finite)
    with pytest.raises(SagsaeError, match=r"NaN or inf activations \(in the batch of step 1\)"):
        run.check_finite()
    with pytest.raises(SagsaeError, match="NaN or inf activations"):
        run.save_checkpoint()
    assert not run.ckpt.exists()
    run2, _, _ = _run(store, tmp_path / "b", lr=1e30)  # finite data, diverging loss
    for i in range(6):
        run2.train_step(sample[500 * i : 500 * (i + 1)], auto)
    with pytest.raises(SagsaeError, match=r"the loss is (nan|inf|-inf) at step [1-5]: no checkpoint"):
        run2.check_finite()


def _adam_by_hand(p, g, m, v, step, lr, b1, b2, eps=1e-8):
    """Adam's update written out (Kingma & Ba, with PyTorch's bias corrections); returns p, m, v."""
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    p = p - lr / (1 - b1**step) * m / ((v / (1 - b2**step)).sqrt() + eps)
    return p, m, v


@pytest.mark.parametrize("beta1", [0.0, 0.9])
def test_trainer_adam_is_adam_with_the_threshold_multiple_and_takes_an_old_loop_checkpoint(beta1):
    """make_optimizer (the fused kernel) against Adam by hand, per parameter group: 3 steps on fixed
    gradients. Then a state saved by PyTorch's per-tensor loop (what checkpoints before the fused
    kernel hold) loads into it and continues the same trajectory."""
    torch.manual_seed(0)
    sae = build_sae("sa-gsae", SAEConfig(architecture="", d_in=6, d_sae=10, l1=0.2))
    grads = [{n: torch.randn_like(p) for n, p in sae.named_parameters()} for _ in range(4)]
    lr, mult = 1e-2, 10.0
    opt = make_optimizer(sae, lr, mult, (beta1, 0.999))
    assert opt.defaults["fused"] is True
    want = {
        n: (p.detach().clone(), torch.zeros_like(p), torch.zeros_like(p)) for n, p in sae.named_parameters()
    }
    for t in range(1, 4):
        for n, p in sae.named_parameters():
            p.grad = grads[t - 1][n].clone()
            rate = lr * (mult if n == "log_threshold" else 1.0)
            want[n] = _adam_by_hand(*want[n][:1], grads[t - 1][n], *want[n][1:], t, rate, beta1, 0.999)
        opt.step()
    for n, p in sae.named_parameters():
        assert torch.allclose(p.detach(), want[n][0], rtol=1e-5, atol=1e-7), n
    # a checkpoint from before the fused kernel: the same 3 steps through PyTorch's default Adam; its
    # state, loaded into make_optimizer's, continues the same trajectory (4th step by hand)
    old = build_sae("sa-gsae", SAEConfig(architecture="", d_in=6, d_sae=10, l1=0.2))
    old.load_state_dict(sae.state_dict())  # the same weights (the fused run's, equal to rounding)
    loop = torch.optim.Adam(old.param_groups(lr, mult), betas=(beta1, 0.999))
    for t in range(3):
        for n, p in old.named_parameters():
            p.grad = grads[t][n].clone()
        loop.step()  # moments only matter here: the weights are reset below
    old.load_state_dict(sae.state_dict())
    resumed = make_optimizer(old, lr, mult, (beta1, 0.999))
    resumed.load_state_dict(copy.deepcopy(loop.state_dict()))
    assert not any(g["fused"] for g in resumed.param_groups)  # it resumes on the loop it was saved with
    for n, p in old.named_parameters():
        p.grad = grads[3][n].clone()
    resumed.step()
    for n, p in old.named_parameters():
        rate = lr * (mult if n == "log_threshold" else 1.0)
        want_p = _adam_by_hand(*want[n][:1], grads[3][n], *want[n][1:], 4, rate, beta1, 0.999)[0]
        assert torch.allclose(p.detach(), want_p, rtol=1e-5, atol=1e-7), n


def test_data_driven_start_opens_at_the_requested_l0():
    """On a known distribution (Gaussian), thresholds from the (1 - l0/H) quantile of |u| give an
    initial L0 near l0, where theta_0 = 1e-3 opens nearly every gate."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8192, 32, generator=g)
    for target in (4.0, 16.0):
        sae = build_sae("sa-gsae", SAEConfig(architecture="", d_in=32, d_sae=128), seed=0)
        sae.init_b_dec(x)
        assert l0(sae.encode(x)) > 100  # the paper's start: dense
        sae.init_from_data(x[:4096], target)
        fresh = torch.randn(8192, 32, generator=g)  # held-out tokens of the same distribution
        # a gate opens on |u| > theta; the magnitude path halves that (its sign must agree)
        assert 0.5 * target * 0.8 <= l0(sae.encode(fresh)) <= target * 1.1


def test_snapshots_are_evenly_spaced_and_loadable(store, tmp_path):
    cfg = TrainConfig(store=str(store), width=24, tokens=20_000, batch=500, snapshots=4, log_every=5)
    (run,) = train([cfg], tmp_path, quiet=True)
    snaps = snapshot_dirs(run)
    # 40 steps, 4 snapshots: after steps 8, 16, 24, 32 (x 500 tokens)
    assert [snapshot_tokens(p) for p in snaps] == [4000, 8000, 12000, 16000]
    assert all((p / "cfg.json").exists() and (p / "sae_weights.safetensors").exists() for p in snaps)


def test_topk_aux_loss_value():
    """auxK = coef * ||e - e_hat||^2 / ||e||^2, e_hat from the aux_k largest dead pre-activations
    (normalised by the residual's energy, as Gao et al. do), on a hand-made example."""
    cfg = SAEConfig(architecture="", d_in=3, d_sae=4, k=1, settings={"aux_k": 1, "aux_k_coef": 0.5})
    sae = build_sae("topk", cfg, seed=0)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(3, 4))
        sae.W_dec.copy_(torch.eye(4, 3))
        sae.b_dec.zero_()
        sae.b_enc.zero_()
    sae.tokens_since_fired[2] = 10**9  # latent 2 is dead
    x = torch.tensor([[3.0, 1.0, 2.0]])
    out = sae(x)
    # live top-1: latent 0 (3.0) -> x_hat = (3, 0, 0); residual e = (0, 1, 2); the dead latent 2's
    # pre-activation is 2 -> e_hat = (0, 0, 2); ||e - e_hat||^2 = 1 and ||e||^2 = 5
    assert torch.allclose(out.x_hat, torch.tensor([[3.0, 0.0, 0.0]]))
    assert float(out.losses["aux"].detach()) == pytest.approx(0.5 * 1.0 / 5.0)


def test_bf16_autocast_matches_fp32_within_bf16_precision():
    sae = build_sae("sa-gsae", SAEConfig(architecture="", d_in=64, d_sae=256, l1=0.3), seed=0)
    x = torch.randn(512, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        sae.log_threshold.fill_(math.log(0.5))
        ref = sae(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = sae(x)
    rel = (low.x_hat.float() - ref.x_hat).norm() / ref.x_hat.norm()
    assert 0 < rel < 0.05  # > 0: the GEMMs really ran in bfloat16
    agree = ((low.f != 0) == (ref.f != 0)).float().mean()
    assert agree > 0.97  # gates flip only for pre-activations within bf16 rounding of theta
    for k in ref.losses:
        assert float(low.losses[k]) == pytest.approx(float(ref.losses[k]), rel=0.05)


# --- golden end-to-end ---------------------------------------------------------------------------
# Fixed seeds, a tiny synthetic store, CPU fp32: the held-out metrics of each architecture. A change
# that moves any of them by more than 1e-4 is a change in numbers and must be deliberate (update
# these values in the same commit, and say why in CHANGELOG.md).
GOLDEN = {
    "sa-gsae": {"r2": 0.899068, "l0": 21.80875, "dead_frac": 0.0},
    "gated": {"r2": 0.692358, "l0": 7.40525, "dead_frac": 0.0},
    "relu": {"r2": 0.542357, "l0": 7.26025, "dead_frac": 0.0},
    "topk": {"r2": 0.48214, "l0": 3.0, "dead_frac": 0.0},
    "jumprelu": {"r2": 0.734965, "l0": 13.09525, "dead_frac": 0.0},
}


def test_golden_end_to_end(store, tmp_path):
    run_cli("train", "--store", store, "--out", tmp_path / "runs", "--variant", ",".join(GOLDEN), "--width", 24,
            "--l1", "0.3", "--k", 3, "--tokens", "30k", "--batch", 500, "--lr", 2e-3, "--snapshots", 0,
            "--quiet", check=0)  # one pass feeds all five; each run's numbers are its own  # fmt: skip
    run_cli("eval", *sorted((tmp_path / "runs").iterdir()), "--results", tmp_path / "res", "--quiet", check=0)
    from sagsae_cli.evaluate import read_table

    table = read_table(tmp_path / "res").set_index("variant")
    got = {v: {m: round(float(table.loc[v, m]), 6) for m in ("r2", "l0", "dead_frac")} for v in GOLDEN}
    for v, metrics in GOLDEN.items():
        for m, want in metrics.items():
            assert got[v][m] == pytest.approx(want, abs=1e-4), (v, m, got[v][m], "golden values moved:", got)


def test_budget_aware_batch_and_lr():
    from sagsae_cli.recipe import AUTO_LR, MAX_BATCH, MIN_BATCH, TARGET_STEPS, auto_batch, resolve_recipe

    for tokens in (10**4, 150_000, 2 * 10**6, 4 * 10**6, 10**7, 5 * 10**7, 10**9):
        b = auto_batch(tokens)
        assert b & (b - 1) == 0 and MIN_BATCH <= b <= MAX_BATCH  # a power of two in range
        if MIN_BATCH < b < MAX_BATCH:  # about TARGET_STEPS steps: between 1x and 2x of it
            assert TARGET_STEPS <= tokens / b < 2 * TARGET_STEPS
    assert auto_batch(150_000) == 128 and auto_batch(4 * 10**6) == 256 and auto_batch(10**9) == 4096
    auto = resolve_recipe("sa-gsae", 4 * 10**6)
    assert (auto["batch"], auto["lr"]) == (256, AUTO_LR)
    given = resolve_recipe("sa-gsae", 4 * 10**6, {"batch": 512, "lr": 1e-3})
    assert (given["batch"], given["lr"]) == (512, 1e-3)


def test_short_sa_gsae_runs_are_warned(store, tmp_path):
    p = run_cli(
        "train", "--store", store, "--out", tmp_path, "--width", 8, "--tokens", "5k", "--batch", 500, check=0
    )
    assert "warning" in p.stderr + p.stdout and "10 optimizer steps" in p.stderr + p.stdout
    p = run_cli("train", "--store", store, "--out", tmp_path, "--variant", "gated", "--width", 8, "--tokens", "5k",
                "--batch", 500, check=0)  # fmt: skip
    assert "warning" not in p.stderr + p.stdout  # the Gated SAE is not the slow one


def test_threads_on_busy_cores_are_warned():
    from sagsae_cli.distributed import _busy_cores, contention_warning

    assert contention_warning(threads=2, cores=2, busy=0.1) is None  # an idle machine: the threads fit
    assert contention_warning(threads=1, cores=2, busy=2.0) is None  # one thread never waits on another
    assert contention_warning(threads=4, cores=16, busy=8.0) is None
    msg = contention_warning(threads=2, cores=2, busy=1.0)  # one other busy process: a thread waits
    assert msg and "OMP_NUM_THREADS=1" in msg and "1.0 of this run's 2 core(s)" in msg and "2 threads" in msg
    assert contention_warning(threads=16, cores=16, busy=2.0)
    sampled = _busy_cores(0.05)  # this machine, now: a share of each usable core, whatever else runs
    if sampled is not None:
        busy, cores = sampled
        assert cores >= 1 and -1e-9 <= busy <= cores + 1e-9


def test_harvest_on_the_cpu_warns_of_busy_cores_unless_quiet(monkeypatch, capsys):
    """harvest runs the model's forward with torch's threads as train does: it prints the same
    contention warning (before it loads the model), and not under --quiet."""
    import sagsae_cli.harvest as hv

    class Loaded(Exception):
        pass

    def no_model(*a, **k):
        raise Loaded

    monkeypatch.setattr(hv, "load_model", no_model)
    monkeypatch.setattr(  # the sampler, wherever harvest reaches it from
        "sagsae_cli.distributed.machine_contention",
        lambda: "warning: other processes keep 1.0 of 2 core(s) busy",
    )
    cfg = hv.HarvestConfig(device="cpu")
    with pytest.raises(Loaded):
        hv.harvest(cfg, "unused-out")
    assert "other processes keep 1.0 of 2 core(s) busy" in capsys.readouterr().err
    with pytest.raises(Loaded):
        hv.harvest(cfg, "unused-out", quiet=True)
    assert "core(s) busy" not in capsys.readouterr().err
