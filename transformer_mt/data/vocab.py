"""The joint sentencepiece BPE vocabulary shared by source and target (paper section 5.1).

Special ids are fixed for every model: pad 0, unk 1, bos 2, eos 3. The trained model is kept as
bytes as well as a file, so that a checkpoint can carry it and `translate` needs nothing else.

Two vocabularies are the same when they turn text into the same ids and back (`vocabulary_difference`):
the same pieces with the same scores and types, the same normalization and the same encoding options.
Their bytes are not compared: the serialized model also records how it was trained, the absolute
`model_prefix` path among it, so the vocabulary of the same data prepared in another folder would
differ.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

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


def vocabulary_difference(a: Vocabulary | bytes | None, b: Vocabulary | bytes | None) -> str | None:
    """What makes two sentencepiece models map text to ids differently, as a phrase for an error
    message (`pieces 57 differ: '▁Haus' vs '▁das'`), or None when they are the same vocabulary.

    Compared: the pieces (text, score, type, in id order), the normalizer and denormalizer, and every
    trainer option except those that only say how training ran (its input, `model_prefix`, threads,
    sample sizes...: `_TRAINING_ONLY`). Trainer options that shape the pieces (vocab_size, coverage)
    are covered by comparing the pieces. The model is read in protobuf's wire format directly:
    sentencepiece's generated `sentencepiece_model_pb2` accepts only one protobuf runtime version.
    """
    parsed = []
    for vocab in (a, b):
        proto = vocab.to_bytes() if isinstance(vocab, Vocabulary) else vocab
        if not isinstance(proto, bytes) or not proto:
            return "one of them has no sentencepiece model"
        try:
            parsed.append(_model_parts(proto))
        except ValueError as err:
            return f"one of them is not a sentencepiece model ({err})"
    (pieces_a, specs_a), (pieces_b, specs_b) = parsed
    if len(pieces_a) != len(pieces_b):
        return f"they have {len(pieces_a)} and {len(pieces_b)} pieces"
    for index, (piece_a, piece_b) in enumerate(zip(pieces_a, pieces_b, strict=True)):
        if piece_a != piece_b:
            return f"piece {index} differs: {_piece_text(piece_a)!r} vs {_piece_text(piece_b)!r}"
    for name in ("normalizer_spec", "denormalizer_spec"):
        if specs_a[name] != specs_b[name]:
            return f"their normalization differs ({name})"
    for number in sorted(set(specs_a["trainer_spec"]) | set(specs_b["trainer_spec"])):
        if specs_a["trainer_spec"].get(number) != specs_b["trainer_spec"].get(number):
            return f"their trainer_spec.{_TRAINER_FIELDS.get(number, f'field {number}')} differs"
    return None


# sentencepiece_model.proto: ModelProto's messages, and the TrainerSpec fields that only say how
# training ran (not how text becomes ids) by number.
_MODEL_FIELDS = {1: "pieces", 2: "trainer_spec", 3: "normalizer_spec", 5: "denormalizer_spec"}
_TRAINING_ONLY = {1, 2, 4, 5, 6, 7, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 32, 33, 34, 36, 49, 50, 51, 52, 54, 55}
_TRAINER_FIELDS = {
    3: "model_type", 21: "split_by_unicode_script", 22: "split_by_whitespace", 23: "split_by_number",
    24: "treat_whitespace_as_suffix", 25: "split_digits", 26: "allow_whitespace_only_pieces",
    30: "control_symbols", 31: "user_defined_symbols", 35: "byte_fallback", 40: "unk_id", 41: "bos_id",
    42: "eos_id", 43: "pad_id", 44: "unk_surface", 45: "unk_piece", 46: "bos_piece", 47: "eos_piece",
    48: "pad_piece", 53: "pretokenization_delimiter",
}  # fmt: skip


def _model_parts(proto: bytes) -> tuple[list[bytes], dict[str, Any]]:
    """(the encoded pieces in id order, {spec name: its fields}); trainer_spec without _TRAINING_ONLY."""
    pieces: list[bytes] = []
    specs: dict = {"trainer_spec": {}, "normalizer_spec": [], "denormalizer_spec": []}
    for number, value in _wire_fields(proto):
        name = _MODEL_FIELDS.get(number)
        if name == "pieces":
            pieces.append(value)
        elif name == "trainer_spec":
            for field, item in _wire_fields(value):
                if field not in _TRAINING_ONLY:
                    specs["trainer_spec"].setdefault(field, []).append(item)
        elif name is not None:
            specs[name] = _wire_fields(value)
    if not pieces:
        raise ValueError("it has no pieces")
    return pieces, specs


def _piece_text(piece: bytes) -> str:
    texts = [value for number, value in _wire_fields(piece) if number == 1]
    return texts[0].decode("utf-8", errors="replace") if texts else ""


def _wire_fields(message: bytes) -> list[tuple[int, bytes]]:
    """The (field number, encoded value) pairs of a protobuf message, in order."""
    fields, pos = [], 0
    while pos < len(message):
        key, pos = _varint(message, pos)
        number, wire_type = key >> 3, key & 7
        start = pos
        if wire_type == 0:  # varint
            _, pos = _varint(message, pos)
        elif wire_type == 1:  # 64-bit
            pos += 8
        elif wire_type == 2:  # length-delimited: strings, bytes, messages
            length, start = _varint(message, pos)
            pos = start + length
        elif wire_type == 5:  # 32-bit (float)
            pos += 4
        else:
            raise ValueError(f"unexpected protobuf wire type {wire_type}")
        if pos > len(message):
            raise ValueError("truncated protobuf message")
        fields.append((number, message[start:pos]))
    return fields


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated protobuf varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


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
