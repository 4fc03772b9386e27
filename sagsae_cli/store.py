"""The activation store: one hookpoint's activations in a Zarr v3 group (format in docs/FORMATS.md).

Layout: ``<split>/{acts,token_ids,positions,sequence_ids}`` for the splits ``train`` and ``eval``,
uncompressed chunks; root attributes hold the producer's metadata, the config hash and ``commit``,
the last committed state. Appends are queued in memory and written beyond the committed rows in large
contiguous blocks (one resize and one write per array, not one per batch); they become visible only
when ``commit()`` rewrites the root attributes (Zarr writes each file atomically), so a process killed
at any instant leaves a store that reopens at its last commit.

A store is a local directory or an fsspec URL (``s3://bucket/store``; ``sagsae_cli.location``). The
protocol needs no rename: every chunk and the root ``zarr.json`` are each one atomic object write, and
the root ``zarr.json`` (the commit) is written last, after the writer's lock has been renewed.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from sagsae_cli.errors import SagsaeError, disk_space
from sagsae_cli.faults import fault_point
from sagsae_cli.location import Location
from sagsae_cli.rows import DTYPE_ALIASES, DTYPES, to_disk, to_torch

FORMAT_VERSION = 1
SPLITS = ("train", "eval")
# store dtype -> (dtype on disk, torch dtype). bfloat16 is kept as its raw uint16 bits.
INDEX_ARRAYS = {"token_ids": "int32", "positions": "int32", "sequence_ids": "int64"}
FLUSH_BYTES = 256 << 20  # queued appends are written to disk (not yet committed) beyond this size


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def default_chunk_rows(d: int, itemsize: int, target_bytes: int = 8 << 20) -> int:
    rows = max(1, target_bytes // (d * itemsize))
    return int(min(65536, max(256, 2 ** int(math.log2(rows)))))


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise SagsaeError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")


class ActivationStore:
    """Read access to a committed store. Only rows up to the last commit are visible."""

    def check_ready(self, allow_incomplete: bool = False, to: str = "train on") -> None:
        """Refuse, in one line, a store that is still being written or was left unfinished (unless
        ``allow_incomplete``), and one whose train rows are all zero (norm factor 0)."""
        if not self.complete and not allow_incomplete:
            rows = f"{self.rows('train'):,} train rows so far"
            if self.path.writer_alive():
                raise SagsaeError(
                    f"store {self.path} is still being written (its harvest or import is running, {rows}): "
                    f"wait for it to finish, or pass --allow-incomplete to {to} what is committed"
                )
            raise SagsaeError(
                f"store {self.path} is incomplete (its harvest or import stopped before the end, with {rows}): "
                f"rerun that command to finish it, or pass --allow-incomplete to {to} what is there"
            )
        if self.rows("train") and not self.commit_state.get("sum_sq"):
            raise SagsaeError(
                f"every train row of store {self.path} is zero (norm factor 0): nothing to learn from; check "
                "the hookpoint and the source of the activations"
            )

    def __init__(self, path: str | Path | Location, mode: str = "r"):
        self.path = path if isinstance(path, Location) else Location(path)
        if not self.path.exists():
            raise SagsaeError(f"no activation store at {self.path}: run `sagsae harvest` first")
        try:
            self.group = zarr.open_group(self.path.zarr_store(read_only=mode == "r"), mode=mode)
            attrs = self.group.attrs.asdict()
        except SagsaeError:
            raise
        except Exception as e:  # zarr raises several types for a missing or garbled zarr.json
            raise SagsaeError(f"{self.path} is not a readable sagsae activation store ({e})") from None
        if attrs.get("sagsae_store") != FORMAT_VERSION:
            raise SagsaeError(f"{self.path} is not a sagsae activation store (no sagsae_store attribute)")
        self.attrs = attrs
        self.d: int = attrs["d"]
        self.dtype: str = attrs["dtype"]
        self.meta: dict = attrs.get("meta", {})
        self.commit_state: dict = attrs["commit"]

    # --- metadata -----------------------------------------------------------------------
    def rows(self, split: str) -> int:
        _check_split(split)
        return int(self.commit_state["rows"][split])

    @property
    def complete(self) -> bool:
        return bool(self.commit_state.get("complete", False))

    @property
    def norm_factor(self) -> float:
        """Scalar s with E||x / s||^2 = 1 over the committed train rows (1.0 for an empty store)."""
        n = self.rows("train")
        return math.sqrt(self.commit_state["sum_sq"] / n) if n else 1.0

    def array(self, split: str, name: str = "acts"):
        _check_split(split)
        try:
            return self.group[f"{split}/{name}"]
        except Exception as e:  # a missing or garbled array zarr.json
            raise SagsaeError(
                f"{self.path} is damaged: its array {split}/{name} cannot be opened ({type(e).__name__}): "
                "harvest it again with --force"
            ) from None

    def check_chunks(self) -> None:
        """Refuse a store whose committed rows lack a chunk file (zarr would read it as zeros)."""
        for split in SPLITS:
            n = self.rows(split)
            if n == 0:
                continue
            arr = self.array(split)
            need = -(-n // int(arr.chunks[0]))
            have = self.path.files(f"{split}/acts/c")
            missing = [i for i in range(need) if f"{split}/acts/c/{i}/0" not in have]
            if missing:
                raise SagsaeError(
                    f"{self.path} is damaged: {len(missing)} chunk file(s) of {split}/acts are missing "
                    f"(first: chunk {missing[0]}): harvest it again with --force"
                )

    @property
    def chunk_rows(self) -> int:
        return int(self.array("train").chunks[0])

    def truth(self) -> dict[str, np.ndarray] | None:
        """Synthetic ground truth (unit axes and which are paired), or None for LM stores."""
        if "truth" not in self.group:
            return None
        return {k: self.group[f"truth/{k}"][:] for k in ("axes", "paired")}

    # --- data -----------------------------------------------------------------------------
    def read(
        self, split: str, start: int, stop: int, normalise: bool = False, widen: bool = True
    ) -> torch.Tensor:
        """Rows [start, stop) of a split as float32 (divided by the norm factor if normalise), or in the
        store's dtype without normalising (``widen`` False: the device widens and scales them)."""
        stop = min(stop, self.rows(split))
        try:
            x = to_torch(self.array(split)[start:stop], self.dtype, widen)
        except Exception as e:
            raise SagsaeError(
                f"store {self.path} is corrupt: rows {start}:{stop} of {split} are unreadable ({e}); "
                "re-create it with `sagsae harvest ... --force`"
            ) from None
        return x / self.norm_factor if normalise and widen else x

    def read_index(self, split: str, name: str, start: int, stop: int) -> np.ndarray:
        return self.array(split, name)[start : min(stop, self.rows(split))]

    def disk_bytes(self) -> int:
        return sum(self.path.files().values())

    def info(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "d": self.d,
            "dtype": self.dtype,
            "train rows": self.rows("train"),
            "eval rows": self.rows("eval"),
            "complete": self.complete,
            "norm factor": self.norm_factor,
            "chunk rows": self.chunk_rows,
            "disk bytes": self.disk_bytes(),
            "config hash": self.attrs.get("config_hash"),
            **{f"meta.{k}": v for k, v in self.meta.items()},
        }


