"""The joint sentencepiece vocabulary (transformer_mt/data/vocab.py): special ids, and when two
vocabularies are the same one (`vocabulary_difference`)."""

from __future__ import annotations

import random

import pytest
import sentencepiece as spm

from transformer_mt.data.vocab import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    UNK_ID,
    Vocabulary,
    train_vocabulary,
    vocabulary_difference,
)

WORDS = "the cat sat on a mat and dog ran to house big small red green blue tree under over".split()


@pytest.fixture(scope="module")
def lines() -> list[str]:
    rng = random.Random(0)
    return [" ".join(rng.choices(WORDS, k=rng.randint(3, 10))) for _ in range(300)]


def test_special_ids_are_fixed(lines, tmp_path):
    vocab = train_vocabulary(lines, tmp_path / "spm", vocab_size=60, num_threads=1)
    assert (vocab.pad_id, vocab.unk_id, vocab.bos_id, vocab.eos_id) == (PAD_ID, UNK_ID, BOS_ID, EOS_ID) == (0, 1, 2, 3)


def test_the_same_data_in_another_folder_is_the_same_vocabulary(lines, tmp_path):
    """The serialized models differ (they record their absolute model_prefix and the thread count)
    but they encode alike: the same vocabulary, so runs can be ensembled and checkpoints moved."""
    a = train_vocabulary(lines, tmp_path / "run_a/data/spm", vocab_size=60, num_threads=1)
    b = train_vocabulary(lines, tmp_path / "elsewhere/run_b/data/spm", vocab_size=60, num_threads=2)
    assert a.to_bytes() != b.to_bytes()
    assert vocabulary_difference(a, b) is None
    assert vocabulary_difference(a.to_bytes(), b) is None  # bytes (as a checkpoint holds them) work too


def test_what_changes_the_ids_is_a_difference(lines, tmp_path):
    base = train_vocabulary(lines, tmp_path / "base", vocab_size=60, num_threads=1)
    bigger = train_vocabulary(lines, tmp_path / "bigger", vocab_size=70, num_threads=1)
    other_text = train_vocabulary(lines[:50] + ["zebra zoo"] * 20, tmp_path / "other", vocab_size=60, num_threads=1)
    assert vocabulary_difference(base, bigger) == "they have 60 and 70 pieces"
    assert vocabulary_difference(base, other_text).startswith("piece ")

    def variant(name: str, **options) -> Vocabulary:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_prefix=str(tmp_path / name), vocab_size=60, model_type="bpe",
            pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID, character_coverage=1.0, num_threads=1,
            seed_sentencepiece_size=1_000_000, input_sentence_size=0, max_sentence_length=1 << 16,
            hard_vocab_limit=False, minloglevel=2, **options,
        )  # fmt: skip
        return Vocabulary.from_file(tmp_path / f"{name}.model")

    assert vocabulary_difference(base, variant("same")) is None  # train_vocabulary's own options
    assert vocabulary_difference(base, variant("identity", normalization_rule_name="identity")) == (
        "their normalization differs (normalizer_spec)"
    )
    assert vocabulary_difference(base, variant("digits", split_digits=True)) == "their trainer_spec.split_digits differs"
    assert vocabulary_difference(base, None) == "one of them has no sentencepiece model"
    assert "not a sentencepiece model" in vocabulary_difference(base, b"\x00garbage")
