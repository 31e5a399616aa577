"""Reading and cleaning parallel text: the first stage of the pipeline (paper section 5.1, "Training Data").

A corpus yields sentence pairs `(source, target)` one at a time, never as a list, so that the 4.5M
pairs of WMT14 English-German stream through in bounded memory. Two kinds of corpus share one small
interface (`pairs(split)`, `fingerprint()`, `describe(split)`):

- `TextCorpus`: local files named as in fairseq and Moses, `<prefix>.<lang>`, one segment per line,
  line N of one side being the translation of line N of the other.
- `HFCorpus`: a Hugging Face `datasets` translation dataset (rows `{"translation": {lang: text}}`),
  from the hub or from a copy saved with `save_to_disk`.

Every line is normalised the same way (BOM and line ends removed, stray line-separator characters
turned into spaces, surrounding whitespace stripped). Only the training split is then filtered, in
the manner of Moses' `clean-corpus-n.perl`; validation and test keep every line so that BLEU is
computed on the full test set.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa

SPLITS = ("train", "valid", "test")
HF_SPLITS = {"train": "train", "valid": "validation", "test": "test"}
BATCH_ROWS = 10_000  # rows of a Hugging Face dataset converted to Python at a time

MAX_LINE_BYTES = 64 << 20  # a "line" beyond this is not a sentence: the file is not one segment per line
_BOM = b"\xef\xbb\xbf"
# Characters that str.splitlines() (and so many readers of our .txt files) treat as line breaks:
# inside a segment they become spaces, or a reference file would silently gain lines.
_LINE_BREAKS = re.compile("[\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
# Other C0/C1 control characters (tab excepted): the mark of binary junk in a crawled corpus.
_CONTROL = re.compile("[\x00-\x08\x0e-\x1b\x1f\x7f-\x84\x86-\x9f]")


class CorpusError(ValueError):
    """A corpus that cannot be read as aligned UTF-8 text; the message names the file and says why."""


def normalise(line: str) -> str:
    return _LINE_BREAKS.sub(" ", line).strip()


# ----------------------------------------------------------------------------- local text files


def check_file(path: str | Path) -> Path:
    """The path of an existing, non-empty file, or an error naming it."""
    path = Path(path)
    if not path.is_file():
        where = "" if path.is_absolute() else f" (looked in {Path.cwd()})"
        raise CorpusError(f"{path}: file not found{where}")
    if path.stat().st_size == 0:
        raise CorpusError(f"{path}: file is empty")
    return path


def read_lines(path: str | Path) -> Iterator[str]:
    """Stream the normalised lines of a UTF-8 text file (LF, CRLF or CR line ends, optional BOM).

    A file with any LF has LF or CRLF line ends, and a CR that ends the file ends its last line (as a
    final LF would); any other CR is text (normalised to a space). A file without LF has CR line ends
    (classic Mac). A line end at the end of the file adds no line; a last line without one counts.
    """
    path = check_file(path)
    with path.open("rb") as f:
        has_lf = _contains_lf(f)  # the whole file, not a head: a mixed file is read one way throughout
        f.seek(0)
        raw_lines = _split_on_lf(f) if has_lf else _split_on_cr(f)
        for number, raw in enumerate(raw_lines, start=1):
            if len(raw) > MAX_LINE_BYTES:
                raise CorpusError(
                    f"{path}:{number}: line longer than {MAX_LINE_BYTES >> 20} MiB; expected one segment per line"
                )
            if number == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM) :]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise CorpusError(
                    f"{path}:{number}: invalid UTF-8 ({err.reason} at byte {err.start} of the line); "
                    "convert the file to UTF-8, e.g. with iconv"
                ) from None
            yield normalise(text)


_CHUNK_BYTES = 1 << 20


def _contains_lf(f) -> bool:
    # Stops at the first LF, so an LF file costs one chunk; only a CR-only file is read twice.
    while chunk := f.read(_CHUNK_BYTES):
        if b"\n" in chunk:
            return True
    return False


def _split_on_lf(f) -> Iterator[bytes]:
    # readline with a limit so that a file without newlines is not read whole into memory. The limit
    # leaves room for a CRLF after a line of MAX_LINE_BYTES, so that it never splits a CR from its LF.
    limit = MAX_LINE_BYTES + 2
    while raw := f.readline(limit):
        if len(raw) == limit and not raw.endswith(b"\n"):
            yield raw  # at least MAX_LINE_BYTES + 1 bytes of text: read_lines reports it
            return
        # Without an LF, readline stopped at the end of the file, where a lone CR ends the line too.
        yield raw.removesuffix(b"\n").removesuffix(b"\r")


def _split_on_cr(f) -> Iterator[bytes]:
    """Lines of a file without LF: classic Mac line ends (CR only), or one line without any."""
    pending = b""
    while chunk := f.read(_CHUNK_BYTES):
        *lines, pending = (pending + chunk).split(b"\r")
        yield from lines
        if len(pending) > MAX_LINE_BYTES:
            yield pending
            return
    if pending:
        yield pending


def count_lines(path: str | Path) -> int:
    """The number of lines `read_lines` yields for this file, counted on the bytes (GB/s), so that
    the alignment of a large corpus is checked before the long work on it starts."""
    path = check_file(path)
    last = b""
    counts = {b"\n": 0, b"\r": 0}
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            counts[b"\n"] += chunk.count(b"\n")
            counts[b"\r"] += chunk.count(b"\r")
            last = chunk[-1:]
    ends = b"\n" if counts[b"\n"] else b"\r"  # as read_lines: a file without LF has CR line ends
    return counts[ends] + (last != ends)  # a last line without its line end counts too


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class TextCorpus:
    """Local files `<prefix>.<src_lang>` and `<prefix>.<tgt_lang>` for each split."""

    def __init__(self, prefixes: dict[str, str | Path], src_lang: str, tgt_lang: str) -> None:
        self.prefixes = {split: Path(prefix).expanduser() for split, prefix in prefixes.items()}
        self.src_lang, self.tgt_lang = src_lang, tgt_lang

    def paths(self, split: str) -> tuple[Path, Path]:
        prefix = self.prefixes[split]
        return Path(f"{prefix}.{self.src_lang}"), Path(f"{prefix}.{self.tgt_lang}")

    def describe(self, split: str) -> str:
        return f"{self.prefixes[split]}.{{{self.src_lang},{self.tgt_lang}}}"

    def pairs(self, split: str) -> Iterator[tuple[str, str]]:
        """Stream the aligned pairs of a split; unequal line counts raise at the end of the stream."""
        src_path, tgt_path = self.paths(split)
        src_lines, tgt_lines = read_lines(src_path), read_lines(tgt_path)
        count = 0
        for src in src_lines:
            tgt = next(tgt_lines, None)
            if tgt is None:
                n_src = count + 1 + sum(1 for _ in src_lines)
                raise _misaligned(src_path, n_src, tgt_path, count)
            count += 1
            yield src, tgt
        n_tgt = count + sum(1 for _ in tgt_lines)
        if n_tgt != count:
            raise _misaligned(src_path, count, tgt_path, n_tgt)

    def check(self) -> None:
        """Every file there and every split aligned (equal line counts), or the error `pairs` would
        raise at the end of a split: said before any split is read, not after train was cleaned."""
        missing = [path for split in self.prefixes for path in self.paths(split) if not path.is_file()]
        if missing:
            raise MissingFilesError(missing)
        for split in self.prefixes:
            src_path, tgt_path = self.paths(split)
            n_src, n_tgt = count_lines(src_path), count_lines(tgt_path)
            if n_src != n_tgt:
                raise _misaligned(src_path, n_src, tgt_path, n_tgt)

    def fingerprint(self) -> dict[str, str]:
        """sha256 of every input file, by file name."""
        paths = [check_file(path) for split in self.prefixes for path in self.paths(split)]
        return {str(path): sha256_file(path) for path in paths}


class MissingFilesError(CorpusError):
    """Input files that are not there; `paths` lists them all."""

    def __init__(self, paths: list[Path], hint: str = "") -> None:
        where = "" if all(p.is_absolute() for p in paths) else f" (relative paths from {Path.cwd()})"
        names = ", ".join(map(str, paths))
        super().__init__(f"{names}: file{'s' if len(paths) > 1 else ''} not found{where}{hint}")
        self.paths = paths


def _misaligned(src_path: Path, n_src: int, tgt_path: Path, n_tgt: int) -> CorpusError:
    return CorpusError(
        f"{src_path} has {n_src} lines but {tgt_path} has {n_tgt}: a parallel corpus needs the same "
        "number of lines on both sides (line N of one translating line N of the other)"
    )


# ----------------------------------------------------------------------------- Hugging Face datasets


class HFCorpus:
    """A translation dataset from the Hugging Face hub (`name`, `config`) or a `save_to_disk` copy (`path`).

    `path` holds either a saved `DatasetDict` with splits train/validation/test, or one saved
    `Dataset` per split in the sub-folders `train/`, `validation/`, `test/`.
    """

    def __init__(
        self,
        src_lang: str,
        tgt_lang: str,
        *,
        name: str = "wmt14",
        config: str = "de-en",
        path: str | None = None,
    ) -> None:
        self.src_lang, self.tgt_lang = src_lang, tgt_lang
        self.source = f"{path} (saved dataset)" if path else f"{name}/{config} (Hugging Face hub)"
        self.splits = _load_from_disk(Path(path).expanduser()) if path else _load_from_hub(name, config)

    def describe(self, split: str) -> str:
        return f"{self.source} [{HF_SPLITS[split]}]"

    def check(self) -> None:
        """Every split has the translation column and both languages (rows of a dataset are aligned by
        construction): said before any split is read, not after train was cleaned."""
        for split in SPLITS:
            self._columns(split)

    def pairs(self, split: str) -> Iterator[tuple[str, str]]:
        """Stream the pairs of a split, `BATCH_ROWS` rows at a time, as Arrow slices of the two
        languages' columns: only one batch of text is ever held as Python strings."""
        columns = self._columns(split)
        batches = self.splits[split].select_columns(["translation"]).with_format("arrow").iter(BATCH_ROWS)
        for table in batches:
            table = table.flatten()  # struct column -> translation.<lang> columns, zero-copy
            sources, targets = (table.column(name).to_pylist() for name in columns)
            for src, tgt in zip(sources, targets, strict=True):
                if src is None or tgt is None:
                    raise CorpusError(
                        f"{self.describe(split)}: a row has no '{self.src_lang}' or '{self.tgt_lang}' text "
                        f"(the other side is {tgt if src is None else src!r}); check src_lang/tgt_lang"
                    )
                yield normalise(src), normalise(tgt)

    def _columns(self, split: str) -> tuple[str, str]:
        """The flattened names of the source and target columns, or an error saying what is there."""
        dataset = self.splits[split]
        if "translation" not in dataset.column_names:
            raise CorpusError(
                f"{self.describe(split)}: no 'translation' column (columns: {dataset.column_names}); "
                "expected rows {'translation': {lang: text}}"
            )
        kind = dataset.data.schema.field("translation").type
        languages = [kind.field(i).name for i in range(kind.num_fields)] if pa.types.is_struct(kind) else []
        if self.src_lang not in languages or self.tgt_lang not in languages:
            raise CorpusError(
                f"{self.describe(split)}: no '{self.src_lang}' or '{self.tgt_lang}' text (its translations are "
                f"in {languages}); check src_lang/tgt_lang"
            )
        return f"translation.{self.src_lang}", f"translation.{self.tgt_lang}"

    def fingerprint(self) -> dict[str, str]:
        """The datasets library's own fingerprint of every split (it changes with the data)."""
        return {f"{self.source} [{HF_SPLITS[s]}]": self.splits[s]._fingerprint for s in SPLITS}


