"""The joint sentencepiece BPE vocabulary shared by source and target (paper section 5.1).

Special ids are fixed for every model: pad 0, unk 1, bos 2, eos 3. The trained model is kept as
bytes as well as a file, so that a checkpoint can carry it and `translate` needs nothing else.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


class Vocabulary:
    """Text <-> subword ids through one sentencepiece model."""

    pad_id, unk_id, bos_id, eos_id = PAD_ID, UNK_ID, BOS_ID, EOS_ID

    def __init__(self, model_proto: bytes) -> None:
        self._proto = model_proto
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        ids = (self._sp.pad_id(), self._sp.unk_id(), self._sp.bos_id(), self._sp.eos_id())
        if ids != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
            raise ValueError(
                f"sentencepiece model has special ids pad/unk/bos/eos = {ids}, expected "
                f"{(PAD_ID, UNK_ID, BOS_ID, EOS_ID)}; train it with transformer_mt.data.vocab.train_vocabulary"
            )

    @classmethod
    def from_file(cls, path: str | Path) -> Vocabulary:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"sentencepiece model not found: {path}")
        try:
            return cls(path.read_bytes())
        except RuntimeError as err:
            raise ValueError(f"{path}: not a sentencepiece model ({err})") from None

    def to_bytes(self) -> bytes:
        return self._proto

    def __len__(self) -> int:
        return self._sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        """Subword ids of one line, without BOS or EOS."""
        return self._sp.encode(text, out_type=int)

    def encode_batch(self, lines: list[str], num_threads: int = 1) -> list[list[int]]:
        return self._sp.encode(lines, out_type=int, num_threads=num_threads)

    def decode(self, ids: Iterable[int]) -> str:
        """Detokenized text; special ids are dropped."""
        return self._sp.decode([i for i in ids if i > EOS_ID])

    def pieces(self, text: str) -> list[str]:
        return self._sp.encode(text, out_type=str)

    def id_pieces(self, ids: Iterable[int]) -> list[str]:
        """The piece of each id, special ids included ("<s>", "</s>", ...)."""
        return [self._sp.id_to_piece(int(i)) for i in ids]


def train_vocabulary(
    lines: Iterable[str],
    model_prefix: str | Path,
    *,
    vocab_size: int,
    character_coverage: float = 1.0,
    model_type: str = "bpe",
    num_threads: int = 2,
    seed_sentencepiece_size: int = 1_000_000,
) -> Vocabulary:
    """Train a joint model on `lines` (already a bounded sample) and write `<prefix>.model`/`.vocab`."""
    model_prefix = Path(model_prefix)
    model_prefix.parent.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_prefix=str(model_prefix),
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=character_coverage,
        pad_id=PAD_ID,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        num_threads=num_threads,
        seed_sentencepiece_size=seed_sentencepiece_size,
        input_sentence_size=0,
        max_sentence_length=1 << 16,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    return Vocabulary.from_file(f"{model_prefix}.model")
