"""The `sagsae` command line: flags -> config -> one call per stage. Errors become one line, exit 2."""

from __future__ import annotations

import sys
from typing import Optional

import typer
from rich.table import Table

from sagsae_cli import __version__
from sagsae_cli.errors import SagsaeError
from sagsae_cli.progress import console

app = typer.Typer(
    help="Sign-Aware Gated SAEs (arXiv 2605.28149): harvest -> train -> eval -> plot, through files.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
store_app = typer.Typer(help="Inspect activation stores.", no_args_is_help=True)
app.add_typer(store_app, name="store")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sagsae {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    pass


@app.command()
def harvest(
    out: str = typer.Option(..., "--out", "-o", help="Store directory to create or resume."),
    source: str = typer.Option("lm", help="lm (a language model) or synthetic (PAPER.md §7 ground truth)."),
    protocol: str = typer.Option(
        "A", help="Synthetic protocol: A (rho sweep), B (pair fraction), C (widths)."
    ),
    d: int = typer.Option(64, help="Synthetic: dimension."),
    n_axes: int = typer.Option(48, help="Synthetic: number of unit axes K."),
    rho: Optional[float] = typer.Option(None, help="Synthetic: within-pair correlation in [-1, 0]."),
    paired_fraction: Optional[float] = typer.Option(None, help="Synthetic: fraction of paired axes."),
    l0: float = typer.Option(2.0, help="Synthetic: mean active features per token."),
    noise: float = typer.Option(0.01, help="Synthetic: Gaussian noise std per dimension."),
    tokens: int = typer.Option(1_000_000, help="Train-split tokens."),
    eval_tokens: int = typer.Option(100_000, help="Eval-split tokens (never from train sequences)."),
    seed: int = typer.Option(0, help="Random seed."),
    dtype: str = typer.Option("float32", help="Store dtype: float32, float16 or bfloat16."),
    force: bool = typer.Option(False, help="Delete an existing store made by another config and start over."),
    quiet: bool = typer.Option(False, help="No progress bar."),
) -> None:
    """Write one hookpoint's activations (or synthetic ground truth) to a Zarr activation store.

    Resumable: rerun the same command after an interruption and it continues from the last commit.
    """
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
        console.print(f"[green]done[/green]: {rows['train']:,} train + {rows['eval']:,} eval rows in {out}")
    elif source == "lm":
        raise SagsaeError("harvesting from a language model is not available yet: use --source synthetic")
    else:
        raise SagsaeError(f"unknown --source {source!r}: use lm or synthetic")


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
def store_info(path: str = typer.Argument(..., help="Store directory.")) -> None:
    """Shape, splits, dtype, metadata, disk size and normalisation factor of a store."""
    _print_info(path)


def main() -> None:
    try:
        app()  # standalone: click prints usage errors itself and exits 2
    except SagsaeError as e:
        console.print(f"[bold red]error:[/bold red] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("interrupted: rerun the same command to resume")
        sys.exit(130)