def _load_from_hub(name: str, config: str) -> dict:
    import datasets
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        loaded = datasets.load_dataset(name, config)
    except (ConnectionError, TimeoutError, LocalEntryNotFoundError) as err:
        raise CorpusError(
            f"cannot download the Hugging Face dataset {name}/{config}: the network is unreachable or offline "
            f"({type(err).__name__}). Offline, save it elsewhere with `datasets.load_dataset('{name}', "
            f"'{config}').save_to_disk(DIR)` and pass data.hf_path=DIR, or use local text files with "
            "data.source=files data.train=PREFIX data.valid=PREFIX data.test=PREFIX"
        ) from None
    return _pick_splits(loaded, f"{name}/{config}")


def _load_from_disk(path: Path) -> dict:
    import datasets

    if not path.is_dir():
        raise CorpusError(
            f"{path}: no such directory (data.hf_path should be a folder written by save_to_disk)"
        )
    if (path / "dataset_dict.json").is_file():
        return _pick_splits(datasets.load_from_disk(str(path)), str(path))
    if (path / "state.json").is_file():
        raise CorpusError(
            f"{path} holds a single saved Dataset, without splits: save a DatasetDict with splits "
            "train/validation/test there, or one Dataset per split in DIR/train, DIR/validation, DIR/test"
        )
    missing = [hf for hf in HF_SPLITS.values() if not (path / hf).is_dir()]
    if missing:
        raise CorpusError(
            f"{path}: not a saved DatasetDict, and no saved Dataset in {missing}; save the dataset with "
            "DatasetDict.save_to_disk(DIR) (splits train/validation/test) or one Dataset per split in DIR/<split>"
        )
    return {split: datasets.load_from_disk(str(path / hf)) for split, hf in HF_SPLITS.items()}


