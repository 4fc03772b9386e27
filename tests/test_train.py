import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from conftest import run_cli
from safetensors.torch import load_file

from sagsae_cli.errors import SagsaeError
from sagsae_cli.evaluate import evaluate_run
from sagsae_cli.recipe import TrainConfig, lr_factor
from sagsae_cli.store import open_store
from sagsae_cli.train import train


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    path = tmp_path_factory.mktemp("synth") / "A"
    run_cli("harvest", "--source", "synthetic", "--protocol", "A", "--out", path, "--tokens", 400_000,
            "--eval-tokens", 20_000, "--quiet", check=0)  # fmt: skip
    return path


def evaluate(run_dir, store):
    """The eval table's numbers for one run (the same code path as `sagsae eval`)."""
    row, _ = evaluate_run(run_dir, 20_000)
    assert row["eval_tokens"] == 20_000 and row["model"] == store.meta["model"]
    return {"r2": row["r2"], "l0": row["l0"], "dead": row["dead_frac"], "recovery": row["axis_recovery"],
            "per_axis": row["latents_per_axis"]}  # fmt: skip


def test_quality_gate_protocol_a(synth, tmp_path):
    """docs/METHOD.md §4 prototype: SA-GSAE at width 48 recovers 48 antipodal axes with one latent each;
    the Gated SAE needs width 96 (two latents per axis); without the aux loss SA-GSAE collapses."""
    common = dict(
        store=str(synth), tokens=2_000_000, batch=1024, lr=2e-3, log_every=100, checkpoint_every=10**6
    )
    cfgs = [
        TrainConfig(variant="sa-gsae", width=48, l1=0.4, **common),
        TrainConfig(variant="gated", width=96, l1=0.4, **common),
        TrainConfig(variant="no-aux", width=48, l1=0.4, **common),
    ]
    dirs = train(cfgs, tmp_path, quiet=True)
    store = open_store(synth)
    sa, gated, no_aux = (evaluate(d, store) for d in dirs)
    assert sa["r2"] >= 0.9 and gated["r2"] >= 0.9, (sa, gated)
    assert sa["recovery"] >= 0.9, sa
    assert 0.85 <= sa["per_axis"] <= 1.15, sa
    assert gated["per_axis"] >= 1.5, gated
    assert sa["dead"] <= gated["dead"] + 1e-9
    assert no_aux["r2"] < sa["r2"] - 0.5 or no_aux["dead"] > 0.5, no_aux


def _train_args(store, out, **over):
    args = {"--store": store, "--out": out, "--variant": "sa-gsae,gated", "--width": 32, "--l1": "0.3",
            "--tokens": 200_000, "--batch": 512, "--lr": 1e-3, "--checkpoint-every": 40, "--log-every": 10}  # fmt: skip
    args.update(over)
    return ["train", "--quiet", *[str(v) for kv in args.items() for v in kv]]


