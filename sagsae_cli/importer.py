"""`sagsae store import` / `export`: activations made elsewhere into an activation store, and back.

Sources: a ``.npy`` / ``.npz`` / ``.safetensors`` file, a directory of such files, or a Hugging Face
datasets directory (``save_to_disk``; SAELens's ``CacheActivationsRunner`` layout: one column of
per-token ``(d,)`` or per-context ``(seq, d)`` activations). Arrays are ``(tokens, d)`` or
``(contexts, seq, d)``; files are read in slices (``.npy`` memory-mapped, ``.safetensors`` by slice,
datasets by row range), so memory is bounded by ``CHUNK_ROWS`` whatever the source's size; an
``.npz`` member is read whole (zip members cannot be sliced).

The first ``split_eval`` of the rows (of the contexts, for 3-d sources) become the eval split, the
rest train, in source order: contexts are never split between the two. Validation is harvest's:
one d throughout, finite values, and the norm filter (rows above ``max_norm_ratio`` × the median
norm of the first slice are dropped and counted). Resumable: the cursor (source file and row) is
committed with the rows, so a killed import continues where it stopped.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from sagsae_cli.errors import SagsaeError, require
from sagsae_cli.progress import progress_bar
from sagsae_cli.rows import check_norm_ratio
from sagsae_cli.store import StoreWriter, open_store

CHUNK_ROWS = int(os.environ.get("SAGSAE_IMPORT_ROWS", 65536))  # rows per slice (and per commit)
SUFFIXES = (".npy", ".npz", ".safetensors")


class Source:
    """One array of one file (or dataset column): shape and row slices of ``(n, d)`` rows."""

    def __init__(self, path: Path, column: str | None):
        self.path = path
        if path.is_dir():
            import datasets

            try:
                ds = datasets.load_from_disk(str(path))
            except Exception as e:
                raise SagsaeError(f"{path} is not a datasets directory ({type(e).__name__}: {e})") from None
            name = _pick(column, list(ds.column_names), path)
            self._ds, self.key = ds.with_format("numpy", columns=[name]), name
            first = np.asarray(self._ds[0][name])
            self.shape, dtype = (len(ds), *first.shape), first.dtype
        elif path.suffix not in SUFFIXES:
            raise SagsaeError(
                f"{path}: cannot import {path.suffix or 'this file'} (use {', '.join(SUFFIXES)})"
            )
        else:
            try:
                dtype = self._open_file(path, column)
            except SagsaeError:
                raise
            except Exception as e:  # damaged: numpy, zipfile and safetensors each raise their own
                if "pickle" in str(e) or "Python objects" in str(e):
                    _check_dtype(np.dtype(object), str(path))
                raise SagsaeError(
                    f"{path} is damaged or truncated ({type(e).__name__}: {str(e).splitlines()[0][:120]}): "
                    "write it again, or leave it out of the import"
                ) from None
        where = f"{path}{f' [{self.key}]' if self.key else ''}"
        _check_dtype(dtype, where)
        if len(self.shape) not in (2, 3) or self.shape[-1] == 0:
            raise SagsaeError(f"{where} has shape {self.shape}: expected (tokens, d) or (contexts, seq, d)")
        self.d = int(self.shape[-1])
        self.per_context = int(self.shape[1]) if len(self.shape) == 3 else 1
        self.rows = int(self.shape[0]) * self.per_context

    def _open_file(self, path: Path, column: str | None):
        """Open a .npy / .npz / .safetensors file; return the element type of its array."""
        if path.suffix == ".npy":
            self._arr, self.key = np.load(path, mmap_mode="r", allow_pickle=False), None
        elif path.suffix == ".npz":
            z = np.load(path, allow_pickle=False)
            self.key = _pick(column, list(z.files), path)
            self._arr = z[self.key]
        else:  # read through torch, which has bfloat16 and float8 (SAELens saves bfloat16)
            from safetensors import safe_open

            self._st = safe_open(str(path), framework="pt")
            self.key = _pick(column, list(self._st.keys()), path)
            self._slice = self._st.get_slice(self.key)
            self.shape = tuple(self._slice.get_shape())
            return SAFETENSORS_DTYPES.get(self._slice.get_dtype(), self._slice.get_dtype())
        self.shape = self._arr.shape
        return self._arr.dtype

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) (token rows; per-context sources are read by whole contexts)."""
        c0, c1 = start // self.per_context, -(-stop // self.per_context)
        if hasattr(self, "_ds"):
            block = np.asarray(self._ds[c0:c1][self.key])
        elif hasattr(self, "_slice"):
            block = self._slice[c0:c1].float().numpy()
        else:
            block = np.asarray(self._arr[c0:c1])
        block = block.reshape(-1, self.d)
        off = start - c0 * self.per_context
        return block[off : off + stop - start]


