"""`sagsae harvest` and `sagsae store info|import|export`: activation stores in, out and described."""

from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table

from sagsae_cli.cli.app import Quiet, _tokens, app, store_app
from sagsae_cli.errors import SagsaeError, require
from sagsae_cli.progress import console, styled

SYNTH = "Synthetic ground truth (--source synthetic; docs/METHOD.md §7)"


@app.command()
def harvest(
    model: str = typer.Option(
        "smollm2-135m",
        help="Hub id, alias (smollm2-135m and gemma3-270m from their packages; pythia-1b, smollm3-3b, gpt2, ...), "
        "local dir or .gguf.",
    ),
    out: str = typer.Option(
        ...,
        "--out",
        "-o",
        help="Store directory or fsspec URL (s3://bucket/path; one sub-directory per hook if several).",
    ),
    hook: str = typer.Option(
        "resid_mid",
        help="resid_pre, resid_mid, resid_post, attn_out, mlp_out or "
        "blocks.L.hook_NAME; comma-separated for several stores in one pass.",
    ),  # fmt: skip
    layer: Optional[int] = typer.Option(None, help="Layer (default: mid-depth, n_layers // 2)."),
    revision: Optional[str] = typer.Option(None, help="Model revision (hub)."),
    dataset: str = typer.Option(
        "shakespeare", help="shakespeare, a local .txt/.jsonl/.parquet file or folder, or a hub dataset."
    ),
    dataset_split: str = typer.Option("train", help="Hub dataset split."),
    text_column: str = typer.Option("text", help="Text column (.jsonl, .parquet, hub)."),
    context: int = typer.Option(128, help="Tokens per window (BOS included)."),
    batch_size: int = typer.Option(16, help="Windows per forward pass."),
    keep_bos: bool = typer.Option(False, help="Keep position 0 (BOS / attention sink; excluded by default)."),
    max_norm_ratio: float = typer.Option(
        10.0, help="Drop tokens whose norm exceeds this x the median (0 = keep all)."
    ),
    model_dtype: str = typer.Option(
        "auto", help="Model dtype: auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16."
    ),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    tokens: str = typer.Option("1M", help="Train-split tokens (1M, 200k, 1e6 ...)."),
    eval_tokens: str = typer.Option(
        "100k", help="Eval-split tokens (from documents train never sees; 0 = none)."
    ),
    dtype: str = typer.Option(
        "auto",
        help="Store dtype: auto (bfloat16 for a model, float32 for synthetic data), float32, float16 or bfloat16.",
    ),
    source: str = typer.Option(
        "lm",
        help="lm (a language model) or synthetic (docs/METHOD.md §7 ground truth).",
        rich_help_panel=SYNTH,
    ),
    protocol: str = typer.Option(
        "A", help="Synthetic: protocol A (rho sweep), B (pair fraction), C (widths).", rich_help_panel=SYNTH
    ),
    d: int = typer.Option(64, help="Synthetic: dimension.", rich_help_panel=SYNTH),
    n_axes: int = typer.Option(48, help="Synthetic: number of unit axes K.", rich_help_panel=SYNTH),
    rho: Optional[float] = typer.Option(
        None,
        help="Synthetic: within-pair co-firing lift minus one, in [-1, 0] (-1: a pair's two sides never "
        "fire together; not a correlation: the indicators' correlation is rho p / (1 - p)).",
        rich_help_panel=SYNTH,
    ),
    paired_fraction: Optional[float] = typer.Option(
        None, help="Synthetic: fraction of paired axes.", rich_help_panel=SYNTH
    ),
    l0: float = typer.Option(2.0, help="Synthetic: mean active features per token.", rich_help_panel=SYNTH),
    noise: float = typer.Option(
        0.01, help="Synthetic: Gaussian noise std per dimension.", rich_help_panel=SYNTH
    ),
    seed: int = typer.Option(0, help="Synthetic: random seed.", rich_help_panel=SYNTH),
    force: bool = typer.Option(False, help="Delete an existing store made by another config and start over."),
    quiet: Quiet = False,
) -> None:
    """Write one hookpoint's activations (or synthetic ground truth) to a Zarr activation store.

    Resumable: rerun the same command after an interruption and it continues from the last commit.
    """
    tokens, eval_tokens = _tokens(tokens), _tokens(eval_tokens, "--eval-tokens", lo=0)
    from sagsae_cli.rows import DTYPE_ALIASES, check_norm_ratio

    check_norm_ratio(max_norm_ratio)  # refused on either source, though only an LM's rows are filtered

    if dtype == "auto":  # docs/METHOD.md §8: bf16 halves an LM store at no measurable cost in R²
        dtype = "float32" if source == "synthetic" else "bfloat16"
    dtype = DTYPE_ALIASES.get(dtype, dtype)  # the model dtype is resolved (aliases too) in harvest()
    if source == "synthetic":
        from sagsae_cli.synthetic import PROTOCOLS, SyntheticConfig, write_synthetic_store

        preset = PROTOCOLS.get(protocol.upper(), {})
        cfg = SyntheticConfig(
            protocol=protocol.upper(), d=d, n_axes=n_axes,
            rho=preset.get("rho", -1.0) if rho is None else rho,
            paired_fraction=preset.get("paired_fraction", 1.0) if paired_fraction is None else paired_fraction,
            l0=l0, noise=noise, tokens=tokens, eval_tokens=eval_tokens, seed=seed, dtype=dtype,
        )  # fmt: skip
        rows = write_synthetic_store(cfg, out, force=force, quiet=quiet)
        _print_info(out)
        console.print(
            styled("green", "done", f": {rows['train']:,} train + {rows['eval']:,} eval rows in {out}")
        )
    elif source == "lm":
        from sagsae_cli.harvest import HarvestConfig
        from sagsae_cli.harvest import harvest as run_harvest

        cfg = HarvestConfig(
            model=model, revision=revision, hooks=tuple(h.strip() for h in hook.split(",") if h.strip()),
            layer=layer, dataset=dataset, dataset_split=dataset_split, text_column=text_column, context=context,
            tokens=tokens, eval_tokens=eval_tokens, batch_size=batch_size, keep_bos=keep_bos,
            max_norm_ratio=max_norm_ratio, dtype=dtype, model_dtype=model_dtype, device=device,
        )  # fmt: skip
        for path in run_harvest(cfg, out, force=force, quiet=quiet).values():
            _print_info(str(path))
            _print_summary(str(path))
    else:
        raise SagsaeError(f"unknown --source {source!r}: use lm or synthetic")