def _pick_splits(dataset_dict, where: str) -> dict:
    missing = [hf for hf in HF_SPLITS.values() if hf not in dataset_dict]
    if missing:
        raise CorpusError(f"{where}: splits {missing} missing (has {list(dataset_dict)})")
    return {split: dataset_dict[hf] for split, hf in HF_SPLITS.items()}


# ----------------------------------------------------------------------------- cleaning


@dataclass
class CleaningStats:
    """What `clean_pairs` read, kept and dropped, and why (each pair counted once, first reason wins)."""

    split: str = "train"
    read: int = 0
    kept: int = 0
    empty: int = 0
    control: int = 0
    too_long: int = 0
    too_short: int = 0
    ratio: int = 0

    def summary(self) -> str:
        reasons = {
            "empty": self.empty,
            "control characters": self.control,
            "too long": self.too_long,
            "too short": self.too_short,
            "ratio": self.ratio,
        }
        dropped = ", ".join(f"{n} {reason}" for reason, n in reasons.items() if n) or "none"
        return f"{self.split}: {self.read} pairs read, {self.kept} kept; dropped: {dropped}"

    def to_dict(self) -> dict:
        return asdict(self)


def clean_pairs(
    pairs: Iterator[tuple[str, str]],
    stats: CleaningStats,
    *,
    max_len: int = 250,
    min_len: int = 1,
    max_len_ratio: float = 9.0,
    max_chars: int = 4096,
) -> Iterator[tuple[str, str]]:
    """Moses clean-corpus-n on whitespace tokens: keep pairs with min_len..max_len tokens per side and a
    length ratio of at most max_len_ratio; also drop empty sides, control characters, and sides longer
    than max_chars characters (a single "word" of a megabyte passes a token count). Updates `stats`."""
    for src, tgt in pairs:
        stats.read += 1
        src, tgt = src.strip(), tgt.strip()
        if not src or not tgt:
            stats.empty += 1
            continue
        if _CONTROL.search(src) or _CONTROL.search(tgt):
            stats.control += 1
            continue
        if len(src) > max_chars or len(tgt) > max_chars:
            stats.too_long += 1
            continue
        n_src, n_tgt = len(src.split()), len(tgt.split())
        if n_src > max_len or n_tgt > max_len:
            stats.too_long += 1
        elif n_src < min_len or n_tgt < min_len:
            stats.too_short += 1
        elif n_src > max_len_ratio * n_tgt or n_tgt > max_len_ratio * n_src:
            stats.ratio += 1
        else:
            stats.kept += 1
            yield src, tgt
