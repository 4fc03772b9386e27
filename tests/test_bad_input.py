"""Bad input, by kind, across every subcommand: one line saying what is wrong and what to do, exit 2,
no traceback, and nothing existing damaged (README's promise). Interrupts and concurrency too."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_model, run_cli, run_inproc
from fsspec.spec import AbstractFileSystem
from safetensors.torch import load_file, save_file

from sagsae_cli.store import open_store
from sagsae_cli.train import RunLocks


def one_line_error(p, *needles):
    """Exit 2, exactly one `error:` line, no traceback, every needle in it."""
    err = p.stderr + p.stdout
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert p.returncode == 2, f"rc={p.returncode}\n{err[-3000:]}"
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A small synthetic store, one finished run, and its evaluation."""
    root = tmp_path_factory.mktemp("bad")
    run_cli("harvest", "--source", "synthetic", "--d", 16, "--n-axes", 12, "--tokens", "30k", "--eval-tokens", "3k",
            "--out", root / "store", "--quiet", check=0)  # fmt: skip
    run_cli("train", "--store", root / "store", "--out", root / "runs", "--width", 12, "--tokens", "6k",
            "--batch", 500, "--quiet", check=0)  # fmt: skip
    run = root / "runs" / "sa-gsae-w12-l1_0.4-s0"
    run_cli("eval", run, "--results", root / "res", "--quiet", check=0)
    return {"root": root, "store": root / "store", "run": run, "res": root / "res"}