def test_sigkill_and_resume_is_bit_identical(synth, tmp_path):
    run_cli(*_train_args(synth, tmp_path / "ref"), check=0)
    out = tmp_path / "killed"
    # die right after the 3rd checkpoint write: sa-gsae has saved step 80, gated only step 40
    env = {**os.environ, "SAGSAE_FAULT": "checkpoint:3"}
    p = subprocess.run([sys.executable, "-m", "sagsae_cli", *_train_args(synth, out)], env=env, timeout=300)
    assert p.returncode == -signal.SIGKILL
    ckpt = out / "sa-gsae-w32-l1_0.3-s0" / "checkpoints" / "last.pt"
    assert torch.load(ckpt, weights_only=False)["step"] == 80
    assert (
        torch.load(out / "gated-w32-l1_0.3-s0" / "checkpoints" / "last.pt", weights_only=False)["step"] == 40
    )
    assert ckpt.exists() and not (out / "sa-gsae-w32-l1_0.3-s0" / "sae_weights.safetensors").exists()
    # the resume checkpoints on another cadence: bookkeeping, not a different config, and no other result
    run_cli(*_train_args(synth, out, **{"--checkpoint-every": 30}), check=0)
    for run in ("sa-gsae-w32-l1_0.3-s0", "gated-w32-l1_0.3-s0"):
        a = load_file(str(tmp_path / "ref" / run / "sae_weights.safetensors"))
        b = load_file(str(out / run / "sae_weights.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), run
        import pandas as pd

        ha = pd.read_parquet(tmp_path / "ref" / run / "history.parquet")
        hb = pd.read_parquet(out / run / "history.parquet")
        pd.testing.assert_frame_equal(ha, hb)
    # a rerun of a finished command does nothing and changes nothing
    before = (out / "sa-gsae-w32-l1_0.3-s0" / "sae_weights.safetensors").stat().st_mtime_ns
    run_cli(*_train_args(synth, out), check=0)
    assert (out / "sa-gsae-w32-l1_0.3-s0" / "sae_weights.safetensors").stat().st_mtime_ns == before
    # ... also when the store is named by another path to the same directory, or history rows are
    # asked for at another interval
    run_cli(*_train_args(f"{synth.parent}/../{synth.parent.name}/{synth.name}", out), check=0)
    run_cli(*_train_args(synth, out, **{"--log-every": 7}), check=0)
    assert (out / "sa-gsae-w32-l1_0.3-s0" / "sae_weights.safetensors").stat().st_mtime_ns == before


def test_sigterm_checkpoints_and_says_how_to_resume(synth, tmp_path):
    env = {**os.environ, "SAGSAE_FAULT": "checkpoint:2:term"}  # SIGTERM to itself after a checkpoint
    p = subprocess.Popen([sys.executable, "-m", "sagsae_cli", *_train_args(synth, tmp_path, **{"--tokens": "5M"})],
                         stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2 and "rerun the same command to resume" in err


@pytest.mark.parametrize(
    "over, message",
    [
        ({"--variant": "fancy"}, "unknown variant 'fancy'"),
        ({"--width": -3}, "--width must be positive"),
        ({"--l1": "-0.1"}, "--l1 must be a finite number >= 0"),
        ({"--store": "/nonexistent/store"}, "no activation store"),
        ({"--aux-coef": "nan"}, "--aux-coef must be a finite number >= 0"),
    ],
)
def test_bad_input_is_one_line_exit_2(synth, tmp_path, over, message):
    p = run_cli(*_train_args(synth, tmp_path, **over), check=2)
    assert message in p.stderr and "Traceback" not in p.stderr


def test_other_config_in_out_dir_refused_without_force(synth, tmp_path):
    run_cli(*_train_args(synth, tmp_path, **{"--tokens": 5000, "--variant": "gated"}), check=0)
    p = run_cli(*_train_args(synth, tmp_path, **{"--tokens": 6000, "--variant": "gated"}), check=2)
    assert "different config" in p.stderr and "--force" in p.stderr
    run_cli(*_train_args(synth, tmp_path, **{"--tokens": 6000, "--variant": "gated"}), "--force", check=0)


def test_run_made_before_a_setting_existed_still_resumes(synth, tmp_path):
    # a train_cfg.json written before --init-decoder existed lacks the key: it reads as the default
    args = _train_args(synth, tmp_path, **{"--tokens": 5000, "--variant": "gated"})
    run_cli(*args, check=0)
    record = tmp_path / "gated-w32-l1_0.3-s0" / "train_cfg.json"
    cfg = json.loads(record.read_text())
    assert cfg.pop("init_decoder") == "random"
    record.write_text(json.dumps(cfg))
    weights = (tmp_path / "gated-w32-l1_0.3-s0" / "sae_weights.safetensors").read_bytes()
    run_cli(*args, check=0)  # finished: skipped, not refused
    assert (tmp_path / "gated-w32-l1_0.3-s0" / "sae_weights.safetensors").read_bytes() == weights
    p = run_cli(*args, "--init-decoder", "data", check=2)  # a real difference is still refused
    assert "init_decoder" in p.stderr and "different config" in p.stderr


def test_init_decoder_from_data(synth, tmp_path):
    from sagsae_cli.sae import SAEConfig, build_sae

    x = torch.randn(100, 12, generator=torch.Generator().manual_seed(0)) + 3.0
    for n in (40, 250):  # fewer latents than rows, and more (rows are reused)
        sae = build_sae("sa-gsae", SAEConfig(architecture="", d_in=12, d_sae=n, l1=0.3))
        sae.init_b_dec(x)
        sae.init_decoder_from_data(x, torch.Generator().manual_seed(1))
        centred = x - x.mean(0)
        unit = centred / centred.norm(dim=1, keepdim=True)
        assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(n), atol=1e-6)
        cos = sae.W_dec @ unit.T  # every decoder row is one of the centred data rows
        assert torch.allclose(cos.max(dim=1).values, torch.ones(n), atol=1e-5)
        assert torch.equal(sae.W_enc, sae.W_dec.T)
        if n == 40:
            assert len(set(cos.argmax(dim=1).tolist())) == 40  # without replacement while rows last
    run_cli(*_train_args(synth, tmp_path, **{"--tokens": 5000}), "--init-decoder", "data", check=0)
    p = run_cli(*_train_args(synth, tmp_path / "b"), "--init-decoder", "pca", check=2)
    assert "--init-decoder is random or data" in p.stderr and "Traceback" not in p.stderr


def test_aux_coef_is_the_auxiliary_weight(synth, tmp_path):
    """--aux-coef is alpha in both gated architectures' loss; the no-aux variant keeps alpha = 0."""
    from dataclasses import replace

    from sagsae_cli.sae import load_sae

    args = _train_args(synth, tmp_path, **{"--tokens": 3000, "--variant": "sa-gsae,gated,no-aux"})
    run_cli(*args, "--aux-coef", "0.25", check=0)
    x = open_store(synth).read("eval", 0, 256, normalise=True)
    for run, alpha in (("sa-gsae", 0.25), ("gated", 0.25), ("no-aux", 0.0)):
        sae, _ = load_sae(tmp_path / f"{run}-w32-l1_0.3-s0")
        assert sae.cfg.aux_coef == alpha, run
        aux = sae.train()(x).losses.get("aux", torch.tensor(0.0))  # alpha 0: no term at all
        sae.cfg = replace(
            sae.cfg, settings={**sae.cfg.settings, "aux_coef": 1.0}
        )  # the same SAE and batch at alpha 1: the term scales by alpha
        unit = sae(x).losses["aux"]
        assert torch.allclose(aux, alpha * unit) and unit > 0, run
    p = run_cli(*args, "--aux-coef", "0.5", check=2)  # another alpha is another config
    assert "aux_coef" in p.stderr and "different config" in p.stderr


def test_threshold_lr_mult_auto_is_budget_aware(synth, tmp_path):
    """auto: steps x threshold lr = 100, the multiple within [1, 10] (hand-computed cases); the resolved
    multiple is the run's config: the optimizer uses it, and a rerun at another is refused."""
    assert TrainConfig(tokens=2_000_000, batch=128, lr=2e-3).threshold_lr_mult == pytest.approx(100 / 31.25)
    # the quickstart's 1,172 steps: 42.7, capped at our reconstruction's 10
    assert TrainConfig(tokens=150_000, batch=128, lr=2e-3).threshold_lr_mult == 10.0
    assert TrainConfig(tokens=10**9, batch=1024, lr=2e-3).threshold_lr_mult == 1.0  # 976,563 steps: 0.05 -> 1
    assert TrainConfig(tokens=80_000, batch=1000, threshold_lr_mult=3.0).threshold_lr_mult == 3.0
    args = _train_args(synth, tmp_path, **{"--tokens": 3000, "--variant": "sa-gsae"})
    run_cli(*args, "--threshold-lr-mult", "3", check=0)
    run = tmp_path / "sa-gsae-w32-l1_0.3-s0"
    assert json.loads((run / "train_cfg.json").read_text())["threshold_lr_mult"] == 3.0
    groups = torch.load(run / "checkpoints" / "last.pt", weights_only=False)["opt"]["param_groups"]
    assert [g["lr_mult"] for g in groups] == [1.0, 3.0]
    p = run_cli(*args, check=2)  # auto is 10 for these 6 steps: another config
    assert "threshold_lr_mult" in p.stderr and "different config" in p.stderr
    # the Gated SAE has no threshold: its run at 3x is reused at 10x (it would train the same), not refused
    gargs = _train_args(synth, tmp_path, **{"--tokens": 3000, "--variant": "gated"})
    run_cli(*gargs, "--threshold-lr-mult", "3", check=0)
    gated = tmp_path / "gated-w32-l1_0.3-s0"
    before = (gated / "sae_weights.safetensors").stat().st_mtime_ns
    p = run_cli(*gargs, "--threshold-lr-mult", "10", check=0)
    assert "different config" not in p.stderr
    assert (gated / "sae_weights.safetensors").stat().st_mtime_ns == before  # done already: not retrained
    # ... nor is it ever reset, so the reset mode does not make it another run either; SA-GSAE's does
    p = run_cli(*gargs, "--reset-mode", "residual", check=0)
    assert (gated / "sae_weights.safetensors").stat().st_mtime_ns == before
    p = run_cli(*args, "--threshold-lr-mult", "3", "--reset-mode", "residual", check=2)
    assert "reset_mode" in p.stderr and "different config" in p.stderr


def test_dead_window_auto_and_runs_recorded_before_it(synth, tmp_path):
    """--dead-window auto: 1.25% of the run within [25k, 10% of the run], at most 10M, for variants that
    reset dead latents; the others keep 10% (hand-computed cases). Derived again when a sweep replaces
    the variant or the budget. A record from before (0, or no key) reads as 10%: the same run where the
    rules agree, another config (named, with both values) where they do not."""
    from dataclasses import asdict, replace
    from types import SimpleNamespace

    from sagsae_cli.run import _DEFAULTS, _identity
    from sagsae_cli.train import plan

    sa = TrainConfig(variant="sa-gsae", tokens=2_000_000, batch=128, lr=2e-3)
    assert sa.dead_window == 25_000 and sa.auto == {"dead_window": 25_000, "threshold_lr_mult": 3.2}
    assert TrainConfig(variant="sa-gsae", tokens=4_000_000, batch=256).dead_window == 50_000
    assert TrainConfig(variant="sa-gsae", tokens=150_000, batch=128).dead_window == 15_000  # 10% < 25k
    assert TrainConfig(variant="sa-gsae", tokens=10**9, batch=4096).dead_window == 10_000_000  # 12.5M -> 10M
    assert TrainConfig(variant="sa-gsae", tokens=1000, batch=512).dead_window == 512  # at least one batch
    for other in ("gated", "no-reset", "topk", "jumprelu"):
        assert TrainConfig(variant=other, tokens=2_000_000, batch=128, k=8).dead_window == 200_000, other
    assert TrainConfig(variant="sa-gsae", tokens=2_000_000, batch=128, dead_window=7_000).dead_window == 7_000
    # dataclasses.replace derives the auto settings again (it used to keep the first run's values)
    gated = replace(sa, variant="gated")
    assert gated.dead_window == 200_000
    short = replace(sa, tokens=150_000)
    assert (short.dead_window, short.threshold_lr_mult) == (15_000, 10.0)
    given = TrainConfig(
        variant="sa-gsae", tokens=2_000_000, batch=128, lr=2e-3, dead_window=7_000, threshold_lr_mult=3
    )
    assert given.auto == {} and replace(given, tokens=10**6).dead_window == 7_000
    # the Python API's defaults are the CLI's: every budget-derived setting auto (recipe.resolve_recipe)
    default = TrainConfig(tokens=4_000_000)
    assert (default.batch, default.lr) == (256, 2e-3) and set(default.auto) == {
        "batch",
        "lr",
        "threshold_lr_mult",
        "dead_window",
    }
    # a value of its own given to an auto setting by replace stays, through later replaces too
    pinned = replace(sa, dead_window=7_000)
    assert pinned.dead_window == 7_000 and pinned.auto == {"threshold_lr_mult": 3.2}
    longer = replace(pinned, tokens=4_000_000)
    assert (longer.dead_window, longer.threshold_lr_mult) == (7_000, 1.6)
    # what train prints before it starts: the windows of the runs that reset (Gated's 10% is not one)
    line = plan([SimpleNamespace(cfg=c) for c in (sa, gated, given)], sa)
    assert line.startswith("3 run(s): 15,625 steps of 128 tokens (2,000,000), lr 0.002"), line
    assert (
        "threshold lr 3x, 3.2x (auto)" in line
        and "after 7,000 silent tokens, 25,000 silent tokens (auto)" in line
    )
    assert "200,000" not in line
    # records of older versions
    mine = json.loads(json.dumps(asdict(sa)))
    for old in ({**mine, "dead_window": 0}, {k: v for k, v in mine.items() if k != "dead_window"}):
        theirs = _identity({**_DEFAULTS, **old})
        assert theirs["dead_window"] == 200_000 and _identity(mine)["dead_window"] == 25_000
    # how a setting was given is not the run (records written by 0.1.0 before 2026-12-03 list the auto names)
    assert _identity({**mine, "auto": []}) == _identity(mine) == _identity({**mine, "auto": ["x"]})
    # a small run recorded with 0 resumes (10% = the new rule there); the budget's 6 steps give 600 tokens
    args = _train_args(synth, tmp_path, **{"--tokens": 6000, "--variant": "sa-gsae"})
    run_cli(*args, check=0)
    run = tmp_path / "sa-gsae-w32-l1_0.3-s0"
    record = json.loads((run / "train_cfg.json").read_text())
    assert record["dead_window"] == 600 and record["auto"] == {"dead_window": 600, "threshold_lr_mult": 10.0}
    (run / "train_cfg.json").write_text(json.dumps({**record, "dead_window": 0}))
    weights = (run / "sae_weights.safetensors").read_bytes()
    run_cli(*args, check=0)  # finished: skipped
    assert (run / "sae_weights.safetensors").read_bytes() == weights
    p = run_cli(*args, "--dead-window", "100", check=2)
    assert "dead_window 600 there, 100 now" in p.stderr and "Traceback" not in p.stderr


def test_schedules():
    cfg = TrainConfig(tokens=100 * 4096, batch=4096, warmup_steps=1000)
    assert lr_factor(0, cfg) == pytest.approx(0.1)  # warm-up capped at 10% of a short run
    assert lr_factor(50, cfg) == 1.0
    assert lr_factor(90, cfg) == pytest.approx(0.5)
    assert lr_factor(99, cfg) == pytest.approx(0.05)


def test_sweep_configs_must_share_data(synth):
    with pytest.raises(SagsaeError, match="share"):
        train(
            [TrainConfig(store=str(synth), tokens=1000), TrainConfig(store=str(synth), tokens=2000)], "/tmp/x"
        )


def test_target_l0_controller_lands_near_the_target(synth, tmp_path):
    cfg = TrainConfig(variant="gated", width=96, l1=0.4, target_l0=4.0, store=str(synth), tokens=800_000,
                      batch=1024, lr=2e-3, log_every=20, checkpoint_every=10**6)  # fmt: skip
    (run,) = train([cfg], tmp_path, quiet=True)
    assert run.name == "gated-w96-l0_4-s0"
    import pandas as pd

    hist = pd.read_parquet(run / "history.parquet")
    assert hist["l0"].tail(5).mean() == pytest.approx(4.0, rel=0.15)
    assert hist["coef"].iloc[-1] < 0.4  # the controller lowered lambda from its starting value
    # cfg.json is the SAE as trained: l1 as train_cfg.json gave it, the adapted coefficient under its own key
    import json

    from sagsae_cli.sae import load_sae

    saved, given = (
        json.loads((run / "cfg.json").read_text()),
        json.loads((run / "train_cfg.json").read_text()),
    )
    assert saved["l1"] == given["l1"] == 0.4
    assert saved["l1_final"] == pytest.approx(hist["coef"].iloc[-1], rel=0.1) and saved["l1_final"] < 0.4
    assert load_sae(run)[0].cfg.l1 == saved["l1_final"]  # the coefficient its objective is measured at


def test_wandb_logging_through_the_wandb_api(synth, tmp_path):
    """A stand-in wandb module records the calls: one run per SAE, history rows logged, finished."""
    stub = tmp_path / "stub"
    stub.mkdir()
    (stub / "wandb.py").write_text(
        "import json, os\n"
        "class Run:\n"
        "    def __init__(self, **kw): self.kw = kw; self.rows = []\n"
        "    def log(self, row, step): self.rows.append(step)\n"
        "    def finish(self):\n"
        "        with open(os.environ['WANDB_STUB_OUT'], 'a') as f: f.write(json.dumps([self.kw['name'], self.rows]) + '\\n')\n"
        "def init(**kw): return Run(**kw)\n"
    )
    out = tmp_path / "calls.jsonl"
    env = {**os.environ, "PYTHONPATH": str(stub), "WANDB_STUB_OUT": str(out)}
    args = _train_args(synth, tmp_path / "runs", **{"--tokens": 5120, "--variant": "sa-gsae,gated"})
    p = subprocess.run([sys.executable, "-m", "sagsae_cli", *args, "--wandb", "proj"], env=env,
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    import json

    calls = dict(json.loads(line) for line in out.read_text().splitlines())
    assert set(calls) == {"sa-gsae-w32-l1_0.3-s0", "gated-w32-l1_0.3-s0"}
    assert calls["gated-w32-l1_0.3-s0"] == [10]  # 10 steps, logged every 10


def test_wandb_missing_is_a_clear_error(synth, tmp_path):
    stub = tmp_path / "stub"
    stub.mkdir()
    (stub / "wandb.py").write_text("raise ImportError('no wandb here')\n")
    env = {**os.environ, "PYTHONPATH": str(stub)}
    args = _train_args(synth, tmp_path / "runs", **{"--tokens": 5120})
    p = subprocess.run([sys.executable, "-m", "sagsae_cli", *args, "--wandb", "proj"], env=env,
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert p.returncode == 2 and "pip install wandb" in p.stderr and "Traceback" not in p.stderr


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(synth, tmp_path):
    args = _train_args(synth, tmp_path, **{"--variant": "gated", "--lr": "1e30", "--tokens": 20_000,
                                           "--checkpoint-every": 1})  # fmt: skip
    p = run_cli(*args, check=2)
    assert "loss is" in p.stderr and "at step" in p.stderr and "Traceback" not in p.stderr
    ckpt = torch.load(tmp_path / "gated-w32-l1_0.3-s0" / "checkpoints" / "last.pt", weights_only=False)
    assert all(torch.isfinite(v).all() for v in ckpt["sae"].values() if v.is_floating_point())
