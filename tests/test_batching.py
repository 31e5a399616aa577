"""Token-budget batches over ranks and epochs, and the padded Batch."""

from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from transformer_mt.data import batching
from transformer_mt.data.batching import Batch, TokenBatchSampler, collate
from transformer_mt.data.vocab import BOS_ID, EOS_ID, PAD_ID


def random_sizes(n: int, seed: int = 0, high: int = 40) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, high, n), rng.integers(0, high, n)


def rank_samplers(src, tgt, world_size: int, **kwargs) -> list[TokenBatchSampler]:
    return [TokenBatchSampler(src, tgt, rank=r, world_size=world_size, **kwargs) for r in range(world_size)]


def assert_within_budget(batches, src, tgt, max_tokens: int) -> None:
    for batch in batches:
        if len(batch) > 1:  # a single over-long pair may exceed it, alone
            assert len(batch) * (src[batch].max() + 1) <= max_tokens
            assert len(batch) * (tgt[batch].max() + 1) <= max_tokens


def test_collate_adds_eos_and_bos_and_pads():
    pairs = [(np.array([4, 5, 6]), np.array([7])), (np.array([8]), np.array([9, 10]))]
    batch = collate(pairs, [11, 3])
    E, B, P = EOS_ID, BOS_ID, PAD_ID
    assert batch.src_tokens.tolist() == [[4, 5, 6, E], [8, E, P, P]]
    assert batch.src_lengths.tolist() == [4, 2]
    assert batch.prev_tokens.tolist() == [[B, 7, P], [B, 9, 10]]
    assert batch.target.tolist() == [[7, E, P], [9, 10, E]]
    assert batch.ids.tolist() == [11, 3] and batch.ntokens == 5 and len(batch) == 2
    assert all(t.dtype == torch.int64 for t in (batch.src_tokens, batch.src_lengths, batch.target, batch.ids))


def test_batch_to_moves_every_tensor():
    batch = collate([(np.array([4]), np.array([5]))], [0])
    moved = batch.to("meta")
    assert isinstance(moved, Batch) and moved.ntokens == 2  # target 5 + EOS
    assert all(t.device.type == "meta" for t in (moved.src_tokens, moved.src_lengths, moved.prev_tokens))
    assert all(t.device.type == "meta" for t in (moved.target, moved.ids))
    assert batch.src_tokens.device.type == "cpu"


def test_two_ranks_see_every_pair_exactly_once_with_equal_step_counts():
    src, tgt = random_sizes(1001)
    samplers = rank_samplers(src, tgt, 2, max_tokens=200, seed=3)
    for epoch in range(2):
        per_rank = [list(sampler) for sampler in samplers]
        assert len(per_rank[0]) == len(per_rank[1]) == len(samplers[0])
        seen = Counter(i for batches in per_rank for batch in batches for i in batch)
        assert sorted(seen) == list(range(1001)) and set(seen.values()) == {1}, f"epoch {epoch}"
        assert all(sampler.state_dict() == {"epoch": epoch + 1, "position": 0} for sampler in samplers)


def test_batches_respect_the_token_budget_counting_padding():
    src, tgt = random_sizes(500, seed=1)
    sampler = TokenBatchSampler(src, tgt, max_tokens=120)
    batches = list(sampler)
    assert_within_budget(batches, src, tgt, 120)
    assert max(len(b) for b in batches) > 1


def test_a_pair_longer_than_the_budget_goes_alone():
    src, tgt = np.array([3, 3, 500, 3]), np.array([3, 3, 4, 3])
    batches = list(TokenBatchSampler(src, tgt, max_tokens=16, shuffle=False))
    assert [2] in batches and sorted(i for b in batches for i in b) == [0, 1, 2, 3]


def test_largest_batches_are_split_until_ranks_get_equal_counts():
    src = tgt = np.full(10, 4)  # 10 pairs of 5 tokens: one batch of 10 under max_tokens=50
    assert len(TokenBatchSampler(src, tgt, max_tokens=50)) == 1
    samplers = rank_samplers(src, tgt, 4, max_tokens=50)
    sizes = sorted(len(b) for s in samplers for b in s)
    assert len(samplers[0]) == 1 and sum(sizes) == 10 and sizes[-1] - sizes[0] <= 3


def test_fewer_pairs_than_ranks_is_a_clear_error():
    with pytest.raises(ValueError, match="cannot cut 3 pairs into a multiple of 4 batches"):
        TokenBatchSampler([1, 2, 3], [1, 2, 3], max_tokens=100, world_size=4)


