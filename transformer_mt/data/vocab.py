"""The joint sentencepiece BPE vocabulary shared by source and target (paper section 5.1).

Special ids are fixed for every model: pad 0, unk 1, bos 2, eos 3. The trained model is kept as
bytes as well as a file, so that a checkpoint can carry it and `translate` needs nothing else.
`adopt_vocabulary` takes an existing model instead (`data.spm_model`, e.g. one shipped with a
pretrained system): its pieces, scores and normalisation stay as they are, so it segments text
exactly as before; only its special pieces are moved to our ids when they sit elsewhere.

Two vocabularies are the same when they turn text into the same ids and back (`vocabulary_difference`):
the same pieces with the same scores and types, the same normalization and the same encoding options.
Their bytes are not compared: the serialized model also records how it was trained, the absolute
`model_prefix` path among it, so the vocabulary of the same data prepared in another folder would
differ.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import sentencepiece as spm

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
SPECIALS = ("pad", "unk", "bos", "eos")  # in the order of their ids


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

    def encode_batch(
        self, lines: list[str], num_threads: int = 1, *, dropout: float = 0.0, seed: int = 0
    ) -> list[list[int]]:
        """Subword ids of each line. With `dropout` > 0 the segmentation is sampled: for a BPE model
        each merge is skipped with that probability (BPE-dropout, Provilkov et al. 2020), for a
        unigram model `dropout` is sentencepiece's smoothing alpha. Sampling draws from `seed` on one
        thread, so the same lines and seed give the same ids."""
        if dropout <= 0.0:
            return self._sp.encode(lines, out_type=int, num_threads=num_threads)
        spm.set_random_generator_seed(seed)  # process-wide; one thread keeps the draws in line order
        return self._sp.encode(lines, out_type=int, enable_sampling=True, alpha=dropout, nbest_size=-1, num_threads=1)

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
    return [(number, value) for number, value, _ in _wire_spans(message)]


def _wire_spans(message: bytes) -> list[tuple[int, bytes, bytes]]:
    """(field number, encoded value, the whole field with its key) for each field, in order."""
    fields, pos = [], 0
    while pos < len(message):
        field_start = pos
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
        fields.append((number, message[start:pos], message[field_start:pos]))
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
    path = Path(f"{model_prefix}.model")
    try:
        return Vocabulary.from_file(path)
    except ValueError:  # sentencepiece does not report a failed write: the file is cut short
        raise OSError(
            f"{path}: sentencepiece wrote an unreadable model ({path.stat().st_size} bytes); is the disk "
            "full or a file size limit set?"
        ) from None


def special_ids(model_proto: bytes) -> tuple[int, int, int, int]:
    """The (pad, unk, bos, eos) ids of a serialized sentencepiece model; -1 where it has none."""
    sp = spm.SentencePieceProcessor(model_proto=model_proto)
    return sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()


def adopt_vocabulary(path: str | Path, model_prefix: str | Path) -> tuple[Vocabulary, str]:
    """An existing sentencepiece model as our vocabulary, written to `<prefix>.model` and `.vocab`.

    A model with our special ids is copied unchanged. Any other has its four special pieces moved to
    ids 0-3 (pad, unk, bos, eos; a control piece is added for one it lacks, e.g. the pad of
    sentencepiece's default layout unk 0, bos 1, eos 2, no pad); every other piece keeps its text,
    score and type, in its order, so the model splits text exactly as before, with its ids shifted.
    Returns the vocabulary and a line for the log that says what differed and what was done.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"data.spm_model={path}: file not found")
    proto = path.read_bytes()
    try:
        ids = special_ids(proto)
    except RuntimeError as err:
        raise ValueError(
            f"data.spm_model={path}: not a sentencepiece model ({err}); give the .model file that "
            "spm_train or SentencePieceTrainer wrote (not the .vocab)"
        ) from None
    ours = (PAD_ID, UNK_ID, BOS_ID, EOS_ID)
    if ids == ours:
        note = f"data: using the sentencepiece model {path} as it is (its special ids are ours)"
    else:
        proto = _move_specials(proto, ids)
        described = ", ".join(f"{name} {i}" for name, i in zip(SPECIALS, ids, strict=True))
        note = (
            f"data: the sentencepiece model {path} has special ids {described} (-1: none); written with "
            f"ours (pad 0, unk 1, bos 2, eos 3), every other piece unchanged and in its order"
        )
    model_prefix = Path(model_prefix)
    model_prefix.parent.mkdir(parents=True, exist_ok=True)
    vocab = Vocabulary(proto)
    Path(f"{model_prefix}.model").write_bytes(proto)
    sp = spm.SentencePieceProcessor(model_proto=proto)
    Path(f"{model_prefix}.vocab").write_text(
        "".join(f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n" for i in range(len(vocab))), encoding="utf-8"
    )
    return vocab, note


def _move_specials(proto: bytes, ids: tuple[int, int, int, int]) -> bytes:
    """The model with its pad/unk/bos/eos pieces first, in that order; see `adopt_vocabulary`.

    Rewritten in protobuf's wire format, like `vocabulary_difference` reads it: the pieces are
    ModelProto's field 1 in id order, and the trainer_spec fields that name the special ids, their
    pieces and the vocabulary size are replaced; every other field is kept byte for byte.
    """
    top = _wire_spans(proto)
    pieces = [value for number, value, _ in top if number == 1]
    trainer = b"".join(value for number, value, _ in top if number == 2)  # protobuf merges repeats
    spec = {number: value for number, value, _ in _wire_spans(trainer)}  # the last value wins
    texts = {_piece_text(piece) for piece in pieces}
    first: list[bytes] = []  # the special pieces, in the order of our ids
    taken: set[int] = set()  # their positions in the model
    for role, i in zip(SPECIALS, ids, strict=True):
        if i >= 0:  # sentencepiece gives an id only to a control piece (the unknown piece for unk)
            first.append(pieces[i])
            taken.add(i)
            continue
        # None (pad, bos or eos: every model has an unk piece): a control piece is added, under the
        # usual text unless that is an ordinary piece of the model, which then stays one.
        number, default = _SPECIAL_PIECE_FIELDS[role]
        text, n = spec[number].decode("utf-8") if number in spec else default, 0
        while text in texts:
            text, n = f"<{role}{n}>", n + 1
        first.append(
            _field(1, text.encode("utf-8")) + _key(2, 5) + struct.pack("<f", 0.0) + _varint_field(3, 3)
        )
    ordered = first + [piece for i, piece in enumerate(pieces) if i not in taken]
    new_ids = {43: PAD_ID, 40: UNK_ID, 41: BOS_ID, 42: EOS_ID, 4: len(ordered)}  # pad_id..., vocab_size
    new_pieces = {
        _SPECIAL_PIECE_FIELDS[role][0]: _piece_text(piece)
        for role, piece in zip(SPECIALS, first, strict=True)
    }
    kept = [
        raw for number, _, raw in _wire_spans(trainer) if number not in new_ids and number not in new_pieces
    ]
    trainer = b"".join(kept)
    trainer += b"".join(_varint_field(number, value) for number, value in new_ids.items())
    trainer += b"".join(_field(number, text.encode("utf-8")) for number, text in new_pieces.items())
    rest = [raw for number, _, raw in top if number not in (1, 2)]
    return b"".join(_field(1, piece) for piece in ordered) + _field(2, trainer) + b"".join(rest)


# TrainerSpec's fields for each special piece's text, and sentencepiece's default text.
_SPECIAL_PIECE_FIELDS = {"pad": (48, "<pad>"), "unk": (45, "<unk>"), "bos": (46, "<s>"), "eos": (47, "</s>")}


def _key(number: int, wire_type: int) -> bytes:
    return _encode_varint(number << 3 | wire_type)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field: a string, bytes or a message."""
    return _key(number, 2) + _encode_varint(len(payload)) + payload


def _varint_field(number: int, value: int) -> bytes:
    return _key(number, 0) + _encode_varint(value)


def _encode_varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # a negative int32 is written as its 64-bit two's complement
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | 0x80 if value else byte)
        if not value:
            return bytes(out)
