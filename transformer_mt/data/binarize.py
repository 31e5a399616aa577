"""Binarized token arrays: subword ids on disk, memory-mapped for training.

One array is two files, in the manner of fairseq's mmap datasets:
- `<name>.bin`: every sequence's ids back to back, uint16 when the vocabulary has fewer than 65536
  entries (it always does for the paper's 37000 and 32000 merges), else int32;
- `<name>.idx`: int64 offsets in .npy format; sequence i is `bin[offsets[i]:offsets[i + 1]]`.
Sequences hold the ids without BOS or EOS (docs/design.md); `collate` adds them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from itertools import chain
from pathlib import Path

import numpy as np

from transformer_mt.data.batching import Batch, collate


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size < 65536 else np.dtype(np.int32)


@contextmanager
def naming_the_file(path: str | Path) -> Iterator[None]:
    """Writes inside name `path` in an OSError that names no file (a full disk says only "No space
    left on device"), so that the one-line error says which file could not be written."""
    try:
        yield
    except OSError as err:
        if err.filename is not None:
            raise
        reason = err.strerror or str(err) or type(err).__name__
        raise OSError(err.errno, f"{reason}, writing (disk full? a file size limit?)", str(path)) from None


def _paths(prefix: str | Path) -> tuple[Path, Path]:
    return Path(f"{prefix}.bin"), Path(f"{prefix}.idx")


class TokenArrayWriter:
    """Streams sequences of ids to `<prefix>.bin`; `close()` writes the offsets to `<prefix>.idx`."""

    def __init__(self, prefix: str | Path, *, vocab_size: int) -> None:
        self.bin_path, self.idx_path = _paths(prefix)
        self.dtype = token_dtype(vocab_size)
        self._file = self.bin_path.open("wb")
        self._lengths: list[np.ndarray] = []  # 8 bytes a sequence: 36 MB for WMT14's 4.5M sentences
        self.num_tokens = 0

    def add(self, sequences: Sequence[Sequence[int]]) -> None:
        lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=len(sequences))
        total = int(lengths.sum())
        tokens = np.fromiter(chain.from_iterable(sequences), dtype=self.dtype, count=total)
        with naming_the_file(self.bin_path):
            self._file.write(tokens.tobytes())
        self._lengths.append(lengths)
        self.num_tokens += total

    def close(self) -> int:
        """Finish both files; returns the number of sequences written."""
        with naming_the_file(self.bin_path):
            self._file.close()
        lengths = np.concatenate([np.zeros(1, np.int64), *self._lengths])
        with naming_the_file(self.idx_path), self.idx_path.open("wb") as f:
            np.save(f, np.cumsum(lengths))
        return len(lengths) - 1

    def __enter__(self) -> TokenArrayWriter:
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()
        else:
            self._file.close()


def write_token_array(prefix: str | Path, sequences: Sequence[Sequence[int]], *, vocab_size: int) -> None:
    with TokenArrayWriter(prefix, vocab_size=vocab_size) as writer:
        writer.add(sequences)


class TokenArray:
    """Read-only, memory-mapped sequences of ids written by `TokenArrayWriter`."""

    def __init__(self, prefix: str | Path) -> None:
        bin_path, idx_path = _paths(prefix)
        for path in (bin_path, idx_path):
            if not path.is_file():
                raise FileNotFoundError(f"{path}: binarized data missing; run prepare again")
        # The offsets stay on disk (memory-mapped: ranks on one machine share the pages); the sizes are
        # the one copy per process, int32: 18 MB for WMT14's 4.5M sentences.
        self.offsets = np.asarray(np.load(idx_path, mmap_mode="r"))
        self.sizes = np.diff(self.offsets).astype(np.int32)  # (num_sequences,) ids per sequence
        num_tokens, num_bytes = int(self.offsets[-1]), bin_path.stat().st_size
        if num_tokens == 0:
            self._data = np.zeros(0, dtype=np.uint16)  # an empty file cannot be memory-mapped
        elif num_bytes in (2 * num_tokens, 4 * num_tokens):
            dtype = np.uint16 if num_bytes == 2 * num_tokens else np.int32
            self._data = np.memmap(bin_path, dtype=dtype, mode="r")
        else:
            raise ValueError(
                f"{bin_path}: {num_bytes} bytes do not hold the {num_tokens} ids listed in {idx_path} "
                "(an interrupted prepare?); run prepare again"
            )

    def __len__(self) -> int:
        return len(self.sizes)

    @property
    def num_tokens(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int) -> np.ndarray:
        return self._data[self.offsets[i] : self.offsets[i + 1]]


class ParallelDataset:
    """Aligned source and target token arrays; item i is the pair (source ids, target ids)."""

    def __init__(self, src: TokenArray, tgt: TokenArray) -> None:
        if len(src) != len(tgt):
            raise ValueError(f"source has {len(src)} sequences but target has {len(tgt)}; run prepare again")
        self.src, self.tgt = src, tgt

    def __len__(self) -> int:
        return len(self.src)

    @property
    def src_sizes(self) -> np.ndarray:
        return self.src.sizes

    @property
    def tgt_sizes(self) -> np.ndarray:
        return self.tgt.sizes

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.src[i], self.tgt[i]

    def batch(self, indices: Sequence[int]) -> Batch:
        """The padded `Batch` of these pairs (indices as yielded by `TokenBatchSampler`)."""
        return collate([self[i] for i in indices], indices)
