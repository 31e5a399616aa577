"""Checkpoints: the file, written atomically and loaded without ever running code.

A checkpoint is a dict of plain values and tensors (nanoGPT / torchtitan style):

    format, model (state_dict of the unwrapped model), model_config (a plain dict with `arch`),
    vocab_size, sentencepiece (the vocabulary model's bytes), optimizer, scaler, sampler,
    rng (one per rank), step, train_state, cost, config (the resolved run config)

What a training run puts in and takes back out is `training/resume.py`'s part; this module is the
file, shared by training and decoding: `load_for_inference` rebuilds a model for decoding from the
checkpoint alone, and `average_checkpoints` makes the mean of several (paper section 6.1).

Writing goes to a temporary file in the same folder, is flushed and fsync'ed, then renamed over the
final name, so a crash mid-write leaves the previous checkpoint intact. Reading uses
`torch.load(weights_only=True)`: a file that carries a pickled object other than tensors and plain
containers is refused without executing it.

Each file carries a digest of its bytes as the zip archive's comment (a sha256 over the sha256 of
each 16 MiB block, by several threads, while the file is written or read), because nothing else
checks a tensor's bytes: a flipped bit on a disk or in a copy would load and decode silently. A
checkpoint whose bytes do not match its digest is refused, naming the file; one written before
digests loads with a notice.
"""

from __future__ import annotations

import hashlib
import io
import mmap
import os
import pickle
import re
import sys
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from transformer_mt.data.vocab import Vocabulary, vocabulary_difference
from transformer_mt.models import EncoderDecoder, build_model

FORMAT = "transformer-mt/1"
STEP_FILE = re.compile(r"checkpoint_(\d+)\.pt$")
PARTIAL_FILE = re.compile(r"^\..+\.pt\.\w+\.tmp$")  # `save_checkpoint`'s temporary file before its rename
# The digest is the zip archive's comment: a sha256 tree over 16 MiB blocks of every byte before it.
_END_OF_ARCHIVE = b"PK\x05\x06"  # the zip end-of-central-directory record; its last field is the comment
_DIGEST_TAG = b"transformer-mt digest sha256/16MiB:"
_DIGEST_BLOCK = 16 << 20


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message is one line meant for a person."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write `state` to `path` atomically (temp file + fsync + rename), with its digest."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getbuffer()
    if bytes(data[-22:-18]) != _END_OF_ARCHIVE or bytes(data[-2:]) != b"\0\0":
        raise RuntimeError("torch.save did not end its archive with an end record without comment")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f, ThreadPoolExecutor(max_workers=1) as background:
            digest = background.submit(bytes_digest, data[:-2])  # hashed while the bytes are written
            f.write(data[:-2])
            comment = _DIGEST_TAG + digest.result().encode()
            f.write(len(comment).to_bytes(2, "little") + comment)  # the archive's comment: length, text
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise CheckpointError(f"could not write checkpoint {path}: {err.strerror or err}") from err
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def bytes_digest(data: memoryview | mmap.mmap) -> str:
    """sha256 over the sha256 of each 16 MiB block of `data`, the blocks hashed by several threads at
    once (hashlib releases the GIL), so that a large checkpoint's digest costs little wall time."""
    view = memoryview(data)
    blocks = [view[start : start + _DIGEST_BLOCK] for start in range(0, len(view), _DIGEST_BLOCK)]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        parts = list(pool.map(lambda block: hashlib.sha256(block).digest(), blocks))
    for block in blocks:
        block.release()
    view.release()
    return hashlib.sha256(b"".join(parts)).hexdigest()


