"""Binarized token arrays: subword ids on disk, memory-mapped for training.

`encode_pairs` streams text pairs through sentencepiece into two arrays (source, target). One array
is two files, in the manner of fairseq's mmap datasets:
- `<name>.bin`: every sequence's ids back to back, uint16 when the vocabulary has fewer than 65536
  entries (it always does for the paper's 37000 and 32000 merges), else int32;
- `<name>.idx`: int64 offsets in .npy format; sequence i is `bin[offsets[i]:offsets[i + 1]]`.
Sequences hold the ids without BOS or EOS (docs/design.md); `collate` adds them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from itertools import chain, count, islice
from pathlib import Path
from queue import Queue
from threading import Thread
from typing import TypeVar

import numpy as np

from transformer_mt.data.batching import Batch, collate
from transformer_mt.data.vocab import Vocabulary

T = TypeVar("T")
CHUNK_PAIRS = 50_000  # pairs encoded per call: large enough to keep the threads busy, small in memory


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


def encode_pairs(
    pairs: Iterator[tuple[str, str]],
    vocab: Vocabulary,
    prefixes: Sequence[Path],
    *,
    texts: Sequence[Path] | None = None,
    workers: int = 1,
    bpe_dropout: float = 0.0,
    copies: int = 1,
    seed: int = 0,
    spent: dict[str, float] | None = None,
    progress: Callable[[int], object] = lambda n: None,
) -> dict[str, int]:
    """Encode (source, target) pairs chunk by chunk on `workers` threads into the token arrays
    `prefixes` (source, target), and the text itself into `texts` if given. Reading the pairs (Python)
    runs in a thread ahead of encoding (sentencepiece releases the GIL). With `bpe_dropout` > 0 the
    segmentations are sampled (`Vocabulary.encode_batch`) on one thread, and each chunk is encoded
    `copies` times, copy c of chunk i from the seed (`seed`, i x copies + c): the text is read once
    however many copies are written. Adds to `spent` the seconds spent waiting for text ("read"),
    encoding ("sentencepiece") and writing ("write")."""
    spent = spent if spent is not None else {}
    for part in ("read", "sentencepiece", "write"):
        spent.setdefault(part, 0.0)
    writers = [TokenArrayWriter(prefix, vocab_size=len(vocab)) for prefix in prefixes]
    with ExitStack() as files:
        sinks = [files.enter_context(open(p, "w", encoding="utf-8", newline="\n")) for p in texts or ()]
        chunks = _in_background(_chunks(pairs, CHUNK_PAIRS))
        for index in count():
            tick = time.perf_counter()
            chunk = next(chunks, None)
            spent["read"] += (now := time.perf_counter()) - tick
            if chunk is None:
                break
            sources, targets = [src for src, _ in chunk], [tgt for _, tgt in chunk]
            both = sources + targets
            seeds = [(seed * 1_000_003 + index * copies + c) % 2**32 for c in range(copies)]  # sentencepiece's are 32 bits
            encoded = [vocab.encode_batch(both, num_threads=workers, dropout=bpe_dropout, seed=s) for s in seeds]
            spent["sentencepiece"] += (tick := time.perf_counter()) - now
            for ids in encoded:
                writers[0].add(ids[: len(chunk)])
                writers[1].add(ids[len(chunk) :])
            for path, sink, lines in zip(texts or (), sinks, (sources, targets), strict=False):
                with naming_the_file(path):
                    sink.write("\n".join(lines) + "\n")
            spent["write"] += time.perf_counter() - tick
            progress(len(chunk))
        tick = time.perf_counter()
        for path, sink in zip(texts or (), sinks, strict=True):
            with naming_the_file(path):
                sink.close()
    written = writers[0].close()
    writers[1].close()
    spent["write"] += time.perf_counter() - tick
    return {"pairs": written, "src_tokens": writers[0].num_tokens, "tgt_tokens": writers[1].num_tokens}


def _chunks(items: Iterator[T], size: int) -> Iterator[list[T]]:
    while chunk := list(islice(items, size)):
        yield chunk


def _in_background(items: Iterator[T], depth: int = 2) -> Iterator[T]:
    """Run the iterator `items` in a thread, up to `depth` items ahead of the consumer, so that reading
    and cleaning text (Python) overlaps with encoding it (sentencepiece releases the GIL)."""
    queue: Queue = Queue(maxsize=depth)

    def produce() -> None:
        try:
            for item in items:
                queue.put((True, item))
            queue.put((False, None))
        except BaseException as err:  # handed to the consumer, raised there
            queue.put((False, err))

    Thread(target=produce, daemon=True).start()
    while True:
        more, item = queue.get()
        if not more:
            if item is not None:
                raise item
            return
        yield item


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

    def subset(self, indices: Sequence[int] | np.ndarray) -> PairSubset:
        """A view of the pairs `indices`, in that order (no pair is copied)."""
        return PairSubset(self, np.asarray(indices, dtype=np.int64))

    def within_positions(self, max_positions: int | None) -> ParallelDataset | PairSubset:
        """The pairs a model with `max_positions` positions can take: both sides with their EOS / BOS
        (one position more than their ids) within it. The dataset itself when every pair fits."""
        if max_positions is None:
            return self
        fits = (self.src_sizes < max_positions) & (self.tgt_sizes < max_positions)
        return self if fits.all() else self.subset(np.flatnonzero(fits))


class PairSubset:
    """Some pairs of a `ParallelDataset`, with their own sizes: item i is pair `indices[i]` of the
    dataset. A `TokenBatchSampler` over the view yields positions in it; its batches carry the pairs'
    ids in the whole dataset."""

    def __init__(self, dataset: ParallelDataset, indices: np.ndarray) -> None:
        self.dataset, self.indices = dataset, indices
        self.src_sizes = dataset.src_sizes[indices]
        self.tgt_sizes = dataset.tgt_sizes[indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.dataset[self.indices[i]]

    def batch(self, positions: Sequence[int]) -> Batch:
        return self.dataset.batch(self.indices[np.asarray(positions, dtype=np.int64)].tolist())
