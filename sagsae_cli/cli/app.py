"""The `sagsae` Typer app, the options several commands share (declared once: the same flag means the same thing
everywhere), the parsers of their values, and the options generated from the architecture registry."""

from __future__ import annotations

import functools
import inspect
import math
from typing import Annotated

import typer

from sagsae_cli import __version__
from sagsae_cli.errors import SagsaeError, require
from sagsae_cli.registry import ARCHITECTURES, all_settings

app = typer.Typer(
    help="Sign-Aware Gated SAEs (arXiv 2605.28149): harvest -> train -> eval -> plot, through files.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
store_app = typer.Typer(help="Inspect, import and export activation stores.", no_args_is_help=True)
app.add_typer(store_app, name="store")


# Options several commands share, declared once: the same flag means the same thing everywhere.
StoreOpt = Annotated[str, typer.Option("--store", "-s", help="Activation store (from `sagsae harvest`): a directory or an fsspec URL (s3://…).")]  # fmt: skip
RunsOut = Annotated[str, typer.Option("--out", "-o", help="Directory of run directories.")]
Seeds = Annotated[str, typer.Option(help="Model seeds, comma-separated.")]
Tokens = Annotated[str, typer.Option(help="Training tokens per run (50M, 200k, 1e6 ...).")]
Batch = Annotated[str, typer.Option(help="Tokens per batch; auto: about 8,000 steps for --tokens (a power of two in 128-4096).")]  # fmt: skip
Lr = Annotated[str, typer.Option(help="Base learning rate (auto: 2e-3); log thresholds learn at --threshold-lr-mult x it.")]  # fmt: skip
ThresholdLrMult = Annotated[str, typer.Option(help="Learning-rate multiple for log thresholds; auto: 100 / (steps x lr) within 1-10 (ours: 10, our reconstruction's multiple, up to 5,000 steps at lr 2e-3; 3.2 at 2M tokens with the auto batch and lr; docs/METHOD.md §8).")]  # fmt: skip
DeadWindow = Annotated[str, typer.Option(help="Tokens of silence before a latent is reset; auto (or 0): 1.25% of the run within [25k, 10% of the run], at most 10M; variants that reset nothing: 10% (ours; docs/METHOD.md §8).")]  # fmt: skip
AllowMismatch = Annotated[bool, typer.Option(help="Use an SAE made elsewhere although the model or hook it records differs from the store's (d must still match).")]  # fmt: skip
Device = Annotated[str, typer.Option(help="auto (CUDA when present), cpu or cuda.")]
TrainDtype = Annotated[str, typer.Option(help="auto (bf16 autocast on CUDA, else fp32), fp32 or bf16.")]
EvalTokens = Annotated[str, typer.Option(help="Held-out tokens per run (the same for every run).")]
Quiet = Annotated[bool, typer.Option(help="No progress bar.")]


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


def _floats(text: str, flag: str, lo: float | None = None, what: str = "a finite number") -> list[float]:
    """Comma-separated finite numbers, each >= ``lo`` when given, none given twice."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SagsaeError(f"{flag} takes comma-separated numbers (got {text!r})") from None
    bound = "finite" if lo is None else f"{what} >= {lo:g}"
    for v in values:
        require(math.isfinite(v) and (lo is None or v >= lo), f"{flag} must be {bound} (got {v:g})")
    _unique(values, flag)
    return values


def _unique(values: list, flag: str) -> None:
    """A list option names each value once: a duplicate would be the same run twice."""
    twice = sorted({str(v) for v in values if values.count(v) > 1})
    require(not twice, f"{flag} names {', '.join(twice)} more than once: give each value once")


SEED_MAX = 2**63 - 1  # torch.manual_seed takes an int64


def _ints(text: str, flag: str, lo: int = 0, hi: int = SEED_MAX) -> list[int]:
    """Comma-separated whole numbers in [``lo``, ``hi``] (seeds, k), read exactly (no float rounding)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = _floats(text, flag, lo, what="a whole number")
        require(all(v == int(v) for v in values), f"{flag} takes whole numbers (got {text!r})")
        values = [int(v) for v in values]
    for v in values:
        require(lo <= v <= hi, f"{flag} must be a whole number between {lo} and {hi} (got {v})")
    _unique(values, flag)
    return values


def _tokens(text: str | int, flag: str = "--tokens", lo: int = 1) -> int:
    """A token count: 50M, 2.5k, 1e6 or 4096 (at least ``lo``)."""
    mult = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9}
    t = str(text).strip().lower()
    try:
        value = float(t[:-1]) * mult[t[-1]] if t and t[-1] in mult else float(t)
    except ValueError:
        raise SagsaeError(f"{flag} takes a count such as 50M, 200k or 1e6 (got {text!r})") from None
    require(
        math.isfinite(value) and lo <= value < 1e15, f"{flag} must lie between {lo:,} and 1e15 (got {text!r})"
    )
    return int(value)


def _auto(text: str, flag: str, parse=float):
    """A budget-derived option (--batch, --lr, --threshold-lr-mult): ``auto`` (recipe.resolve_recipe
    decides) or a number (TrainConfig.validate checks its range)."""
    if str(text).strip().lower() == "auto":
        return "auto"
    try:
        value = parse(float(text)) if parse is int else parse(text)
    except (ValueError, OverflowError):
        raise SagsaeError(f"{flag} takes a number or auto (got {text!r})") from None
    require(math.isfinite(value), f"{flag} takes a number or auto (got {text!r})")
    return value


def _dead_window(text: str) -> int | str:
    """--dead-window: a token count, or auto (also written 0)."""
    auto = str(text).strip().lower() in ("auto", "0")
    return "auto" if auto else _tokens(text, "--dead-window", lo=1)


SETTINGS = "Architecture settings (sagsae_cli/registry.py; each applies to the architectures named)"


def with_settings(command):
    """A command with one option per architecture setting the registry declares (after its own), handed
    to it as one ``settings`` dict: a setting added to the registry appears in `train` and `ablate`."""
    # annotations evaluated (this module postpones them): the options' Annotated help travels with them
    own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "settings"]
    archs = lambda s: ", ".join(a.name for a in ARCHITECTURES.values() if s in a.settings)
    generated = [
        inspect.Parameter(
            s.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=s.default,
            annotation=Annotated[
                s.type, typer.Option(s.flag, help=f"{s.help} ({archs(s)})", rich_help_panel=SETTINGS)
            ],
        )  # fmt: skip
        for s in all_settings()
    ]

    @functools.wraps(command)
    def wrapper(**kwargs):
        settings = {s.name: kwargs.pop(s.name) for s in all_settings()}
        return command(**kwargs, settings=settings)

    wrapper.__signature__ = inspect.Signature(own + generated)
    wrapper.__annotations__ = {p.name: p.annotation for p in own + generated}
    return wrapper