def _print_summary(path: str) -> None:
    from sagsae_cli.store import open_store

    s = open_store(path)
    c = s.commit_state["cursor"]
    seen = c.get("train_seen", 0) + c.get("eval_seen", 0)
    dropped = c.get("train_dropped", 0) + c.get("eval_dropped", 0)
    share = dropped / seen if seen else 0.0
    console.print(
        styled(
            "green",
            "done",
            f" {path}: {s.rows('train'):,} train + {s.rows('eval'):,} eval tokens, "
            f"{s.disk_bytes() / 2**20:,.1f} MiB, norm factor {s.norm_factor:.4g}; "
            f"{dropped:,} of {seen:,} tokens ({share:.3%}) exceeded {s.meta.get('max_norm_ratio')}x the median norm "
            "and were dropped",
        )
    )


def _print_info(path: str) -> None:
    from sagsae_cli.store import open_store

    info = open_store(path).info()
    table = Table(title=f"activation store {path}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for k, v in info.items():
        if k == "disk bytes":
            k, v = "disk size", f"{v / 2**20:,.1f} MiB"
        elif isinstance(v, int) and not isinstance(v, bool):
            v = f"{v:,}"
        elif isinstance(v, float):
            v = f"{v:.6g}"
        table.add_row(k, str(v))
    console.print(table)


@store_app.command("info")
def store_info(path: str = typer.Argument(..., help="Store directory or fsspec URL (s3://…).")) -> None:
    """Shape, splits, dtype, metadata, disk size and normalisation factor of a store."""
    _print_info(path)


@store_app.command("import")
def store_import(
    src: str = typer.Argument(
        ..., help=".npy/.npz/.safetensors file, a directory of them, or a datasets directory."
    ),
    out: str = typer.Option(
        ..., "--out", "-o", help="Store directory or fsspec URL to write (resumes an interrupted import)."
    ),
    split_eval: float = typer.Option(
        0.05, help="Share of rows (of contexts, for (contexts, seq, d) sources) held out."
    ),
    column: Optional[str] = typer.Option(None, help="Array name in .npz/.safetensors, or datasets column."),
    dtype: str = typer.Option(
        "float32", help="Store dtype: float32 (fp32), bfloat16 (bf16) or float16 (fp16)."
    ),
    max_norm_ratio: float = typer.Option(10.0, help="Drop rows above this x the median norm (0 = keep all)."),
    model: str = typer.Option("", help="Model name to record (SAELens cfg.json model_name)."),
    hook_name: str = typer.Option("", help="Hook name to record, e.g. blocks.6.hook_resid_pre."),
    force: bool = typer.Option(False, help="Delete an existing store at --out first."),
    quiet: Quiet = False,
) -> None:
    """Activations made elsewhere (SAELens cached activations, nnsight .npy, ...) into a store.

    Streamed in slices with bounded memory; the first --split-eval of the rows becomes the eval split.
    """
    from sagsae_cli.importer import import_store
    from sagsae_cli.rows import DTYPE_ALIASES

    dtype = DTYPE_ALIASES.get(dtype, dtype)
    path = import_store(src, out, split_eval=split_eval, column=column, dtype=dtype, max_norm_ratio=max_norm_ratio,
                        model=model, hook_name=hook_name, force=force, quiet=quiet)  # fmt: skip
    _print_info(str(path))


@store_app.command("export")
def store_export(
    path: str = typer.Argument(..., help="Store directory or fsspec URL."),
    out: str = typer.Option(..., "--out", "-o", help="Directory for train.npy and eval.npy."),
    to: str = typer.Option("npy", help="Format (npy: float32, the stored units, not normalised)."),
    force: bool = typer.Option(False, help="Replace existing train.npy / eval.npy."),
    allow_incomplete: bool = typer.Option(
        False, help="Export a store whose harvest or import has not finished (what is committed)."
    ),
    quiet: Quiet = False,
) -> None:
    """A store's splits as .npy files in a local directory (the way back from `store import`)."""
    from sagsae_cli.importer import export_store

    require(to == "npy", f"--to {to!r} is not supported: use npy")
    for p in export_store(path, out, force=force, quiet=quiet, allow_incomplete=allow_incomplete):
        console.print(f"wrote {p}")
