import pytest
import torch
from conftest import write_indexed_store

from sagsae_cli.reader import ShuffledBatches, sequential_batches
from sagsae_cli.store import open_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return open_store(write_indexed_store(tmp_path_factory.mktemp("r") / "s", n_train=5003))


def ids(batches):
    return [b[:, 0].long() for b in batches]


def test_normalised_rows_are_raw_rows_over_the_norm_factor(store):
    raw = torch.cat(list(ShuffledBatches(store, 1000, seed=2, normalise=False).epoch(0)))
    normed = torch.cat(list(ShuffledBatches(store, 1000, seed=2).epoch(0)))
    assert torch.allclose(normed * store.norm_factor, raw, rtol=1e-6, atol=1e-4)
    assert torch.equal(raw, store.read("train", 0, 5003)[raw[:, 0].long()])


@pytest.mark.parametrize("prefetch", [True, False])
def test_each_row_exactly_once_and_shuffled(store, prefetch):
    r = ShuffledBatches(store, 512, seed=1, buffer_rows=1000, normalise=False, prefetch=prefetch)
    got = ids(r.epoch(0))
    assert len(got) == len(r) == 10
    flat = torch.cat(got)
    assert torch.equal(flat.sort().values, torch.arange(5003))
    assert not torch.equal(flat, torch.arange(5003))
    # rows of one batch come from several chunks (256 rows each), not one block
    assert len(set((got[0] // 256).tolist())) > 3


def test_deterministic_and_epochs_differ(store):
    a = ids(ShuffledBatches(store, 500, seed=7, buffer_rows=1000, normalise=False).epoch(2))
    b = ids(ShuffledBatches(store, 500, seed=7, buffer_rows=1000, normalise=False, prefetch=False).epoch(2))
    c = ids(ShuffledBatches(store, 500, seed=7, buffer_rows=1000, normalise=False).epoch(3))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(torch.cat(a), torch.cat(c))


@pytest.mark.parametrize("world", [2, 3])
def test_disjoint_equal_shards(store, world):
    per_rank = [
        ids(ShuffledBatches(store, 256, seed=0, rank=r, world_size=world, normalise=False).epoch(0))
        for r in range(world)
    ]
    assert len({len(b) for b in per_rank}) == 1
    assert len(per_rank[0]) == len(ShuffledBatches(store, 256, rank=0, world_size=world))
    flat = torch.cat([torch.cat(b) for b in per_rank])
    assert torch.equal(flat.sort().values, torch.arange(5003))
    sizes = [sum(len(x) for x in b) for b in per_rank]
    assert max(sizes) - min(sizes) <= 1
    glob = ids(ShuffledBatches(store, 256, seed=0, rank=None, world_size=world, normalise=False).epoch(0))
    for step, g in enumerate(glob):
        assert torch.equal(g, torch.cat([per_rank[r][step] for r in range(world)]))


def test_resume_mid_epoch(store):
    r = ShuffledBatches(store, 300, seed=4, buffer_rows=700, normalise=False)
    full = ids(r.epoch(1))
    rest = ids(r.epoch(1, start_batch=7))
    assert len(rest) == len(full) - 7
    assert all(torch.equal(x, y) for x, y in zip(full[7:], rest))


def test_sequential(store):
    seq = torch.cat(list(sequential_batches(store, "eval", 300, normalise=False)))
    assert torch.equal(seq[:, 0], torch.arange(700.0))
    assert sum(len(b) for b in sequential_batches(store, "eval", 300, max_rows=650)) == 650


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("ring", [2, 3])
def test_device_feed_yields_the_readers_batches_bit_for_bit(tmp_path, dtype, ring):
    """The CUDA input path (rows in the store's dtype through a ring of staging buffers, widened and
    scaled after the copy) gives exactly the batches of the host path, in order, for fp32 and bf16 stores
    and a short tail; run here on CPU, where the ring uses plain buffers. Leaving early stops its thread."""
    import threading

    from sagsae_cli.reader import DeviceFeed

    s = open_store(write_indexed_store(tmp_path / "s", n_train=3001, dtype=dtype))
    host = list(ShuffledBatches(s, 256, seed=3, buffer_rows=1000).epoch(1))
    raw = ShuffledBatches(s, 256, seed=3, buffer_rows=1000, widen=False)
    assert next(iter(raw.epoch(1))).dtype == {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    fed = list(DeviceFeed(torch.device("cpu"), raw.scale, ring=ring)(raw.epoch(1)))
    assert len(fed) == len(host) == 12
    assert all(a.dtype == torch.float32 and torch.equal(a, b) for a, b in zip(fed, host))
    before = threading.active_count()
    for i, _ in enumerate(DeviceFeed(torch.device("cpu"), raw.scale, ring=ring)(raw.epoch(0))):
        if i == 2:
            break
    assert threading.active_count() <= before + 1  # the filler has stopped (or is stopping)
