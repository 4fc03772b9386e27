"""Batch readers over an activation store: shuffled for training, sequential for evaluation.

Shuffling is two-level, like a shuffle buffer but exact: each epoch permutes the store's chunks
(blocks), lays their rows end to end and deals rank r the contiguous slice
``[r*N/W, (r+1)*N/W)`` of that order; each rank then cuts its slice into buffers of about
``buffer_rows`` rows, permutes the rows inside each buffer and cuts batches. So every row appears
exactly once per epoch, ranks are disjoint and differ by at most one row, memory is bounded by the
buffer (plus one prefetched buffer), and a given (seed, epoch, rank, world_size) always gives the same
batches. Every rank yields ``ceil(ceil(N/W) / batch_size)`` batches, so no collective can hang; the
last may be short (even empty).
"""

from __future__ import annotations

import math
import queue
from collections.abc import Iterator

import torch

from sagsae_cli.store import ActivationStore
from sagsae_cli.threads import ahead

_SEED_MIX = 0x9E3779B97F4A7C15


def _generator(*keys: int) -> torch.Generator:
    seed = 0
    for k in keys:
        seed = (seed * 1_000_003 + int(k) + 1) % (2**63 - 1)
    return torch.Generator().manual_seed(seed ^ (_SEED_MIX % 2**63))


class ShuffledBatches:
    """Deterministic shuffled batches of one split, shardable by (rank, world_size).

    ``rank=None`` yields global batches: for each step, the concatenation (in rank order) of what
    every rank yields, which is what single-process training on the same data must see.
    """

    def __init__(
        self,
        store: ActivationStore,
        batch_size: int = 4096,
        *,
        split: str = "train",
        seed: int = 0,
        rank: int | None = 0,
        world_size: int = 1,
        buffer_rows: int = 1 << 19,
        normalise: bool = True,
        prefetch: bool = True,
        widen: bool = True,
    ):
        if batch_size <= 0 or world_size <= 0 or (rank is not None and not 0 <= rank < world_size):
            raise ValueError("batch_size and world_size must be positive and 0 <= rank < world_size")
        self.store, self.split, self.batch_size = store, split, batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.buffer_rows, self.prefetch, self.widen = buffer_rows, prefetch, widen
        # widen False: rows stay in the store's dtype and unscaled; DeviceFeed widens and scales them on the
        # device after the copy (the same float32 product as here)
        self.scale = 1.0 / store.norm_factor if normalise else 1.0
        self.n = store.rows(split)
        self.block = store.chunk_rows

    def __len__(self) -> int:
        """Batches per epoch (equal on every rank)."""
        return math.ceil(math.ceil(self.n / self.world_size) / self.batch_size)

    def _segments(self, epoch: int, rank: int) -> list[tuple[int, int]]:
        """Row ranges [start, stop) of the store that rank reads this epoch, in order."""
        n_blocks = math.ceil(self.n / self.block)
        order = torch.randperm(n_blocks, generator=_generator(self.seed, epoch)).tolist()
        lo = rank * self.n // self.world_size
        hi = (rank + 1) * self.n // self.world_size
        segments, pos = [], 0
        for b in order:
            start, stop = b * self.block, min((b + 1) * self.block, self.n)
            a, z = max(lo, pos), min(hi, pos + stop - start)
            if a < z:
                segments.append((start + a - pos, start + z - pos))
            pos += stop - start
        return segments

    def _buffers(self, epoch: int, rank: int) -> list[list[tuple[int, int]]]:
        buffers, current, size = [], [], 0
        for seg in self._segments(epoch, rank):
            current.append(seg)
            size += seg[1] - seg[0]
            if size >= self.buffer_rows:
                buffers.append(current)
                current, size = [], 0
        return buffers + ([current] if current else [])

    def _load(self, segments, epoch: int, rank: int, index: int) -> torch.Tensor:
        x = torch.cat([self.store.read(self.split, a, z, widen=self.widen) for a, z in segments])
        perm = torch.randperm(x.shape[0], generator=_generator(self.seed, epoch, rank, index, 1))
        x = x[perm]
        return x.mul_(self.scale) if self.scale != 1.0 and self.widen else x

    def _rank_batches(self, epoch: int, rank: int, start_batch: int) -> Iterator[torch.Tensor]:
        skip = start_batch * self.batch_size  # rows of this rank's order to skip (resume)
        jobs, pos = [], 0
        for i, segs in enumerate(self._buffers(epoch, rank)):
            size = sum(z - a for a, z in segs)
            if pos + size > skip:
                jobs.append((i, segs, max(0, skip - pos)))
            pos += size
        carry = torch.empty(0, self.store.d)
        emitted = start_batch
        for x, drop in self._prefetched(jobs, epoch, rank):
            carry = torch.cat([carry, x[drop:]]) if carry.numel() else x[drop:]
            while carry.shape[0] >= self.batch_size:
                yield carry[: self.batch_size]
                carry = carry[self.batch_size :]
                emitted += 1
        while emitted < len(self):  # the short tail, then empty batches to keep ranks in step
            yield carry
            carry = carry[:0]
            emitted += 1

    def _prefetched(self, jobs, epoch: int, rank: int):
        loads = ((self._load(segs, epoch, rank, i), drop) for i, segs, drop in jobs)
        return ahead(loads, depth=1) if self.prefetch else loads

    def epoch(self, epoch: int = 0, start_batch: int = 0) -> Iterator[torch.Tensor]:
        """The batches of one epoch, from ``start_batch`` on (for resuming mid-epoch)."""
        if self.rank is not None:
            yield from self._rank_batches(epoch, self.rank, start_batch)
            return
        streams = [self._rank_batches(epoch, r, start_batch) for r in range(self.world_size)]
        for parts in zip(*streams):
            yield torch.cat(parts)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self.epoch(0)


