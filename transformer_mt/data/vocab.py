"""The joint sentencepiece BPE vocabulary shared by source and target (paper section 5.1).

Special ids are fixed for every model: pad 0, unk 1, bos 2, eos 3. The trained model is kept as
bytes as well as a file, so that a checkpoint can carry it and `translate` needs nothing else.
`adopt_vocabulary` takes an existing model instead (`data.spm_model`, e.g. one shipped with a
pretrained system): its pieces, scores and normalisation stay as they are, so it segments text
exactly as before; only its special pieces are moved to our ids when they sit elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as model_pb2

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
SPECIALS = ("pad", "unk", "bos", "eos")  # in the order of their ids
_Piece = model_pb2.ModelProto.SentencePiece


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
    """The model with its pad/unk/bos/eos pieces first, in that order; see `adopt_vocabulary`."""
    model = model_pb2.ModelProto()
    model.ParseFromString(proto)
    spec, pieces = model.trainer_spec, [_copy(p) for p in model.pieces]
    names = {"pad": spec.pad_piece or "<pad>", "bos": spec.bos_piece or "<s>", "eos": spec.eos_piece or "</s>"}
    index = {p.piece: i for i, p in enumerate(pieces)}
    first: list = []  # the special pieces, in the order of our ids
    taken: set[int] = set()  # their positions in the model
    for role, i in zip(SPECIALS, ids, strict=True):
        if i >= 0:  # sentencepiece gives an id only to a control piece (the unknown piece for unk)
            first.append(pieces[i])
            taken.add(i)
            continue
        # None (pad, bos or eos: every model has an unk piece): a control piece is added, under the
        # usual text unless that is an ordinary piece of the model, which then stays one.
        text, n = names[role], 0
        while text in index:
            text, n = f"<{role}{n}>", n + 1
        first.append(_Piece(piece=text, score=0.0, type=_Piece.CONTROL))
    ordered = first + [p for i, p in enumerate(pieces) if i not in taken]
    del model.pieces[:]
    model.pieces.extend(ordered)
    spec.pad_id, spec.unk_id, spec.bos_id, spec.eos_id = PAD_ID, UNK_ID, BOS_ID, EOS_ID
    spec.pad_piece, spec.unk_piece = first[0].piece, first[1].piece
    spec.bos_piece, spec.eos_piece = first[2].piece, first[3].piece
    spec.vocab_size = len(ordered)
    return model.SerializeToString()


def _copy(piece):
    copy = _Piece()
    copy.CopyFrom(piece)
    return copy