# safetensors element types -> what they import as (floats of any width are widened to float32 on read)
SAFETENSORS_DTYPES = {
    **{t: np.dtype("float32") for t in ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4")},
    **{t: np.dtype("int64") for t in ("I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8")},
}


def _check_dtype(dtype, where: str) -> None:
    """Only real numbers import: complex would lose its imaginary part, objects and strings are no data."""
    kind = dtype.kind if isinstance(dtype, np.dtype) else None
    if kind in ("f", "i", "u"):
        return
    what = {"c": "complex numbers", "O": "Python objects", "U": "strings", "S": "bytes", "b": "booleans"}.get(
        kind, f"element type {dtype}"
    )
    fix = (
        "import the real part (or the magnitude) as a float array"
        if kind == "c"
        else "save the activations as a float array"
    )
    raise SagsaeError(f"{where} holds {what} ({dtype}), not activations: {fix}")


def _pick(column: str | None, names: list[str], path: Path) -> str:
    if column is not None:
        if column not in names:
            raise SagsaeError(f"{path} has no array {column!r}: choose --column from {', '.join(names)}")
        return column
    if len(names) != 1:
        raise SagsaeError(
            f"{path} holds {len(names)} arrays ({', '.join(names[:6])}): choose one with --column"
        )
    return names[0]


def find_sources(src: str | Path, column: str | None) -> list[Source]:
    src = Path(src)
    if not src.exists():
        raise SagsaeError(
            f"{src} does not exist: give a .npy/.npz/.safetensors file, a directory of them, or a datasets directory"
        )
    if src.is_dir() and not (src / "dataset_info.json").exists() and not (src / "state.json").exists():
        files = sorted(p for p in src.iterdir() if p.suffix in SUFFIXES)
        if not files:
            raise SagsaeError(f"{src} holds no {', '.join(SUFFIXES)} files and is not a datasets directory")
        sources = [Source(p, column) for p in files]
    else:
        sources = [Source(src, column)]
    layouts = {len(s.shape) for s in sources}
    if len(layouts) > 1:
        two = next(s.path.name for s in sources if len(s.shape) == 2)
        three = next(s.path.name for s in sources if len(s.shape) == 3)
        raise SagsaeError(
            f"the files of {src} mix (tokens, d) arrays ({two}) and (contexts, seq, d) arrays ({three}): the eval "
            "split is taken by contexts in one and by rows in the other; import each kind separately"
        )
    ds = {s.d for s in sources}
    if len(ds) > 1:
        raise SagsaeError(
            f"the files of {src} disagree on d ({', '.join(map(str, sorted(ds)))}): import them separately"
        )
    return sources


def _config(src: Path, sources: list[Source], column, split_eval, dtype, max_norm_ratio) -> dict:
    files = [{"path": str(s.path.name), "key": s.key, "shape": list(s.shape)} for s in sources]
    return {"source": "import", "src": str(Path(src).resolve()), "files": files, "column": column,
            "split_eval": split_eval, "dtype": dtype, "max_norm_ratio": max_norm_ratio}  # fmt: skip


def import_store(src: str | Path, out: str | Path, *, split_eval: float = 0.05, column: str | None = None,
                 dtype: str = "float32", max_norm_ratio: float = 10.0, model: str = "", hook_name: str = "",
                 force: bool = False, quiet: bool = False) -> str:  # fmt: skip
    """Import ``src`` into the store ``out`` (resumes an interrupted import of the same source)."""
    require(0 <= split_eval < 1, f"--split-eval is a share in [0, 1) (got {split_eval:g})")
    check_norm_ratio(max_norm_ratio)
    sources = find_sources(src, column)
    total = sum(s.rows for s in sources)
    contexts = sum(s.rows // s.per_context for s in sources)
    per_context = sources[0].per_context
    n_eval = (
        math.ceil(split_eval * contexts) * per_context if per_context > 1 else math.ceil(split_eval * total)
    )
    if total - n_eval <= 0:
        raise SagsaeError(
            f"{src} has {total:,} rows: nothing left for training after --split-eval {split_eval:g}"
        )
    meta = {"source": "import", "src": str(Path(src).resolve()), "model": model, "hook": hook_name,
            "hook_name": hook_name, "context": per_context if per_context > 1 else 0,
            "max_norm_ratio": max_norm_ratio}  # fmt: skip
    cfg = _config(Path(src), sources, column, split_eval, dtype, max_norm_ratio)
    with StoreWriter(out, d=sources[0].d, dtype=dtype, config=cfg, meta=meta, force=force) as w:
        if w.complete:
            return str(w.path)
        cur = dict(w.cursor) or {
            "slice": 0,
            "done": 0,
            "dropped": 0,
            "median_norm": None,
            "chunk": CHUNK_ROWS,
        }
        with progress_bar("import", total=total, unit="tok", quiet=quiet) as bar:
            bar.advance(cur["done"])
            for k, (fi, start, stop, split) in enumerate(_slices(sources, n_eval, cur["chunk"])):
                if k < cur["slice"]:
                    continue
                x = _validated(sources[fi], start, stop, cur, max_norm_ratio)
                if len(x):
                    w.append(split, x)
                cur.update(slice=k + 1, done=cur["done"] + stop - start)
                w.commit(cursor=cur)
                bar.advance(stop - start)
        if w.rows("train") and not w.state.get("sum_sq"):
            raise SagsaeError(
                f"every row of {src} that went into the train split is zero (norm factor 0): nothing to learn "
                f"from; check the source (the partial store at {w.path} can be removed)"
            )
        w.set_meta(dropped=cur["dropped"], median_norm=cur["median_norm"], rows_in_source=total)
        w.commit(cursor=cur, complete=True)
    return str(w.path)


def _slices(sources: list[Source], n_eval: int, chunk: int):
    """(file index, start, stop, split) of every slice, in source order; no slice straddles the
    eval/train boundary."""
    done = 0
    for fi, s in enumerate(sources):
        start = 0
        while start < s.rows:
            stop = min(start + chunk, s.rows)
            if done < n_eval < done + stop - start:
                stop = start + n_eval - done
            yield fi, start, stop, "eval" if done < n_eval else "train"
            done += stop - start
            start = stop


def _validated(s: Source, start: int, stop: int, cur: dict, max_norm_ratio: float) -> np.ndarray:
    x = np.array(
        s.read(start, stop), dtype=np.float32
    )  # a writable copy of one slice (sources may be read-only maps)
    bad = ~np.isfinite(x).all(1)
    if bad.any():
        raise SagsaeError(
            f"{s.path}{f' [{s.key}]' if s.key else ''} row {start + int(bad.argmax()):,} holds NaN or inf: "
            "fix the source (nothing after the last good slice was imported)"
        )
    norms = np.linalg.norm(x, axis=1)
    if cur["median_norm"] is None and len(x):
        cur["median_norm"] = float(np.median(norms))
    if max_norm_ratio > 0 and cur["median_norm"]:
        keep = norms <= max_norm_ratio * cur["median_norm"]
        cur["dropped"] += int((~keep).sum())
        x = x[keep]
    return x


def export_store(
    store_path: str | Path,
    out: str | Path,
    force: bool = False,
    quiet: bool = False,
    allow_incomplete: bool = False,
) -> list[Path]:
    """Write each split of a store as ``<out>/<split>.npy`` (float32, the stored units), in slices."""
    from sagsae_cli.location import is_url

    if is_url(out):
        raise SagsaeError(
            f"--out {out}: export writes .npy files to a local directory; export there, then copy them to the "
            "bucket with its own tool (aws s3 cp, gsutil cp, azcopy)"
        )
    store = open_store(store_path)
    store.check_ready(allow_incomplete, to="export")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SagsaeError(f"--out {out} is a file: choose a directory")
    paths = [out / f"{split}.npy" for split in ("train", "eval")]
    if any(p.exists() for p in paths) and not force:
        raise SagsaeError(f"{out} already holds train.npy/eval.npy: add --force to replace them")
    out.mkdir(parents=True, exist_ok=True)
    total = store.rows("train") + store.rows("eval")
    with progress_bar("export", total=total, unit="tok", quiet=quiet) as bar:
        for split, path in zip(("train", "eval"), paths):
            n = store.rows(split)
            tmp = path.with_name(path.name + ".tmp")
            arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, store.d))
            for start in range(0, n, CHUNK_ROWS):
                stop = min(start + CHUNK_ROWS, n)
                arr[start:stop] = store.read(split, start, stop).numpy()
                bar.advance(stop - start)
            arr.flush()
            del arr
            tmp.replace(path)
    return paths
