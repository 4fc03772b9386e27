import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

# One thread per test process, and per CLI the tests start (OMP_NUM_THREADS is inherited): pytest runs
# two workers (pyproject: -n 2), one per core of the 2-core VM, and two threads per worker would
# oversubscribe them; on a machine busy with other work a thread per op's parallel region that waits
# for a descheduled sibling made single tests 10x slower.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)


class OneProcess:
    """The trainer's World for one CPU process (what `distributed.init_world` gives without torchrun)."""

    device, main, active, size, rank = torch.device("cpu"), True, False, 1, 0


def run_cli(*args, check=None, timeout=600, preexec_fn=None):
    """Run `python -m sagsae_cli ARGS` in a subprocess; returns CompletedProcess."""
    env = {**os.environ, "COLUMNS": "200"}
    p = subprocess.run(
        [sys.executable, "-m", "sagsae_cli", *map(str, args)],
        capture_output=True, text=True, env=env, timeout=timeout, preexec_fn=preexec_fn,
    )  # fmt: skip
    if check is not None:
        assert p.returncode == check, f"rc={p.returncode}\nstdout:{p.stdout}\nstderr:{p.stderr}"
    return p


def run_inproc(*args, capsys):
    """`sagsae ARGS` in this process (no interpreter + torch start-up per call: the bad-input tests
    make dozens of calls). Returns a CompletedProcess-like object; stdout/stderr via pytest's capsys."""
    from sagsae_cli.cli import main

    capsys.readouterr()  # drop what came before
    argv, old_cols = sys.argv, os.environ.get("COLUMNS")
    sys.argv, os.environ["COLUMNS"] = ["sagsae", *map(str, args)], "200"
    try:
        main()
        rc = 0
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = argv
        if old_cols is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old_cols
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, rc, out.out, out.err)


@pytest.fixture
def cli():
    return run_cli


def write_indexed_store(path: Path, n_train=5000, n_eval=700, d=8, chunk_rows=256, dtype="float32"):
    """A store whose column 0 holds the row index, so readers' coverage can be checked."""
    from sagsae_cli.store import StoreWriter

    with StoreWriter(path, d=d, dtype=dtype, config={"test": 1}, chunk_rows=chunk_rows) as w:
        for split, n in (("train", n_train), ("eval", n_eval)):
            x = np.random.default_rng(0).normal(size=(n, d)).astype("float32")
            x[:, 0] = np.arange(n)
            for a in range(0, n, 1000):
                w.append(split, x[a : a + 1000])
                w.commit()
        w.commit(complete=True)
    return path


TINY = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64, vocab_size=300)


def tiny_config(family: str):
    """A tiny random model config per supported family (sequential / parallel residual, sandwich norms)."""
    from transformers import GemmaConfig, GPT2Config, GPTNeoXConfig, LlamaConfig

    try:
        from transformers import Gemma2Config
    except ImportError:  # pragma: no cover
        Gemma2Config = None
    t = TINY
    if family in ("neox-parallel", "neox-sequential"):
        return GPTNeoXConfig(**t, use_parallel_residual=family == "neox-parallel", max_position_embeddings=256,
                             bos_token_id=0, eos_token_id=0)  # fmt: skip
    if family == "llama":
        return LlamaConfig(
            **t, num_key_value_heads=2, max_position_embeddings=256, bos_token_id=1, eos_token_id=2
        )
    if family == "gemma2":
        return Gemma2Config(**t, num_key_value_heads=2, head_dim=8, max_position_embeddings=256,
                            bos_token_id=1, eos_token_id=2)  # fmt: skip
    if family == "gemma":
        return GemmaConfig(**t, num_key_value_heads=2, head_dim=8, max_position_embeddings=256)
    if family in ("olmo2", "phi3", "qwen2", "qwen3", "gemma3_text", "mistral"):
        import transformers

        name = {"olmo2": "Olmo2Config", "phi3": "Phi3Config", "qwen2": "Qwen2Config", "qwen3": "Qwen3Config",
                "gemma3_text": "Gemma3TextConfig", "mistral": "MistralConfig"}[family]  # fmt: skip
        extra = {"head_dim": 8} if family in ("qwen3", "gemma3_text") else {}
        return getattr(transformers, name)(**t, num_key_value_heads=2, max_position_embeddings=256,
                                           bos_token_id=1, eos_token_id=2, pad_token_id=0, **extra)  # fmt: skip
    if family == "gpt2":
        return GPT2Config(n_embd=32, n_layer=4, n_head=4, vocab_size=300, n_positions=256, bos_token_id=0,
                          eos_token_id=0)  # fmt: skip
    raise ValueError(family)


def make_tiny_model(family: str, path: Path) -> Path:
    """Save a tiny random causal LM and a word-level tokenizer to ``path`` (a local model dir)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(family))
    model.save_pretrained(path)
    words = sorted({w.lower() for w in SAMPLE_TEXT.split()})
    vocab = {"<unk>": 3, "<bos>": 1, "<eos>": 2, "<pad>": 0, **{w: i + 4 for i, w in enumerate(words[:290])}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>",
                                   pad_token="<pad>")  # fmt: skip
    fast.save_pretrained(path)
    return path


def nan_weights_copy(model: Path, path: Path) -> Path:
    """A copy of the local model dir ``model`` with one NaN weight in layer 0 (its MLP output)."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(model, path)
    weights = load_file(str(path / "model.safetensors"))
    weights["model.layers.0.mlp.down_proj.weight"][0, 0] = float("nan")
    save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


SAMPLE_TEXT = (
    "the quick brown fox jumps over the lazy dog while a sunny day in london brings people out to the "
    "park where children play and old men read newspapers under tall green trees beside the quiet river "
    "that flows to the sea past fields of wheat and barley and small stone houses with red roofs"
)


def write_corpus(path: Path, n_docs: int = 40) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    words = SAMPLE_TEXT.split()
    rng = np.random.default_rng(0)
    for i in range(n_docs):
        (path / f"doc{i:03d}.txt").write_text(" ".join(rng.choice(words, size=200)))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def local_server(argv: list[str], port: int, env: dict[str, str]):
    """Run a test server (moto, Azurite) on 127.0.0.1:``port`` with ``env`` set in this process (the
    standard credential variables, as a user would set them) until the block ends."""
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        for _ in range(600):  # a hang guard while the server starts, not a time limit on anything tested
            if server.poll() is not None:
                pytest.fail(f"{argv[0]} exited at start")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        yield
    finally:
        server.terminate()
        try:  # Azurite's graceful stop waits minutes for idle keep-alive connections; its data is a tmp dir
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
