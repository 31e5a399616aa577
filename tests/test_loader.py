"""The background batch loader: the same updates as collating inline, the position of what was taken."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tests.helpers import write_token_array
from transformer_mt.data.batching import TokenBatchSampler
from transformer_mt.data.binarize import ParallelDataset, TokenArray
from transformer_mt.data.loader import BatchLoader


@pytest.fixture
def dataset(tmp_path) -> ParallelDataset:
    rng = np.random.default_rng(0)
    src = [rng.integers(4, 90, rng.integers(1, 20)).tolist() for _ in range(300)]
    tgt = [rng.integers(4, 90, rng.integers(1, 20)).tolist() for _ in range(300)]
    write_token_array(tmp_path / "src", src, vocab_size=100)
    write_token_array(tmp_path / "tgt", tgt, vocab_size=100)
    return ParallelDataset(TokenArray(tmp_path / "src"), TokenArray(tmp_path / "tgt"))


def sampler(dataset: ParallelDataset, **kwargs) -> TokenBatchSampler:
    return TokenBatchSampler(dataset.src_sizes, dataset.tgt_sizes, max_tokens=120, seed=3, multiple_of=2, **kwargs)


def ids(update) -> list[list[int]]:
    return [batch.ids.tolist() for batch in update]


def test_background_loader_hands_over_the_updates_of_inline_collation(dataset):
    inline = BatchLoader(dataset, sampler(dataset), update_freq=2, prefetch=0)
    updates = 2 * len(inline.sampler) // 2 + 3  # into the third epoch
    expected = [next(inline) for _ in range(updates)]
    with BatchLoader(dataset, sampler(dataset), update_freq=2, prefetch=3) as background:
        got = [next(background) for _ in range(updates)]
    assert [ids(u) for u in got] == [ids(u) for u in expected]
    for a, b in zip(got[-1], expected[-1], strict=True):
        assert a.src_tokens.equal(b.src_tokens) and a.target.equal(b.target) and a.ntokens == b.ntokens


def test_state_is_what_the_loop_took_not_what_the_thread_prepared(dataset):
    with BatchLoader(dataset, sampler(dataset), update_freq=2, prefetch=4) as loader:
        taken = [next(loader) for _ in range(5)]
        deadline = time.monotonic() + 30
        while not loader._queue.full() and time.monotonic() < deadline:
            time.sleep(0.01)  # the thread is 4 updates ahead of the loop
        assert loader.sampler.state_dict()["position"] >= 2 * (5 + 4)
        state = loader.global_state()
        assert state["batches_done"] == 2 * 5 and loader.epochs == pytest.approx(10 / len(loader.sampler.batches))
        following = next(loader)

    resumed = BatchLoader(dataset, sampler(dataset), update_freq=2, prefetch=2)
    assert resumed.load_global_state(state) is True
    with resumed:
        assert ids(next(resumed)) == ids(following)
    assert len(taken) == 5


def test_an_error_while_collating_is_raised_in_the_loop(dataset):
    class Broken:
        def batch(self, indices):
            raise OSError("disk gone")

    with BatchLoader(Broken(), sampler(dataset), update_freq=2, prefetch=2) as loader:
        with pytest.raises(OSError, match="disk gone"):
            next(loader)


def test_close_ends_the_thread_even_when_the_queue_is_full(dataset):
    loader = BatchLoader(dataset, sampler(dataset), update_freq=2, prefetch=1)
    next(loader)
    loader.close()
    assert loader._thread is not None and not loader._thread.is_alive()


def test_an_epoch_that_is_not_whole_updates_is_refused(dataset):
    odd = TokenBatchSampler(dataset.src_sizes, dataset.tgt_sizes, max_tokens=120, seed=3)
    if len(odd) % 2 == 0:
        odd.batches.append(odd.batches[-1])
    with pytest.raises(ValueError, match="multiple of update_freq=2"):
        BatchLoader(dataset, odd, update_freq=2)