def test_order_changes_per_epoch_but_composition_does_not():
    src, tgt = random_sizes(400, seed=2)
    sampler = TokenBatchSampler(src, tgt, max_tokens=100, seed=7)
    first, second = list(sampler), list(sampler)
    assert first != second
    assert sorted(map(tuple, first)) == sorted(map(tuple, second))
    replay = TokenBatchSampler(src, tgt, max_tokens=100, seed=7)
    assert list(replay) == first


def test_equal_lengths_are_bucketed_by_seed_not_by_index():
    src = tgt = np.full(100, 5)
    batches = [list(TokenBatchSampler(src, tgt, max_tokens=60, seed=s, shuffle=False)) for s in (1, 2)]
    assert batches[0][0] != list(range(10)) and batches[0] != batches[1]


def test_without_shuffle_order_is_fixed_and_sorted_by_length():
    src, tgt = random_sizes(300, seed=4)
    sampler = TokenBatchSampler(src, tgt, max_tokens=150, shuffle=False)
    first, second = list(sampler), list(sampler)
    assert first == second
    longest = [int(tgt[b].max()) for b in first]
    assert longest == sorted(longest)


@pytest.mark.parametrize("stop_after", [0, 3, 7])
def test_restored_state_continues_with_the_same_batches(stop_after):
    src, tgt = random_sizes(600, seed=5)
    kwargs = dict(max_tokens=150, seed=2, rank=1, world_size=2)
    uninterrupted = TokenBatchSampler(src, tgt, **kwargs)
    expected = list(uninterrupted) + list(uninterrupted)  # two epochs

    interrupted = TokenBatchSampler(src, tgt, **kwargs)
    list(interrupted)  # epoch 0 done
    iterator = iter(interrupted)
    taken = [next(iterator) for _ in range(stop_after)]
    state = interrupted.state_dict()
    assert state == {"epoch": 1, "position": stop_after}

    restored = TokenBatchSampler(src, tgt, **kwargs)
    restored.load_state_dict(state)
    assert taken + list(restored) == expected[len(uninterrupted) :]
    assert restored.state_dict() == {"epoch": 2, "position": 0}


def test_state_at_the_end_of_an_epoch_moves_on_to_the_next():
    src, tgt = random_sizes(200, seed=6)
    sampler = TokenBatchSampler(src, tgt, max_tokens=100)
    epoch0 = iter(sampler)
    for _ in range(len(sampler)):
        next(epoch0)  # the last batch is taken, the generator not yet exhausted
    state = sampler.state_dict()
    assert state == {"epoch": 0, "position": len(sampler)}
    restored = TokenBatchSampler(src, tgt, max_tokens=100)
    restored.load_state_dict(state)
    assert list(restored) == [] and restored.state_dict() == {"epoch": 1, "position": 0}
    assert list(restored) == sampler.epoch_batches(1)


def test_a_state_at_the_start_of_an_epoch_yields_that_epoch():
    src, tgt = random_sizes(200, seed=8)
    sampler = TokenBatchSampler(src, tgt, max_tokens=100)
    next(iter(sampler))
    sampler.load_state_dict({"epoch": 5, "position": 0})
    assert sampler.state_dict() == {"epoch": 5, "position": 0}
    assert list(sampler) == sampler.epoch_batches(5)


def global_batches(samplers: list[TokenBatchSampler], updates: int, update_freq: int) -> list[list[list[int]]]:
    """The next `updates` updates of the ranks' samplers: each the sorted batches of all ranks."""
    iterators = [iter(s) for s in samplers]
    return [sorted(next(it) for it in iterators for _ in range(update_freq)) for _ in range(updates)]