def _verify_digest(path: Path) -> bool:
    """Whether the file carries a digest (checkpoints written before digests do not); a
    `CheckpointError` if it carries one that its bytes do not match."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        end = data.rfind(_END_OF_ARCHIVE, max(0, len(data) - 22 - 0xFFFF))
        if end < 0:
            return False
        size = int.from_bytes(data[end + 20 : end + 22], "little")
        comment = data[end + 22 :]
        if len(comment) != size or not comment.startswith(_DIGEST_TAG):
            return False
        stored = comment[len(_DIGEST_TAG) :].decode("ascii", errors="replace")
        view = memoryview(data)
        try:
            intact = bytes_digest(view[: end + 20]) == stored  # every byte before the comment's length
        finally:
            view.release()
        if not intact:
            raise CheckpointError(
                f"checkpoint {path} is corrupt: its bytes do not match the digest written with it "
                "(a disk or copy fault); use another checkpoint or copy it again"
            )
    return True


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by `save_checkpoint`, or raise one clear `CheckpointError`."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory, not a checkpoint file{_suggest_file(path)}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty")
    if not zipfile.is_zipfile(path):  # torch.save always writes a zip archive
        raise CheckpointError(f"checkpoint {path} is truncated or not a checkpoint (not a torch.save archive)")
    try:
        with ThreadPoolExecutor(max_workers=1) as background:
            verified = background.submit(_verify_digest, path)  # checked while torch.load reads
            try:
                state = torch.load(path, map_location=map_location, weights_only=True)
            except BaseException:
                verified.result()  # a corrupt file: say so rather than what torch.load tripped over
                raise
            has_digest = verified.result()
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"refusing checkpoint {path}: it holds objects other than tensors and plain values "
            f"and loading it could run code ({first})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"checkpoint {path} is truncated or not a checkpoint ({first})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a transformer-mt checkpoint (expected format {FORMAT!r})")
    if not has_digest:
        print(
            f"transformer-mt: notice: checkpoint {path} has no digest (written before checkpoints carried "
            "one), so its bytes cannot be checked; saving it again adds one",
            file=sys.stderr,
        )
    return state


def _suggest_file(directory: Path) -> str:
    """"; pass RUN/checkpoints/checkpoint_best.pt" for a folder that holds checkpoints, else ""."""
    for folder in (directory / "checkpoints", directory):
        if not folder.is_dir():
            continue
        names = sorted(p.name for p in folder.glob("*.pt") if not p.name.startswith("."))
        for name in ("checkpoint_best.pt", "checkpoint_last.pt", *names):
            if name in names:
                return f"; pass a file in it, e.g. checkpoint={folder / name}"
    return ""


def step_checkpoints(directory: str | Path) -> list[Path]:
    """`checkpoint_<step>.pt` files in `directory`, oldest step first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := STEP_FILE.search(p.name))]
    return [p for _, p in sorted(found)]


def remove_partial_writes(directory: str | Path) -> list[Path]:
    """Delete the temporary files of saves that a crash cut short (never a file under a final name)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    partial = [p for p in directory.iterdir() if PARTIAL_FILE.match(p.name)]
    for path in partial:
        path.unlink(missing_ok=True)
    return partial


def rotate(directory: str | Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` step checkpoints (keep_last <= 0 keeps all)."""
    if keep_last <= 0:
        return
    for old in step_checkpoints(directory)[:-keep_last]:
        old.unlink(missing_ok=True)


@dataclass
class InferenceModel:
    """What decoding needs of a checkpoint: the model, its vocabulary and the run's settings."""

    model: EncoderDecoder  # in eval mode, on the device asked for
    vocab: Vocabulary
    model_config: dict[str, Any]
    decoding: dict[str, Any]  # the decoding settings the run validated with ({} if it stored none)
    step: int | None
    path: Path
    languages: tuple[str, str] | None = None  # (source, target) as the run's data config named them