def snapshot(path: Path) -> dict:
    """(relative path -> bytes) of every file under path: to check nothing was touched."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


TRAIN = ["train", "--width", 12, "--tokens", "6k", "--batch", 500, "--quiet"]


@pytest.mark.parametrize(
    "args, needles",
    [
        (["harvest", "--source", "synthetic", "--tokens", "1e400"], ["--tokens"]),
        (["harvest", "--source", "synthetic", "--eval-tokens", "-5"], ["--eval-tokens"]),
        (["harvest", "--source", "synthetic", "--max-norm-ratio", "-1"], ["--max-norm-ratio"]),
        (["harvest", "--source", "synthetic", "--n-axes", "0"], ["--n-axes"]),
        (["harvest", "--source", "synthetic", "--bogus", "1"], ["--bogus", "--help"]),
        (["harvest", "--source", "synthetic", "--tokens", "lots"], ["--tokens", "50M"]),
        ([*TRAIN, "--checkpoint-every", 0], ["--checkpoint-every"]),
        ([*TRAIN, "--log-every", 0], ["--log-every"]),
        ([*TRAIN, "--data-shards", -1], ["--data-shards"]),
        ([*TRAIN, "--target-l0", -3], ["--target-l0"]),
        ([*TRAIN, "--seeds", "1.5"], ["--seeds", "whole"]),
        ([*TRAIN, "--dead-window", "abc"], ["--dead-window"]),
        ([*TRAIN, "--batch", 10**6], ["--batch", "exceeds"]),
        ([*TRAIN, "--lr", "nan"], ["--lr"]),
        ([*TRAIN, "--threshold-lr-mult", "0"], ["--threshold-lr-mult", "auto"]),
        ([*TRAIN, "--threshold-lr-mult", "fast"], ["--threshold-lr-mult", "auto"]),
        ([*TRAIN, "--reset-mode", "resample"], ["--reset-mode", "threshold, residual, quantile"]),
        ([*TRAIN, "--l1-warmup", 2], ["--l1-warmup"]),
        (["eval", "RUN", "--eval-tokens", 0], ["--eval-tokens"]),
        (["eval", "RUN", "--bipolar-threshold", 2], ["--bipolar-threshold"]),
        (["eval", "RUN", "--results", "RES", "--force", "--device", "tpu9"], ["--device", "cpu"]),
        ([*TRAIN, "--device", "gpu"], ["--device", "cpu"]),
        (["compare", "--matched-l0", -1], ["--matched-l0"]),
        (["plot", "pareto", "--results", "EMPTY"], ["sagsae eval"]),
        (["plot", "ablation", "--results", "RES"], ["sagsae ablate"]),  # not `sagsae ablation`
    ],
)
def test_numbers_and_flags(base, tmp_path, args, needles, capsys):
    subs = {"RUN": base["run"], "EMPTY": tmp_path / "nothing", "RES": base["res"]}
    args = [subs.get(a, a) for a in args]
    if args[0] == "harvest":
        args += ["--out", tmp_path / "s"]
    if args[0] == "train":
        args += ["--store", base["store"], "--out", tmp_path / "runs"]
    before = snapshot(base["root"])
    one_line_error(run_inproc(*args, capsys=capsys), *needles)
    assert snapshot(base["root"]) == before


def test_outputs_that_cannot_be_written(base, tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("mine")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    cases = [
        (["harvest", "--source", "synthetic", "--tokens", "5k", "--out", a_file], [str(a_file)]),
        (["harvest", "--source", "synthetic", "--tokens", "5k", "--out", a_file / "sub"], []),
        ([*TRAIN, "--store", base["store"], "--out", a_file], ["--out"]),
        ([*TRAIN, "--store", base["store"], "--out", a_file / "sub"], []),
        (["eval", base["run"], "--results", a_file], ["--results"]),
        (["plot", "pareto", "--results", base["res"], "--out", a_file], []),
    ]
    if os.geteuid() != 0:  # root writes anywhere
        cases.append(([*TRAIN, "--store", base["store"], "--out", ro / "runs"], []))
    for args, needles in cases:
        one_line_error(run_inproc(*args, capsys=capsys), *needles)
    assert a_file.read_text() == "mine"


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_damaged_inputs(base, tmp_path, capsys):
    # a store with a deleted chunk file: refused, not read as zeros
    store = _copy(base["store"], tmp_path / "store")
    next((store / "train" / "acts" / "c").iterdir()).joinpath("0").unlink()
    one_line_error(
        run_inproc(*TRAIN, "--store", store, "--out", tmp_path / "r1", capsys=capsys), "chunk", "--force"
    )
    # a store array missing its metadata
    store2 = _copy(base["store"], tmp_path / "store2")
    (store2 / "train" / "acts" / "zarr.json").unlink()
    one_line_error(run_inproc(*TRAIN, "--store", store2, "--out", tmp_path / "r2", capsys=capsys), "damaged")
    # a truncated weights file, an unreadable train_cfg.json, NaN weights: eval refuses each
    for damage, needle in (("truncate", "no readable SAE"), ("cfg", "train_cfg.json"), ("nan", "NaN")):
        run = _copy(base["run"], tmp_path / damage / base["run"].name)
        w = run / "sae_weights.safetensors"
        if damage == "truncate":
            w.write_bytes(w.read_bytes()[:100])
        elif damage == "cfg":
            (run / "train_cfg.json").write_text("{not json")
        else:
            t = load_file(str(w))
            t["W_dec"][0, 0] = float("nan")
            save_file(t, str(w))
        one_line_error(run_inproc("eval", run, "--results", tmp_path / damage / "res", capsys=capsys), needle)
        assert not list((tmp_path / damage / "res" / "eval").glob("*.parquet"))
    # a binary file as --dataset
    binary = tmp_path / "corpus.txt"
    binary.write_bytes(bytes(range(256)) * 64)
    model = make_tiny_model("llama", tmp_path / "model")
    one_line_error(
        run_cli("harvest", "--model", model, "--dataset", binary, "--out", tmp_path / "s"), "not a text"
    )


def test_incomplete_store_refused_unless_allowed(base, tmp_path):
    out = tmp_path / "partial"
    env = {**os.environ, "SAGSAE_FAULT": "commit:1"}
    args = ["harvest", "--source", "synthetic", "--d", 16, "--tokens", "200k", "--out", out, "--quiet"]
    p = subprocess.run([sys.executable, "-m", "sagsae_cli", *map(str, args)], env=env)
    assert p.returncode == -signal.SIGKILL and not open_store(out).complete
    one_line_error(
        run_cli(*TRAIN, "--store", out, "--out", tmp_path / "r"), "incomplete", "--allow-incomplete"
    )
    run_cli(*TRAIN, "--store", out, "--out", tmp_path / "r", "--allow-incomplete", check=0)


def test_store_killed_right_after_creation_resumes(tmp_path):
    """Killed between the root zarr.json and the arrays: the same command resumes and finishes."""
    args = [
        "harvest",
        "--source",
        "synthetic",
        "--d",
        16,
        "--tokens",
        "40k",
        "--eval-tokens",
        "2k",
        "--quiet",
    ]
    run_cli(*args, "--out", tmp_path / "ref", check=0)
    env = {**os.environ, "SAGSAE_FAULT": "create:1"}
    p = subprocess.run(
        [sys.executable, "-m", "sagsae_cli", *map(str, args), "--out", str(tmp_path / "k")], env=env
    )
    assert p.returncode == -signal.SIGKILL
    run_cli(*args, "--out", tmp_path / "k", check=0)
    a, b = open_store(tmp_path / "ref"), open_store(tmp_path / "k")
    assert b.complete and torch.equal(a.read("train", 0, 40_000), b.read("train", 0, 40_000))


@pytest.mark.parametrize("command", ["harvest", "eval"])
def test_ctrl_c_says_how_to_resume(base, tmp_path, command):
    if command == "harvest":
        args, fault = (
            ["harvest", "--source", "synthetic", "--tokens", "300k", "--out", tmp_path / "s"],
            "commit:2:int",
        )
    else:
        args, fault = ["eval", base["run"], "--results", tmp_path / "res", "--checkpoints"], "eval:1:int"
    env = {**os.environ, "SAGSAE_FAULT": fault}
    # a test runner started in the background by a non-interactive shell inherits SIGINT ignored (POSIX),
    # and Python then installs no KeyboardInterrupt handler: give the command the terminal's default
    p = subprocess.run([sys.executable, "-m", "sagsae_cli", *map(str, args)], env=env, capture_output=True,
                       text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    assert p.returncode == 130 and "rerun the same command to resume" in p.stderr + p.stdout
    assert "Traceback" not in p.stderr


def test_second_trainer_on_the_same_runs_is_refused(base, tmp_path, capsys):
    locks = RunLocks()
    locks.take(tmp_path / "runs" / "sa-gsae-w12-l1_0.4-s0")  # as a running `sagsae train` holds it
    try:
        one_line_error(
            run_cli(*TRAIN, "--store", base["store"], "--out", tmp_path / "runs"), "another process"
        )
    finally:
        locks.release()
    run_cli(*TRAIN, "--store", base["store"], "--out", tmp_path / "runs", check=0)


def test_eval_cache_follows_weights_and_settings(base, tmp_path):
    runs = tmp_path / "runs"
    args = ["--store", base["store"], "--out", runs, "--width", 12, "--batch", 500, "--quiet"]
    run_cli("train", *args, "--tokens", "6k", check=0)
    run = runs / "sa-gsae-w12-l1_0.4-s0"
    first = run_cli("eval", run, "--results", tmp_path / "res", check=0)
    import pandas as pd

    part = next((tmp_path / "res" / "eval").glob("*.parquet"))
    r2_first = pd.read_parquet(part).r2.iloc[0]
    run_cli("train", *args, "--tokens", "12k", "--force", check=0)  # retrained: new weights
    run_cli("eval", run, "--results", tmp_path / "res", check=0)
    assert pd.read_parquet(part).r2.iloc[0] != r2_first and first.returncode == 0
    mtime = part.stat().st_mtime_ns
    run_cli("eval", run, "--results", tmp_path / "res", check=0)  # same weights and settings: cached
    assert part.stat().st_mtime_ns == mtime
    run_cli("eval", run, "--results", tmp_path / "res", "--lr-windows", 3, check=0)  # other settings: redone
    assert part.stat().st_mtime_ns != mtime


class _UnopenableFS(AbstractFileSystem):
    """An fsspec backend whose constructor fails the way pyarrow's HDFS does without a JVM: an OSError
    with a many-line message."""

    protocol = "unopenable"

    def __init__(self, *a, **kw):
        raise OSError("Unable to load libjvm\n" + "dlopen(/usr/lib/jvm/x) failed\n" * 50)


def test_a_url_whose_filesystem_cannot_be_opened_is_one_line(tmp_path, capsys):
    import fsspec

    fsspec.register_implementation("unopenable", _UnopenableFS, clobber=True)
    for args in (
        ["store", "info", "unopenable://h/x"],
        ["harvest", "--source", "synthetic", "--tokens", 100, "--out", "unopenable://h/x", "--quiet"],
        ["train", "--store", "unopenable://h/x", "--out", tmp_path / "r", "--quiet"],
    ):
        line = one_line_error(run_inproc(*args, capsys=capsys), "unopenable://h/x", "OSError", "libjvm")
        assert "dlopen" not in line
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "field,value,needle",
    [("snapshots", -1, "--snapshots"), ("warmup_steps", -5, "--warmup-steps"), ("data_shards", -1, "--data-shards"),
     ("init_l0", float("nan"), "--init-l0"), ("decay_frac", 1.5, "--lr-decay"), ("l1_warmup_frac", -0.1, "--l1-warmup"),
     ("log_every", 0, "--log-every"), ("checkpoint_every", 0, "--checkpoint-every"), ("l1", float("inf"), "--l1")],
)  # fmt: skip
def test_python_api_refuses_what_the_cli_refuses(tmp_path, field, value, needle):
    """The stages own their bounds: a TrainConfig or an import built in Python is refused with the same
    line as the command, before anything is written."""
    from sagsae_cli.errors import SagsaeError
    from sagsae_cli.recipe import TrainConfig

    with pytest.raises(SagsaeError, match=needle):
        TrainConfig(width=8, tokens=1000, store=str(tmp_path / "s"), **{field: value}).validate()


@pytest.mark.parametrize(
    "kw,needle", [({"split_eval": 1.0}, "--split-eval"), ({"max_norm_ratio": 0.5}, "--max-norm")]
)
def test_python_import_refuses_bad_numbers(tmp_path, kw, needle):
    import numpy as np

    from sagsae_cli.errors import SagsaeError
    from sagsae_cli.importer import import_store

    np.save(tmp_path / "a.npy", np.ones((64, 4), dtype=np.float32))
    with pytest.raises(SagsaeError, match=needle):
        import_store(tmp_path / "a.npy", tmp_path / "store", **kw)
    assert not (tmp_path / "store").exists()


def test_python_results_stages_refuse_bad_numbers(tmp_path):
    """evaluate, pairs, compare and browse check their own numbers (before reading any input)."""
    import pandas as pd

    from sagsae_cli.browse import browse
    from sagsae_cli.compare import compare
    from sagsae_cli.errors import SagsaeError
    from sagsae_cli.evaluate import evaluate
    from sagsae_cli.pairs import pairs

    missing = str(tmp_path / "none")
    calls = [
        (lambda: evaluate([missing], tmp_path / "r", bipolar_threshold=0.7), "--bipolar-threshold"),
        (lambda: evaluate([missing], tmp_path / "r", lr_windows=-1), "--lr-windows"),
        (lambda: pairs(missing, tau=1.5), "--cos"),
        (lambda: pairs(missing, max_cofire=-0.1), "--max-cofire"),
        (lambda: compare(pd.DataFrame(), matched_l0=float("nan")), "--matched-l0"),
        (lambda: compare(pd.DataFrame(), ratio=0), "--width-ratio"),
        (lambda: browse([missing], tmp_path / "site", top_k=0), "--top"),
    ]
    for call, needle in calls:
        with pytest.raises(SagsaeError, match=needle):
            call()
    assert not any(tmp_path.iterdir())