@pytest.mark.parametrize("done", [0, 3, 11])
def test_global_state_continues_on_another_split_of_the_global_batch(done):
    src, tgt = random_sizes(700, seed=9)
    two_ranks = rank_samplers(src, tgt, 2, max_tokens=150, seed=4, multiple_of=1)
    one_rank = TokenBatchSampler(src, tgt, max_tokens=150, seed=4, multiple_of=2)
    assert all((a == b).all() for a, b in zip(two_ranks[0].batches, one_rank.batches, strict=True))
    expected = global_batches([one_rank], len(one_rank) // 2, update_freq=2)  # a whole epoch, 1 x 2
    taken = global_batches(two_ranks, done, update_freq=1)  # 2 x 1 for `done` updates
    state = two_ranks[0].global_state()
    assert state == {"epoch": 0, "batches_done": 2 * done, "epoch_batches": len(one_rank.batches)}
    assert state == two_ranks[1].global_state()

    resumed = TokenBatchSampler(src, tgt, max_tokens=150, seed=4, multiple_of=2)
    assert resumed.load_global_state(state) is True
    rest = global_batches([resumed], len(expected) - done, update_freq=2)
    assert taken + rest == expected


def test_global_state_of_another_cut_goes_on_from_the_same_fraction_of_the_epoch():
    src, tgt = random_sizes(700, seed=9)
    small = TokenBatchSampler(src, tgt, max_tokens=100, seed=4)
    large = TokenBatchSampler(src, tgt, max_tokens=300, seed=4, world_size=2, rank=1, multiple_of=3)
    state = {"epoch": 2, "batches_done": len(small.batches) // 2, "epoch_batches": len(small.batches)}
    assert large.load_global_state(state) is False
    epoch, position = large.state_dict().values()
    assert epoch == 2 and abs(position / len(large) - 0.5) < 3 / len(large) and (2 * position) % 6 == 0


def test_state_from_other_data_is_refused():
    sampler = TokenBatchSampler([1, 2, 3], [1, 2, 3], max_tokens=100)
    with pytest.raises(ValueError, match="does not fit this data"):
        sampler.load_state_dict({"epoch": 0, "position": 5})


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.tuples(st.integers(0, 60), st.integers(0, 60)), min_size=1, max_size=300),
    max_tokens=st.integers(1, 400),
    world_size=st.integers(1, 4),
    seed=st.integers(0, 5),
)
def test_every_pair_once_per_epoch_within_budget_for_any_sizes(sizes, max_tokens, world_size, seed):
    src, tgt = np.array([s for s, _ in sizes]), np.array([t for _, t in sizes])
    kwargs = dict(max_tokens=max_tokens, seed=seed)
    unsharded = len(TokenBatchSampler(src, tgt, **kwargs))
    if -(-unsharded // world_size) * world_size > len(sizes):  # more batches needed than there are pairs
        with pytest.raises(ValueError, match="cannot cut"):
            TokenBatchSampler(src, tgt, world_size=world_size, **kwargs)
        return
    samplers = rank_samplers(src, tgt, world_size, **kwargs)
    per_rank = [list(s) for s in samplers]
    assert len({len(batches) for batches in per_rank}) == 1
    seen = Counter(i for batches in per_rank for batch in batches for i in batch)
    assert sorted(seen) == list(range(len(sizes))) and set(seen.values()) == {1}
    everything = [batch for batches in per_rank for batch in batches]
    assert_within_budget(everything, src, tgt, max_tokens)


def reference_batches(src, tgt, max_tokens: int, seed: int) -> list[list[int]]:
    """The greedy cut of the sampler's docstring, pair by pair: what `_pack` must reproduce exactly."""
    tie_break = np.random.default_rng(seed).permutation(len(src))
    order = np.lexsort((tie_break, src, tgt)).tolist()
    batches: list[list[int]] = []
    for i in order:
        batch = batches[-1] if batches else []
        grown = [*batch, i]
        fits = len(grown) * (max(src[grown]) + 1) <= max_tokens and len(grown) * (max(tgt[grown]) + 1) <= max_tokens
        if batch and fits:
            batch.append(i)
        else:
            batches.append([i])
    return batches


@pytest.mark.parametrize("chunk", [3, 64, 1 << 16])
def test_packed_batches_equal_the_pair_by_pair_cut(monkeypatch, chunk):
    monkeypatch.setattr(batching, "_PACK_CHUNK", chunk)  # chunk boundaries fall inside batches
    src, tgt = random_sizes(700, seed=5)
    sampler = TokenBatchSampler(src.astype(np.int32), tgt.astype(np.uint16), max_tokens=90, seed=4, shuffle=False)
    assert [sampler.batches[b].tolist() for b in range(len(sampler.batches))] == reference_batches(src, tgt, 90, 4)
    assert isinstance(sampler.batches.order, np.ndarray) and sampler.batches.order.shape == (700,)


def test_split_batches_are_the_halves_of_the_largest():
    src, tgt = random_sizes(301, seed=6)
    whole = reference_batches(src, tgt, 120, 1)
    expected = [list(b) for b in whole]
    while len(expected) % 8:
        largest = max(range(len(expected)), key=lambda b: len(expected[b]))
        batch = expected[largest]
        expected[largest : largest + 1] = [batch[: len(batch) // 2], batch[len(batch) // 2 :]]
    sampler = TokenBatchSampler(src, tgt, max_tokens=120, world_size=2, multiple_of=4, shuffle=False)
    assert [sampler.batches[b].tolist() for b in range(len(sampler.batches))] == expected