def load_for_inference(path: str | Path, device: str | torch.device = "cpu") -> InferenceModel:
    """The model of a checkpoint, rebuilt from the checkpoint alone, ready to decode."""
    path = Path(path)
    state = load_checkpoint(path)
    try:
        vocab = Vocabulary(state["sentencepiece"])
        model_config = dict(state["model_config"])
        model = build_model(model_config, vocab_size=len(vocab), pad_id=vocab.pad_id)
        params = state["model"]
        decoding = dict((state.get("config") or {}).get("decoding") or {})
        data = (state.get("config") or {}).get("data") or {}
        languages = (data["src_lang"], data["tgt_lang"]) if data.get("src_lang") and data.get("tgt_lang") else None
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as err:
        detail = f"no {err} entry" if isinstance(err, KeyError) else err
        raise CheckpointError(f"checkpoint {path} is incomplete or inconsistent ({detail})") from None
    saved_rows = state.get("vocab_size")  # written since the model's vocabulary size is a property
    if saved_rows is not None and saved_rows != len(vocab):
        raise CheckpointError(
            f"checkpoint {path}: its model has a {saved_rows}-token vocabulary but the "
            f"sentencepiece model it carries has {len(vocab)} pieces"
        )
    try:
        model.load_state_dict(params)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise CheckpointError(f"checkpoint {path} does not fit its model config ({first})") from None
    return InferenceModel(
        model.to(device).eval(), vocab, model_config, decoding, state.get("step"), path, languages
    )


def average_checkpoints(paths: list[Path]) -> dict[str, Any]:
    """A checkpoint whose model parameters are the mean of those of `paths` (paper section 6.1).

    The checkpoints must hold the same vocabulary and the same tensors (names, shapes, dtypes);
    otherwise a `CheckpointError` names the two files and the first difference. Everything else
    (config, vocabulary) is taken from the last checkpoint; the optimiser state is dropped, since an
    average is for decoding, not for resuming.
    """
    if not paths:
        raise CheckpointError("no checkpoints to average")
    total: dict[str, torch.Tensor] = {}
    first: dict[str, Any] = {}
    last: dict[str, Any] = {}
    for path in paths:
        last = load_checkpoint(path)
        params = _model_tensors(last, path)
        if not first:
            first = last
        else:
            _check_same_model(first, paths[0], last, path)
        for name, tensor in params.items():
            if not tensor.is_floating_point():
                total[name] = tensor.clone()
            elif name in total:
                total[name] += tensor.double()
            else:
                total[name] = tensor.double().clone()
    model = {}
    for name, tensor in total.items():
        dtype = last["model"][name].dtype
        model[name] = (tensor / len(paths)).to(dtype) if dtype.is_floating_point else tensor
    keep = ("format", "model_config", "vocab_size", "sentencepiece", "step", "config")
    averaged = {key: last[key] for key in keep if key in last}
    averaged["model"] = model
    averaged["averaged_from"] = [str(p) for p in paths]
    return averaged


def _model_tensors(state: dict[str, Any], path: Path) -> dict[str, torch.Tensor]:
    params = state.get("model")
    if not isinstance(params, dict) or not params:
        raise CheckpointError(f"checkpoint {path} holds no model parameters")
    for name, tensor in params.items():
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"checkpoint {path}: model entry {name!r} is not a tensor")
    return params


def _check_same_model(a: dict[str, Any], path_a: Path, b: dict[str, Any], path_b: Path) -> None:
    """A CheckpointError naming both files unless `a` and `b` hold one vocabulary and the same tensors."""
    cannot = f"cannot average {path_a} and {path_b}"
    vocab_a, vocab_b = a.get("sentencepiece"), b.get("sentencepiece")
    if vocab_a != vocab_b and (difference := vocabulary_difference(vocab_a, vocab_b)):
        raise CheckpointError(f"{cannot}: their vocabularies differ ({difference})")
    params_a, params_b = a["model"], b["model"]
    for name in [*params_a, *(n for n in params_b if n not in params_a)]:
        if name not in params_a or name not in params_b:
            where = path_a if name in params_a else path_b
            raise CheckpointError(f"{cannot}: tensor {name!r} is only in {where}")
    for name, tensor in params_a.items():  # in the model's own order: the first that differs
        other = params_b[name]
        if tensor.shape != other.shape or tensor.dtype != other.dtype:
            raise CheckpointError(
                f"{cannot}: tensor {name!r} is {tuple(tensor.shape)} {tensor.dtype} in the first and "
                f"{tuple(other.shape)} {other.dtype} in the second"
            )


def is_training_checkpoint(state: dict[str, Any]) -> bool:
    """Whether a checkpoint holds a training run's state (what `train` resumes from), not only a model."""
    return "optimizer" in state