class DeviceFeed:
    """Batches of a ``ShuffledBatches(widen=False)`` onto ``device``, widened to float32 and scaled there.

    A thread copies each next batch into a ring of ``ring`` staging buffers (page-locked on CUDA, so the
    host-to-device copy is asynchronous), and the copy of batch i + 1 is issued before batch i is handed
    to the step, so it overlaps the step's compute. A staging buffer is refilled only after the event
    recorded behind its copy has completed. Off CUDA the same ring runs with plain buffers (the tests
    exercise it on CPU)."""

    def __init__(self, device: torch.device, scale: float, ring: int = 3):
        self.device, self.scale, self.ring = torch.device(device), float(scale), max(2, ring)
        self.cuda = self.device.type == "cuda"

    def _finish(self, staged: torch.Tensor) -> torch.Tensor:
        x = staged.to(self.device, non_blocking=self.cuda, copy=True).float()  # a copy: the slot is refilled
        return x.mul_(self.scale) if self.scale != 1.0 else x

    def __call__(self, batches: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
        slots: list[torch.Tensor | None] = [None] * self.ring
        done: list = [None] * self.ring  # the event behind each slot's last copy (CUDA)
        free: queue.Queue = queue.Queue()
        for i in range(self.ring):
            free.put(i)

        def staged() -> Iterator[int]:  # on the producer thread: each batch into a free slot
            for x in batches:
                i = free.get()
                if i is None:  # the consumer stopped
                    return
                if done[i] is not None:
                    done[i].synchronize()  # its previous copy to the device has finished
                if slots[i] is None or slots[i].shape != x.shape or slots[i].dtype != x.dtype:
                    slots[i] = torch.empty(x.shape, dtype=x.dtype, pin_memory=self.cuda)
                slots[i].copy_(x)
                yield i

        pending = None  # the device tensor issued ahead of the step
        for i in ahead(staged(), depth=self.ring, unblock=lambda: free.put(None)):
            x = self._finish(slots[i])
            if self.cuda:
                done[i] = torch.cuda.Event()
                done[i].record()
            free.put(i)
            if pending is not None:
                yield pending
            pending = x
        if pending is not None:
            yield pending


def sequential_batches(
    store: ActivationStore, split: str = "eval", batch_size: int = 4096, max_rows: int | None = None,
    normalise: bool = True,
) -> Iterator[torch.Tensor]:  # fmt: skip
    """Rows of a split in store order, for evaluation."""
    n = store.rows(split) if max_rows is None else min(max_rows, store.rows(split))
    for start in range(0, n, batch_size):
        yield store.read(split, start, min(start + batch_size, n), normalise=normalise)
