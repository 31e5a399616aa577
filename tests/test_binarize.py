"""Memory-mapped token arrays and the parallel dataset over them."""

import numpy as np
import pytest
import torch

from transformer_mt.data.binarize import (
    ParallelDataset,
    TokenArray,
    TokenArrayWriter,
    token_dtype,
    write_token_array,
)
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
