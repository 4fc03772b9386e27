"""`sagsae ablate`: the ablation grid (the abstract's two-sided gate, auxiliary loss and tying, plus our no-reset and Gated at H) on one store (docs/METHOD.md §5) = train + eval + a table.

Variants at width H: sa-gsae (tied, the reference), sa-gsae-untied, no-aux, one-sided, no-reset,
gated; plus gated at 2H. All runs share one pass over the data; finished runs are skipped.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd

from sagsae_cli.evaluate import evaluate
from sagsae_cli.files import atomic_write, read_parquet
from sagsae_cli.location import Location
from sagsae_cli.recipe import TrainConfig
from sagsae_cli.registry import ABLATION_GRID
from sagsae_cli.train import train

GRID = ABLATION_GRID  # the registry's variants marked ablation=True


def ablation_configs(base: TrainConfig, seeds: list[int]) -> list[TrainConfig]:
    cfgs = [replace(base, variant=v, seed=s) for v in GRID for s in seeds]
    return cfgs + [replace(base, variant="gated", width=2 * base.width, seed=s) for s in seeds]


# what makes two grids on one store and width one table
SETTING = ["l1", "target_l0", "tokens", "eval_tokens"]


def ablate(base: TrainConfig, seeds: list[int], out: str, results: str, eval_tokens: int, *, force=False,
           quiet=False, device="auto", dtype="auto") -> pd.DataFrame:  # fmt: skip
    """Train and evaluate the grid for ``seeds``, and write ``results/ablation/<store>-w<H>.parquet``.

    The table accumulates seeds: rows of earlier calls at the same setting (``SETTING``) whose runs this
    call did not make stay, so ``--seeds 1`` after ``--seeds 0`` holds both, and deltas are taken against
    the tied default's mean over every seed in the table. A grid at another setting replaces the table
    (its runs stay cached in ``out``: rerunning that setting rebuilds it without training)."""
    dirs = train(ablation_configs(base, seeds), out, force=force, quiet=quiet, device=device, dtype=dtype)
    table = evaluate([str(d) for d in dirs], results, eval_tokens=eval_tokens, force=force, quiet=quiet)
    path = Path(results) / "ablation" / f"{Location(base.store).name}-w{base.width}.parquet"
    table = pd.concat([_earlier_seeds(path, table), table], ignore_index=True)
    table["label"] = table["variant"] + "@" + table["width"].astype(str)
    cols = [c for c in ("r2", "l0", "dead_frac", "loss_recovered") if c in table]
    ref = table[table.label == f"sa-gsae@{base.width}"][cols].mean()
    for col in cols:
        table[f"delta_{col}"] = table[col] - ref[col]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda p: table.to_parquet(p, index=False), flag="--results")
    return table


def _earlier_seeds(path: Path, table: pd.DataFrame) -> pd.DataFrame:
    """The rows of an existing ablation table at ``table``'s setting for runs ``table`` does not hold."""
    if not path.exists():
        return table.iloc[:0]
    old = read_parquet(path)
    if not set(SETTING + ["run"]) <= set(old.columns):
        return table.iloc[:0]
    setting = table[SETTING].drop_duplicates()
    same = old.merge(setting, on=SETTING, how="inner")
    if len(same) < len(old):
        gone = old[SETTING].drop_duplicates().iloc[0]
        print(f"note: {path} held the grid at another setting ({', '.join(f'{k} {gone[k]:g}' for k in SETTING)}): "
             "replaced; rerun that setting to rebuild it from the cached runs", file=sys.stderr)  # fmt: skip
    derived = [c for c in same if c.startswith("delta_") or c == "label"]
    return same[~same.run.isin(set(table.run))].drop(columns=derived)
