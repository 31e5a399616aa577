"""Batches of sentence pairs under a token budget, sharded over data-parallel ranks (paper section 5.1).

"Sentence pairs were batched together by approximate sequence length. Each training batch contained
a set of sentence pairs containing approximately 25000 source tokens and 25000 target tokens."
`TokenBatchSampler` sorts the pairs by length, cuts the sorted list into batches whose *padded* size
stays within `max_tokens` on each side, and hands every rank the same number of batches per epoch,
in an order shuffled per epoch. `collate` turns the pairs of one batch into a `Batch` of tensors.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from transformer_mt.data.vocab import BOS_ID, EOS_ID, PAD_ID


@dataclass
class Batch:
    """One padded batch, as in docs/design.md. Sequences hold subword ids; BOS/EOS are added here."""

    src_tokens: Tensor  # (batch, src_len) int64, source ids + EOS, right-padded with PAD
    src_lengths: Tensor  # (batch,) int64, lengths including EOS
    prev_tokens: Tensor  # (batch, tgt_len) int64, BOS + target ids, right-padded (decoder input)
    target: Tensor  # (batch, tgt_len) int64, target ids + EOS, right-padded (what is predicted)
    ids: Tensor  # (batch,) int64, the pairs' indices in the dataset
    ntokens: int  # non-pad target tokens

    def __len__(self) -> int:
        return self.ids.numel()

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        def move(t: Tensor) -> Tensor:
            return t.to(device, non_blocking=non_blocking)

        return Batch(
            src_tokens=move(self.src_tokens),
            src_lengths=move(self.src_lengths),
            prev_tokens=move(self.prev_tokens),
            target=move(self.target),
            ids=move(self.ids),
            ntokens=self.ntokens,
        )

    def pin_memory(self) -> Batch:
        """Page-locked copies, so that `.to("cuda", non_blocking=True)` overlaps with compute."""
        return Batch(
            src_tokens=self.src_tokens.pin_memory(),
            src_lengths=self.src_lengths.pin_memory(),
            prev_tokens=self.prev_tokens.pin_memory(),
            target=self.target.pin_memory(),
            ids=self.ids.pin_memory(),
            ntokens=self.ntokens,
        )


def collate(pairs: Sequence[tuple[np.ndarray, np.ndarray]], ids: Sequence[int]) -> Batch:
    """Pad the (source ids, target ids) pairs of one batch; `ids` are their indices in the dataset."""
    src_lengths = np.array([len(src) + 1 for src, _ in pairs], dtype=np.int64)  # + EOS
    tgt_lengths = np.array([len(tgt) + 1 for _, tgt in pairs], dtype=np.int64)  # + BOS or EOS
    size = len(pairs)
    src_tokens = np.full((size, src_lengths.max(initial=1)), PAD_ID, dtype=np.int64)
    prev_tokens = np.full((size, tgt_lengths.max(initial=1)), PAD_ID, dtype=np.int64)
    target = np.full_like(prev_tokens, PAD_ID)
    for row, (src, tgt) in enumerate(pairs):
        n, m = len(src), len(tgt)
        src_tokens[row, :n] = src
        src_tokens[row, n] = EOS_ID
        prev_tokens[row, 0] = BOS_ID
        prev_tokens[row, 1 : m + 1] = tgt
        target[row, :m] = tgt
        target[row, m] = EOS_ID
    return Batch(
        src_tokens=torch.from_numpy(src_tokens),
        src_lengths=torch.from_numpy(src_lengths),
        prev_tokens=torch.from_numpy(prev_tokens),
        target=torch.from_numpy(target),
        ids=torch.tensor(list(ids), dtype=torch.int64),
        ntokens=int(tgt_lengths.sum()),
    )


class TokenBatchSampler:
    """Yields lists of pair indices: this rank's batches of one epoch, from a saved position.

    Budget: every batch of two or more pairs satisfies `len(batch) * max(src_len + 1) <= max_tokens`
    and `len(batch) * max(tgt_len + 1) <= max_tokens` (padding counted, +1 for EOS/BOS). A single
    pair longer than `max_tokens` is not dropped: it goes alone in its own batch, the only case where
    a batch exceeds the budget (filter long pairs when preparing the data if that must not happen).

    Batches are built once: pairs sorted by (target length, source length), ties broken by a seeded
    random order, then cut greedily. Their composition is fixed; their order is shuffled per epoch by
    (seed, epoch) (or kept in length order when `shuffle=False`, for validation). Rank r takes
    batches r, r + world_size, ... of the epoch's order. So that every rank takes the same number of
    steps and every pair is seen exactly once per epoch, the largest batches are split in two until
    the batch count divides by `world_size * multiple_of`. The trainer passes its `update_freq` as
    `multiple_of`: an epoch is then a whole number of updates, and the batches are the same for every
    split of one global batch into ranks x accumulation steps (2 ranks x 1 equals 1 rank x 2).

    Epochs: `__iter__` yields the rest of the current epoch from `position`, then moves to the next
    epoch (epoch + 1, position 0) once the caller has taken the last batch. `state_dict()` gives
    {"epoch", "position"} where position counts the batches already handed out in this epoch;
    a sampler given that state by `load_state_dict` continues with exactly the batches the original
    would have yielded. `global_state()` says the same in terms of the epoch's global order (the
    batches all ranks together have taken), which a sampler on another number of ranks continues
    from (`load_global_state`): what a checkpoint stores. (Behind a prefetching loader, save the
    state after the batches the training loop consumed, as `data/loader.py` does.)
    """

    def __init__(
        self,
        src_sizes: Sequence[int] | np.ndarray,
        tgt_sizes: Sequence[int] | np.ndarray,
        *,
        max_tokens: int,
        shuffle: bool = True,
        seed: int = 1,
        rank: int = 0,
        world_size: int = 1,
        multiple_of: int = 1,
    ) -> None:
        src_sizes, tgt_sizes = _as_sizes(src_sizes), _as_sizes(tgt_sizes)  # no copy of an integer array
        if src_sizes.shape != tgt_sizes.shape or src_sizes.ndim != 1:
            raise ValueError(f"src_sizes {src_sizes.shape} and tgt_sizes {tgt_sizes.shape} must be equal 1-d")
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be positive, got {max_tokens}")
        if multiple_of < 1:
            raise ValueError(f"multiple_of must be positive, got {multiple_of}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1} (world_size {world_size})")
        self.shuffle, self.seed, self.rank, self.world_size = shuffle, seed, rank, world_size
        self.max_tokens, self.multiple_of = max_tokens, multiple_of
        self.batches = _even_batches(_pack(src_sizes, tgt_sizes, max_tokens, seed), world_size * multiple_of)
        self.epoch, self.position = 0, 0

    def __len__(self) -> int:
        """Batches per rank per epoch."""
        return len(self.batches) // self.world_size

    def _epoch_order(self, epoch: int) -> np.ndarray:
        """Which of `self.batches` this rank takes in `epoch`, in order."""
        order = np.arange(len(self.batches))
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.batches))
        return order[self.rank :: self.world_size]

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches of `epoch`, in order (what iterating a whole epoch yields)."""
        return [self.batches[b].tolist() for b in self._epoch_order(epoch)]

    def __iter__(self) -> Iterator[list[int]]:
        order = self._epoch_order(self.epoch)
        while self.position < len(order):
            self.position += 1
            yield self.batches[order[self.position - 1]].tolist()
        self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position <= len(self):
            raise ValueError(
                f"sampler state {state} does not fit this data: {len(self)} batches per epoch on each rank; "
                "was the checkpoint made with other data, max_tokens or world size?"
            )
        self.epoch, self.position = epoch, position

    def global_state(self) -> dict[str, int]:
        """The position in the epoch's global order: {"epoch", "batches_done" by all ranks together,
        "epoch_batches"}. It is the same for every split of one global batch into ranks x update_freq."""
        return {
            "epoch": self.epoch,
            "batches_done": self.position * self.world_size,
            "epoch_batches": len(self.batches),
        }

    def load_global_state(self, state: dict[str, int]) -> bool:
        """Continue from the `global_state()` of a sampler over the same pairs on any number of ranks.

        Returns whether the continuation is exact. It is not when that sampler cut the epoch into
        another number of batches (another max_tokens, or another global batch ranks x update_freq)
        or stopped inside an update of ours: this sampler then goes on from the same fraction of the
        epoch, at the start of an update, so that the rest of the epoch may skip or repeat a few pairs.
        """
        epoch, done, total = int(state["epoch"]), int(state["batches_done"]), int(state["epoch_batches"])
        if total != len(self.batches):
            done = done * len(self.batches) // max(total, 1)
        update = self.world_size * self.multiple_of  # global batches of one update
        exact = total == len(self.batches) and done % update == 0
        self.load_state_dict({"epoch": epoch, "position": (done - done % update) // self.world_size})
        return exact


def _as_sizes(sizes: Sequence[int] | np.ndarray) -> np.ndarray:
    sizes = np.asarray(sizes)
    return sizes if np.issubdtype(sizes.dtype, np.integer) else sizes.astype(np.int64)


class PackedBatches:
    """Batches of pair indices, stored as two flat arrays: `order`, every pair's index in batch order,
    and `bounds`, where each batch starts in it (and the end). Batch b is `order[bounds[b]:bounds[b + 1]]`.
    For a corpus of millions of pairs that is two compact arrays, not an array object per batch."""

    def __init__(self, order: np.ndarray, bounds: np.ndarray) -> None:
        self.order, self.bounds = order, bounds

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def __getitem__(self, b: int) -> np.ndarray:
        return self.order[self.bounds[b] : self.bounds[b + 1]]

    def sizes(self) -> np.ndarray:
        """(num_batches,) pairs per batch."""
        return np.diff(self.bounds)


_PACK_CHUNK = 1 << 16  # pairs whose sizes are turned into Python ints at a time


def _pack(src_sizes: np.ndarray, tgt_sizes: np.ndarray, max_tokens: int, seed: int) -> PackedBatches:
    """Cut the length-sorted pairs greedily into batches within the padded token budget."""
    tie_break = np.random.default_rng(seed).permutation(len(src_sizes))
    order = np.lexsort((tie_break, src_sizes, tgt_sizes))  # the last key sorts first
    del tie_break
    starts, start, src_max, tgt_max = [0], 0, 0, 0
    # A plain loop over Python ints (half a second per million pairs), a chunk of sizes at a time so
    # that no list of every pair's size is built; only batch starts are kept.
    for offset in range(0, len(order), _PACK_CHUNK):
        chunk = order[offset : offset + _PACK_CHUNK]
        src_padded = (src_sizes[chunk].astype(np.int64) + 1).tolist()  # + EOS
        tgt_padded = (tgt_sizes[chunk].astype(np.int64) + 1).tolist()  # + BOS/EOS
        for j, (src, tgt) in enumerate(zip(src_padded, tgt_padded, strict=True), start=offset):
            if src > src_max:
                src_max = src
            if tgt > tgt_max:
                tgt_max = tgt
            size = j - start + 1
            if size > 1 and (size * src_max > max_tokens or size * tgt_max > max_tokens):
                starts.append(j)  # pair j opens the next batch
                start, src_max, tgt_max = j, src, tgt
    bounds = np.array([*starts, len(order)] if len(order) else [0], dtype=np.int64)
    return PackedBatches(order, bounds)


def _even_batches(batches: PackedBatches, multiple: int) -> PackedBatches:
    """Split the largest batches in two until their number divides by `multiple`."""
    while len(batches) % multiple:
        sizes = batches.sizes()
        largest = int(np.argmax(sizes))  # the first of the largest
        if sizes[largest] < 2:
            raise ValueError(
                f"cannot cut {int(sizes.sum())} pairs into a multiple of {multiple} batches (ranks x update_freq); "
                "use fewer ranks, a smaller update_freq or more data"
            )
        half = batches.bounds[largest] + sizes[largest] // 2
        batches.bounds = np.insert(batches.bounds, largest + 1, half)
    return batches
