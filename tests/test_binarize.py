"""Memory-mapped token arrays and the parallel dataset over them."""

import numpy as np
import pytest
import torch

from tests.helpers import write_token_array
from transformer_mt.data.binarize import ParallelDataset, TokenArray, TokenArrayWriter, token_dtype
from transformer_mt.data.vocab import BOS_ID, EOS_ID, PAD_ID


def test_round_trip_streams_several_chunks(tmp_path):
    chunks = [[[5, 6, 7], [], [8]], [[9, 10, 11, 12]], []]
    with TokenArrayWriter(tmp_path / "train.en", vocab_size=8000) as writer:
        for chunk in chunks:
            writer.add(chunk)
    array = TokenArray(tmp_path / "train.en")
    expected = [seq for chunk in chunks for seq in chunk]
    assert len(array) == 4 and array.num_tokens == 8
    assert array.sizes.tolist() == [3, 0, 1, 4]
    assert [array[i].tolist() for i in range(len(array))] == expected


def test_small_vocabularies_use_two_bytes_and_large_ones_four(tmp_path):
    assert token_dtype(65535) == np.uint16 and token_dtype(65536) == np.int32
    write_token_array(tmp_path / "small", [[65535, 4]], vocab_size=65535)
    write_token_array(tmp_path / "large", [[70000, 4]], vocab_size=80000)
    assert (tmp_path / "small.bin").stat().st_size == 4 and (tmp_path / "large.bin").stat().st_size == 8
    assert TokenArray(tmp_path / "small")[0].tolist() == [65535, 4]
    assert TokenArray(tmp_path / "large")[0].tolist() == [70000, 4]


def test_all_empty_sequences_load(tmp_path):
    write_token_array(tmp_path / "test.de", [[], []], vocab_size=100)
    array = TokenArray(tmp_path / "test.de")
    assert len(array) == 2 and array[1].tolist() == []


def test_truncated_bin_file_is_reported(tmp_path):
    write_token_array(tmp_path / "train.en", [[4, 5, 6]], vocab_size=100)
    (tmp_path / "train.en.bin").write_bytes(b"\x04\x00")
    with pytest.raises(ValueError, match="interrupted prepare"):
        TokenArray(tmp_path / "train.en")


def test_missing_files_are_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"train\.en\.bin"):
        TokenArray(tmp_path / "train.en")


def test_parallel_dataset_pairs_and_collates(tmp_path):
    write_token_array(tmp_path / "src", [[4, 5], [6], [7, 8, 9]], vocab_size=100)
    write_token_array(tmp_path / "tgt", [[10], [11, 12, 13], []], vocab_size=100)
    dataset = ParallelDataset(TokenArray(tmp_path / "src"), TokenArray(tmp_path / "tgt"))
    assert (
        len(dataset) == 3
        and dataset.src_sizes.tolist() == [2, 1, 3]
        and dataset.tgt_sizes.tolist() == [1, 3, 0]
    )
    assert [a.tolist() for a in dataset[1]] == [[6], [11, 12, 13]]
    batch = dataset.batch([2, 0])
    E, B, P = EOS_ID, BOS_ID, PAD_ID
    assert batch.src_tokens.tolist() == [[7, 8, 9, E], [4, 5, E, P]]
    assert batch.prev_tokens.tolist() == [[B, P], [B, 10]]
    assert batch.target.tolist() == [[E, P], [10, E]]
    assert batch.ids.tolist() == [2, 0] and batch.ntokens == 3
    assert batch.src_tokens.dtype == torch.int64


def test_unequal_sides_are_refused(tmp_path):
    write_token_array(tmp_path / "src", [[4], [5]], vocab_size=100)
    write_token_array(tmp_path / "tgt", [[4]], vocab_size=100)
    with pytest.raises(ValueError, match="source has 2 sequences but target has 1"):
        ParallelDataset(TokenArray(tmp_path / "src"), TokenArray(tmp_path / "tgt"))


def test_a_subset_is_a_view_with_its_own_sizes_and_the_datasets_ids(tmp_path):
    write_token_array(tmp_path / "src", [[4, 5], [6], [7, 8, 9], [10]], vocab_size=100)
    write_token_array(tmp_path / "tgt", [[10], [11, 12, 13], [], [14, 15]], vocab_size=100)
    dataset = ParallelDataset(TokenArray(tmp_path / "src"), TokenArray(tmp_path / "tgt"))
    view = dataset.subset([3, 0])
    assert len(view) == 2 and view.src_sizes.tolist() == [1, 2] and view.tgt_sizes.tolist() == [2, 1]
    assert [a.tolist() for a in view[0]] == [[10], [14, 15]]
    batch = view.batch([1, 0])
    assert batch.ids.tolist() == [0, 3]
    assert batch.src_tokens.tolist() == dataset.batch([0, 3]).src_tokens.tolist()


def test_within_positions_keeps_the_pairs_whose_sides_fit_with_eos_and_bos(tmp_path):
    write_token_array(tmp_path / "src", [[4, 5], [6], [7, 8, 9]], vocab_size=100)
    write_token_array(tmp_path / "tgt", [[10], [11, 12, 13], []], vocab_size=100)
    dataset = ParallelDataset(TokenArray(tmp_path / "src"), TokenArray(tmp_path / "tgt"))
    assert dataset.within_positions(None) is dataset and dataset.within_positions(4) is dataset
    fitting = dataset.within_positions(3)  # 2 ids + EOS fit in 3 positions, 3 ids + EOS do not
    assert fitting.indices.tolist() == [0] and fitting.batch([0]).ids.tolist() == [0]
    assert len(dataset.within_positions(1)) == 0