def open_store(path: str | Path) -> ActivationStore:
    return ActivationStore(path)


class StoreWriter:
    """Create or resume a store, append rows, commit. Holds an exclusive lock while open.

    ``config`` is what produced the data (model, hook, dataset, seed, ...): reopening with another
    config is refused unless ``force``, which starts over. ``cursor`` is the producer's own resume
    state, saved with each commit and returned on reopen.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        d: int,
        dtype: str,
        config: dict,
        meta: dict | None = None,
        force: bool = False,
        chunk_rows: int | None = None,
    ):
        dtype = DTYPE_ALIASES.get(dtype, dtype)
        if dtype not in DTYPES:
            raise SagsaeError(f"unknown store dtype {dtype!r}: use one of {', '.join(DTYPES)}")
        self.path = path if isinstance(path, Location) else Location(path)
        self.dtype, self.d = dtype, int(d)
        self.hash = config_hash(config)
        self._lock = None
        self._pending: dict[str, int] = {}  # row count per split including queued rows
        self._queued: dict[str, list[dict]] = {}  # appended rows not yet written, per split
        self._queued_bytes = 0
        self._written: dict[str, int] = {}  # rows on disk per split (beyond the commit until commit())
        self._sum_sq: float | None = None  # running Σ‖x‖² incl. queued rows (None: the committed one)
        if force and self.path.exists():
            self._remove_existing()
        self.path.mkdir()
        self._lock = self.path.lock("writing")
        try:
            if self.path.exists("zarr.json"):
                self._resume(force)
            else:
                if any(name != ".lock" for name in self.path.names()):
                    raise SagsaeError(
                        f"{self.path} exists and is not an activation store: choose another --out"
                    )
                self._create(config, meta or {}, chunk_rows)
        except BaseException:
            self.close()
            raise

    # --- lifecycle ------------------------------------------------------------------------
    def _remove_existing(self) -> None:
        if self.path.exists("zarr.json") or not [n for n in self.path.names() if n != ".lock"]:
            lock = self.path.lock("writing")  # never delete a store another process is writing
            try:
                self.path.remove()
            finally:
                lock.release()
        else:
            raise SagsaeError(f"{self.path} exists and is not an activation store: refusing to delete it")

    def close(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _create(self, config: dict, meta: dict, chunk_rows: int | None) -> None:
        disk_dtype = DTYPES[self.dtype][0]
        rows = chunk_rows or default_chunk_rows(self.d, np.dtype(disk_dtype).itemsize)
        self.state = {"rows": {s: 0 for s in SPLITS}, "sum_sq": 0.0, "cursor": {}, "complete": False}
        attrs = {
            "sagsae_store": FORMAT_VERSION,
            "d": self.d,
            "dtype": self.dtype,
            "chunk_rows": rows,
            "config": json.loads(json.dumps(config, default=str)),
            "config_hash": self.hash,
            "meta": meta,
            "commit": self.state,
            "norm_factor": 1.0,
        }
        # the root zarr.json is written once, with every attribute (a process killed at any instant
        # leaves either no store or one that resumes); the arrays follow and _resume makes any missing
        self.group = zarr.create_group(self.path.zarr_store(), attributes=attrs)
        fault_point("create")
        self._ensure_arrays(rows)

    def _ensure_arrays(self, rows: int) -> None:
        disk_dtype = DTYPES[self.dtype][0]
        g = self.group
        for split in SPLITS:
            specs = {"acts": ((0, self.d), (rows, self.d), disk_dtype)}
            specs |= {name: ((0,), (rows,), dt) for name, dt in INDEX_ARRAYS.items()}
            for name, (shape, chunks, dt) in specs.items():
                if f"{split}/{name}" not in g:
                    g.create_array(f"{split}/{name}", shape=shape, chunks=chunks, dtype=dt, compressors=None,
                                   fill_value=0)  # fmt: skip

    def _resume(self, force: bool) -> None:
        store = ActivationStore(self.path, mode="a")
        if store.attrs.get("config_hash") != self.hash:
            raise SagsaeError(
                f"{self.path} was produced by a different config (hash {store.attrs.get('config_hash')}, "
                f"now {self.hash}): rerun the original command to resume, or pass --force to start over"
            )
        if store.d != self.d or store.dtype != self.dtype:
            raise SagsaeError(
                f"{self.path} holds d={store.d} {store.dtype}, this run writes d={self.d} {self.dtype}: "
                "choose another --out or pass --force"
            )
        self.group, self.state = store.group, store.commit_state
        if "chunk_rows" in store.attrs:  # killed between the root zarr.json and the arrays
            self._ensure_arrays(int(store.attrs["chunk_rows"]))
        for split in SPLITS:  # drop rows written after the last commit
            n = self.state["rows"][split]
            for name in ("acts", *INDEX_ARRAYS):
                arr = self.group[f"{split}/{name}"]
                if arr.shape[0] != n:
                    arr.resize((n, *arr.shape[1:]))

    # --- writing --------------------------------------------------------------------------
    @property
    def cursor(self) -> dict:
        return self.state["cursor"]

    @property
    def complete(self) -> bool:
        return bool(self.state.get("complete"))

    def rows(self, split: str) -> int:
        """Rows of ``split`` including those appended since the last commit."""
        return int(self._pending.get(split, self.state["rows"][split]))

    def append(self, split, acts, token_ids=None, positions=None, sequence_ids=None) -> None:
        """Queue rows after the current end of ``split``; ``commit()`` writes and publishes them."""
        _check_split(split)
        raw = to_disk(acts, self.dtype)
        if raw.ndim != 2 or raw.shape[1] != self.d:
            raise SagsaeError(f"cannot append rows of shape {tuple(raw.shape)} to a store with d={self.d}")
        n = raw.shape[0]
        block = {"acts": raw}
        for (name, dt), values in zip(INDEX_ARRAYS.items(), (token_ids, positions, sequence_ids)):
            values = np.full(n, -1, dtype=dt) if values is None else np.asarray(values).astype(dt, copy=False)
            if values.shape[0] != n:
                raise SagsaeError(f"{name} has {values.shape[0]} rows but acts has {n}")
            block[name] = values
        if split == "train":
            stored = to_torch(raw, self.dtype)  # what a reader will see; row sums in fp32, total in fp64
            total = self.state["sum_sq"] if self._sum_sq is None else self._sum_sq
            # added batch by batch, so the sum does not depend on when commits happen
            self._sum_sq = total + float(stored.pow(2).sum(1, dtype=torch.float64).sum())
        self._queued.setdefault(split, []).append(block)
        self._queued_bytes += sum(v.nbytes for v in block.values())
        self._pending[split] = self.rows(split) + n
        if self._queued_bytes >= FLUSH_BYTES:
            self._flush()  # bounded memory; the rows stay invisible until commit()

    def _flush(self) -> None:
        """Write the queued rows: one resize and one contiguous write per array and split."""
        for split, blocks in self._queued.items():
            start = self._written.get(split, int(self.state["rows"][split]))
            for name in ("acts", *INDEX_ARRAYS):
                values = np.concatenate([b[name] for b in blocks])
                arr = self.group[f"{split}/{name}"]
                with disk_space(f"store {self.path}"):
                    arr.resize((start + values.shape[0], *arr.shape[1:]))
                    arr[start:] = values
            self._written[split] = start + values.shape[0]
        self._queued, self._queued_bytes = {}, 0

    def commit(self, cursor: dict | None = None, complete: bool = False) -> None:
        """Write the queued rows and make them durable and visible, with the producer's ``cursor``."""
        self._flush()
        rows = {s: self.rows(s) for s in SPLITS}
        state = {
            "rows": rows,
            "sum_sq": self.state["sum_sq"] if self._sum_sq is None else self._sum_sq,
            "cursor": dict(cursor if cursor is not None else self.cursor),
            "complete": complete,
        }
        norm = math.sqrt(state["sum_sq"] / rows["train"]) if rows["train"] else 1.0
        self._lock.refresh()  # an object-store lock taken over by another writer stops us here
        with disk_space(f"store {self.path}"):  # one write of zarr.json (attrs.update writes once per key)
            self.group.attrs.put({**self.group.attrs.asdict(), "commit": state, "norm_factor": norm})
        self.state, self._pending, self._written, self._sum_sq = state, {}, {}, None
        if not complete:
            fault_point("commit")

    def set_meta(self, **meta) -> None:
        merged = {**self.group.attrs.asdict().get("meta", {}), **meta}
        self.group.attrs.put(
            {**self.group.attrs.asdict(), "meta": json.loads(json.dumps(merged, default=str))}
        )

    def write_truth(self, axes: np.ndarray, paired: np.ndarray) -> None:
        """Store synthetic ground truth: unit axes (K x d) and a paired flag per axis."""
        for name, value in (("axes", axes.astype("float32")), ("paired", paired.astype("bool"))):
            arr = self.group.create_array(
                f"truth/{name}", shape=value.shape, dtype=value.dtype, compressors=None, overwrite=True
            )
            arr[...] = value
