"""Training batches, one update at a time, collated in a background thread while the current step runs.

`TokenBatchSampler` says which pairs go together; turning them into padded tensors (`collate`) is
Python work on the host that would otherwise sit between two steps. `BatchLoader` does it for the
next `prefetch` updates in a thread (and pins the tensors when they go to a GPU, so that their copy
overlaps with compute; PyTorch's DataLoader does the same with `pin_memory=True`), and hands them
over one update, `update_freq` batches, at a time.

The thread runs ahead of the training loop, so the sampler's own position is not what the loop has
trained on. The loader keeps the position after the last update the loop took (`global_state`), in
the sampler's global terms, and that is what a checkpoint stores. `prefetch=0` collates on the
caller's thread, as the trainer did before; `wait_seconds` is the time the caller spent waiting for
batches (collating them, with `prefetch=0`), which the training log reports as a share of the time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from queue import Empty, Full, Queue
from typing import Any, Protocol

from transformer_mt.data.batching import Batch, TokenBatchSampler

Update = tuple[list[Batch], dict[str, int]]  # one update's batches, and the sampler's global state after it


class Pairs(Protocol):
    """What the loader reads: a `ParallelDataset` or a view of one (`PairSubset`)."""

    def batch(self, indices: list[int]) -> Batch: ...


class BatchLoader:
    def __init__(
        self,
        dataset: Pairs,
        sampler: TokenBatchSampler,
        *,
        update_freq: int,
        pin_memory: bool = False,
        prefetch: int = 2,
    ) -> None:
        if len(sampler) == 0 or len(sampler) % update_freq:
            raise ValueError(
                f"the sampler's {len(sampler)} batches per epoch are not a positive multiple of "
                f"update_freq={update_freq}; build it with multiple_of=update_freq"
            )
        if prefetch < 0:
            raise ValueError(f"prefetch must be 0 (collate on the caller's thread) or more, got {prefetch}")
        self.dataset, self.sampler = dataset, sampler
        self.update_freq, self.pin_memory, self.prefetch = update_freq, pin_memory, prefetch
        self.wait_seconds = 0.0
        self._taken = sampler.global_state()
        self._updates: Iterator[Update] | None = None
        self._queue: Queue[Update | BaseException] = Queue(maxsize=max(prefetch, 1))
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # ------------------------------------------------------------------ the position of what was taken

    def global_state(self) -> dict[str, int]:
        """The sampler position after the last update taken (what a checkpoint stores)."""
        return dict(self._taken)

    def load_global_state(self, state: dict[str, int]) -> bool:
        """Continue from a checkpoint's position; before the first update is taken. Returns whether
        the continuation is exact (see `TokenBatchSampler.load_global_state`)."""
        if self._updates is not None:
            raise RuntimeError("load_global_state after the loader started")
        exact = self.sampler.load_global_state(state)
        self._taken = self.sampler.global_state()
        return exact

    @property
    def epochs(self) -> float:
        """Epochs done, counting the updates taken."""
        state = self._taken
        return state["epoch"] + state["batches_done"] / max(state["epoch_batches"], 1)

    # ------------------------------------------------------------------ handing over updates

    def __iter__(self) -> BatchLoader:
        return self

    def __next__(self) -> list[Batch]:
        start = time.perf_counter()
        if self._updates is None:
            self._updates = self._collated_updates()
            if self.prefetch:
                self._thread = threading.Thread(target=self._produce, name="batch-loader", daemon=True)
                self._thread.start()
        batches, self._taken = next(self._updates) if not self.prefetch else self._take()
        self.wait_seconds += time.perf_counter() - start
        return batches

    def _collated_updates(self) -> Iterator[Update]:
        """Every update's batches, epoch after epoch, from the sampler's position. An epoch holds a
        whole number of updates, so an update never spans two."""
        while True:
            group: list[Batch] = []
            for indices in self.sampler:
                batch = self.dataset.batch(indices)
                group.append(batch.pin_memory() if self.pin_memory else batch)
                if len(group) == self.update_freq:
                    yield group, self.sampler.global_state()
                    group = []

    def _produce(self) -> None:
        """The background thread: collate ahead until `prefetch` updates wait, or until closed."""
        assert self._updates is not None
        try:
            for update in self._updates:
                if not self._put(update):
                    return
        except BaseException as err:  # handed to the training loop, raised there
            self._put(err)

    def _put(self, item: Update | BaseException) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except Full:
                continue
        return False

    def _take(self) -> Update:
        while True:
            try:
                item = self._queue.get(timeout=1.0)
            except Empty:
                if self._thread is not None and not self._thread.is_alive():
                    raise RuntimeError("the batch loader's thread ended without a word") from None
                continue
            if isinstance(item, BaseException):
                raise item
            return item

    def close(self) -> None:
        """Stop the background thread (the loader cannot be used afterwards)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> BatchLoader:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


__all__ = ["BatchLoader"]
