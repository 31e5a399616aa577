"""Prepare a corpus for training: clean, learn the joint vocabulary, binarize (paper section 5.1).

"Sentences were encoded using byte-pair encoding, which has a shared source-target vocabulary of about
37000 tokens" (WMT14 En-De; 32000 word-pieces for En-Fr). `prepare_data` runs the whole data stage:

1. read the training pairs once, clean them (corpus.clean_pairs) and keep a bounded uniform sample of
   their lines (reservoir sampling) to train sentencepiece on; read valid and test once to validate them;
2. train one joint sentencepiece BPE model (data/vocab.py) on that sample;
3. encode every split in chunks on `workers` threads, streaming the ids into memory-mapped arrays
   (data/binarize.py), and keep valid/test as text, the references of BLEU;
4. write `manifest.json` last: hashes of the inputs, of the config fields that shape the output and of
   the vocabulary. A later call whose inputs and config match loads the data instead; an interrupted
   run has no manifest and starts over.

Layout of `<output_dir>/data/`: spm.model, spm.vocab, {train,valid,test}.{lang}.bin/.idx,
{valid,test}.{lang}.txt, manifest.json.
"""

# ruff: noqa: UP045 -- OmegaConf reads the dataclass fields, and it wants Optional[...], not X | None.

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from itertools import chain, islice
from pathlib import Path
from queue import Queue
from threading import Thread
from typing import Optional, TypeVar

from tqdm import tqdm

from transformer_mt.data.binarize import ParallelDataset, TokenArray, TokenArrayWriter
from transformer_mt.data.corpus import SPLITS, CleaningStats, HFCorpus, TextCorpus, clean_pairs, sha256_file
from transformer_mt.data.vocab import Vocabulary, train_vocabulary

FORMAT = "transformer-mt-data/1"
T = TypeVar("T")
CHUNK_PAIRS = 50_000  # pairs encoded per call: large enough to keep the threads busy, small in memory


@dataclass
class DataConfig:
    """Where the parallel text comes from and how it becomes subword ids."""

    source: str = "sample"  # sample (the embedded En-De sample) | files | hf
    train: Optional[str] = None  # files: prefix of <prefix>.<src_lang> and <prefix>.<tgt_lang>
    valid: Optional[str] = None
    test: Optional[str] = None
    src_lang: str = "en"
    tgt_lang: str = "de"
    hf_name: str = "wmt14"  # hf: datasets.load_dataset(hf_name, hf_config) ...
    hf_config: str = "de-en"
    hf_path: Optional[str] = None  # ... or datasets.load_from_disk(hf_path), for offline machines
    vocab_size: int = 8000  # joint BPE vocabulary; the paper: 37000 (En-De), 32000 (En-Fr)
    spm_train_lines: int = 1_000_000  # lines (both languages) sampled from train for sentencepiece
    character_coverage: float = 1.0
    max_len: int = 250  # cleaning of train (Moses clean-corpus-n): whitespace tokens per side
    min_len: int = 1
    max_len_ratio: float = 9.0
    max_chars: int = 4096  # train lines longer than this (in characters) count as too long
    detokenize_train: str = "none"  # none | moses: undo Moses tokenization and escaping of train (sacremoses)
    workers: int = 2  # encoding threads
    seed: int = 1

    def __post_init__(self) -> None:
        if self.source not in ("sample", "files", "hf"):
            raise ValueError(f"data.source={self.source!r}: expected sample, files or hf")
        if self.detokenize_train not in ("none", "moses"):
            raise ValueError(f"data.detokenize_train={self.detokenize_train!r}: expected none or moses")
        if self.source == "files":
            unset = [split for split in SPLITS if not getattr(self, split)]
            if unset:
                raise ValueError(
                    f"data.source=files needs data.{'/'.join(unset)}: the prefix PREFIX of the files "
                    f"PREFIX.{self.src_lang} and PREFIX.{self.tgt_lang}"
                )
        if self.src_lang == self.tgt_lang:
            raise ValueError(f"data.src_lang and data.tgt_lang are both {self.src_lang!r}")
        if self.vocab_size <= 4 or self.spm_train_lines < 2 or self.workers < 1:
            raise ValueError("data.vocab_size must be > 4, data.spm_train_lines >= 2 and data.workers >= 1")
        if not 0.0 < self.character_coverage <= 1.0:
            raise ValueError(f"data.character_coverage must be in (0, 1], got {self.character_coverage}")
        if self.max_len < 1 or self.max_chars < 1 or self.seed < 0:
            raise ValueError(
                f"data.max_len ({self.max_len}) and data.max_chars ({self.max_chars}) must be at least 1, "
                f"data.seed ({self.seed}) 0 or more"
            )
        if not 0 <= self.min_len <= self.max_len or not 1 <= self.max_len_ratio < float("inf"):
            raise ValueError(
                f"data: need 0 <= min_len ({self.min_len}) <= max_len ({self.max_len}) and "
                f"max_len_ratio ({self.max_len_ratio}) >= 1"
            )


@dataclass
class PreparedData:
    """A prepared data folder: the vocabulary, the binarized splits and the reference texts."""

    root: Path
    vocab: Vocabulary
    src_lang: str
    tgt_lang: str
    manifest: dict

    @property
    def spm_path(self) -> Path:
        return self.root / "spm.model"

    def dataset(self, split: str) -> ParallelDataset:
        _check_split(split)
        return ParallelDataset(
            TokenArray(self.root / f"{split}.{self.src_lang}"),
            TokenArray(self.root / f"{split}.{self.tgt_lang}"),
        )

    def text_paths(self, split: str) -> tuple[Path, Path]:
        """The normalised, unfiltered (source, reference) text of valid or test, one segment per line."""
        if split not in ("valid", "test"):
            raise ValueError(f"text is kept for valid and test only, not {split!r}")
        return self.root / f"{split}.{self.src_lang}.txt", self.root / f"{split}.{self.tgt_lang}.txt"


def prepare_data(
    cfg: DataConfig, output_dir: str | Path, *, log: Callable[[str], None] = print
) -> PreparedData:
    """Prepare `<output_dir>/data/` from `cfg`, or load it if it was prepared from the same inputs."""
    root = Path(output_dir) / "data"
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    corpus = _open_corpus(cfg, root)
    key = {"inputs": corpus.fingerprint(), "config": _shaping_fields(cfg)}
    manifest = _read_manifest(root)
    if manifest is not None and manifest.get("key") == key and _intact(root, manifest):
        log(f"data: {root} already prepared from these inputs and settings; loading it")
        return _load(root, manifest)
    if manifest is not None:
        log(f"data: {root} was prepared from other inputs or settings; preparing again")
    (root / "manifest.json").unlink(missing_ok=True)  # from here on, an interruption leaves it stale
    seconds = {"hash": time.perf_counter() - start}

    # 1. Clean train and sample its lines for sentencepiece; validate valid and test.
    tick = time.perf_counter()
    stats, sample = CleaningStats("train"), _Reservoir(max(1, cfg.spm_train_lines // 2), cfg.seed)
    for pair in _progress(clean_pairs(corpus.pairs("train"), stats, **_rules(cfg)), None, "clean train"):
        sample.add(pair)
    log(f"data: {stats.summary()}")
    if stats.kept == 0:
        raise ValueError(
            f"data: no training pair of {corpus.describe('train')} survives cleaning ({stats.summary()})"
        )
    counts = {
        "train": stats.kept,
        **{split: sum(1 for _ in corpus.pairs(split)) for split in ("valid", "test")},
    }
    seconds["clean"] = time.perf_counter() - tick

    # 2. The joint vocabulary.
    tick = time.perf_counter()
    lines = list(chain.from_iterable(sample.items))
    log(f"data: training a {cfg.vocab_size}-piece sentencepiece BPE model on {len(lines)} lines")
    vocab = train_vocabulary(
        lines,
        root / "spm",
        vocab_size=cfg.vocab_size,
        character_coverage=cfg.character_coverage,
        num_threads=cfg.workers,
    )
    del lines, sample
    seconds["vocab"] = time.perf_counter() - tick

    # 3. Encode and binarize every split.
    tick = time.perf_counter()
    splits = {split: _encode_split(corpus, split, cfg, vocab, root, counts[split]) for split in SPLITS}
    seconds["encode"] = time.perf_counter() - tick
    pairs = sum(s["pairs"] for s in splits.values())
    log(f"data: encoded {pairs} pairs in {seconds['encode']:.1f}s ({pairs / seconds['encode']:.0f} pairs/s)")

    # 4. The manifest, last and atomically.
    seconds["total"] = time.perf_counter() - start
    manifest = {
        "format": FORMAT,
        "key": key,
        "config_sha256": hashlib.sha256(json.dumps(key["config"], sort_keys=True).encode()).hexdigest(),
        "vocab_sha256": sha256_file(root / "spm.model"),
        "vocab_size": len(vocab),
        "src_lang": cfg.src_lang,
        "tgt_lang": cfg.tgt_lang,
        "splits": splits,
        "cleaning": stats.to_dict(),
        "seconds": seconds,
    }
    _write_atomic(root / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    log(f"data: prepared {root} in {seconds['total']:.1f}s")
    return PreparedData(root, vocab, cfg.src_lang, cfg.tgt_lang, manifest)


def load_prepared(output_dir: str | Path) -> PreparedData:
    """Open a folder written by `prepare_data` (`<output_dir>/data`, or that data folder itself)."""
    output_dir = Path(output_dir)
    root = output_dir if (output_dir / "manifest.json").is_file() else output_dir / "data"
    manifest = _read_manifest(root)
    if manifest is None:
        raise FileNotFoundError(
            f"{root}: no prepared data (manifest.json missing: never prepared, or interrupted); "
            "run the prepare command with the same output_dir first"
        )
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{root}/manifest.json: format {manifest.get('format')!r}, expected {FORMAT!r}")
    return _load(root, manifest)


def _load(root: Path, manifest: dict) -> PreparedData:
    vocab = Vocabulary.from_file(root / "spm.model")
    return PreparedData(root, vocab, manifest["src_lang"], manifest["tgt_lang"], manifest)


# ----------------------------------------------------------------------------- the steps


def _open_corpus(cfg: DataConfig, root: Path) -> TextCorpus | HFCorpus:
    if cfg.source == "hf":
        corpus = HFCorpus(
            cfg.src_lang, cfg.tgt_lang, name=cfg.hf_name, config=cfg.hf_config, path=cfg.hf_path
        )
    elif cfg.source == "sample":
        corpus = _SampleCorpus(root / "sample", cfg.seed, cfg.src_lang, cfg.tgt_lang)
    else:
        corpus = TextCorpus({split: getattr(cfg, split) for split in SPLITS}, cfg.src_lang, cfg.tgt_lang)
    if cfg.detokenize_train == "moses":
        return _MosesDetokenizedTrain(corpus, cfg.src_lang, cfg.tgt_lang)  # type: ignore[return-value]
    return corpus


class _MosesDetokenizedTrain:
    """A corpus whose train pairs come Moses-detokenized and unescaped (`&apos;` -> `'`), for corpora
    distributed tokenized like many WMT training sets: the model then learns raw text, and its output
    scores with sacreBLEU against raw references. Valid and test are read as they are."""

    def __init__(self, corpus: TextCorpus | HFCorpus, src_lang: str, tgt_lang: str) -> None:
        try:
            from sacremoses import MosesDetokenizer
        except ImportError:
            raise ValueError(
                "data.detokenize_train=moses needs sacremoses: pip install 'transformer-mt[moses]'"
            ) from None
        self.corpus = corpus
        self.src, self.tgt = MosesDetokenizer(lang=src_lang), MosesDetokenizer(lang=tgt_lang)

    def __getattr__(self, name: str):  # describe, fingerprint, ...: the wrapped corpus's
        return getattr(self.corpus, name)

    def pairs(self, split: str) -> Iterator[tuple[str, str]]:
        pairs = self.corpus.pairs(split)
        if split != "train":
            return pairs
        return ((self.src.detokenize(s.split()), self.tgt.detokenize(t.split())) for s, t in pairs)


class _SampleCorpus(TextCorpus):
    """The embedded sample (data/sample.py): fingerprinted by the generator's code and seed, so that an
    up-to-date folder is loaded without generating it again; its files are written when first read."""

    def __init__(self, directory: Path, seed: int, src_lang: str, tgt_lang: str) -> None:
        super().__init__({split: directory / split for split in SPLITS}, src_lang, tgt_lang)
        self.directory, self.seed, self.written = directory, seed, False

    def fingerprint(self) -> dict[str, str]:
        from transformer_mt.data import sample

        return {"data/sample.py": sha256_file(sample.__file__), "seed": str(self.seed)}

    def pairs(self, split: str) -> Iterator[tuple[str, str]]:
        if not self.written:
            from transformer_mt.data.sample import write_sample

            write_sample(self.directory, seed=self.seed)
            self.written = True
        return super().pairs(split)


def _shaping_fields(cfg: DataConfig) -> dict:
    """The settings that change the output (file contents are hashed apart, so paths are left out)."""
    fields = asdict(cfg)
    for name in ("train", "valid", "test", "hf_path", "workers"):
        del fields[name]
    return fields


def _rules(cfg: DataConfig) -> dict:
    return {
        "max_len": cfg.max_len,
        "min_len": cfg.min_len,
        "max_len_ratio": cfg.max_len_ratio,
        "max_chars": cfg.max_chars,
    }


class _Reservoir:
    """A uniform random sample of at most `capacity` items of a stream of unknown length (algorithm R)."""

    def __init__(self, capacity: int, seed: int) -> None:
        self.capacity, self.items, self.seen = capacity, [], 0
        self._rng = random.Random(seed)

    def add(self, item) -> None:
        self.seen += 1
        if len(self.items) < self.capacity:
            self.items.append(item)
        elif (slot := self._rng.randrange(self.seen)) < self.capacity:
            self.items[slot] = item


def _encode_split(corpus, split: str, cfg: DataConfig, vocab: Vocabulary, root: Path, total: int) -> dict:
    """Encode one split chunk by chunk into `{split}.{lang}.bin/.idx` (and `.txt` for valid/test)."""
    pairs: Iterator[tuple[str, str]] = corpus.pairs(split)
    if split == "train":
        pairs = clean_pairs(pairs, CleaningStats("train"), **_rules(cfg))
    langs = (cfg.src_lang, cfg.tgt_lang)
    writers = [TokenArrayWriter(root / f"{split}.{lang}", vocab_size=len(vocab)) for lang in langs]
    texts = (
        []
        if split == "train"
        else [open(root / f"{split}.{lang}.txt", "w", encoding="utf-8", newline="\n") for lang in langs]
    )
    with _progress(None, total, f"encode {split}") as bar:
        for chunk in _in_background(_chunks(pairs, CHUNK_PAIRS)):
            sources, targets = [src for src, _ in chunk], [tgt for _, tgt in chunk]
            ids = vocab.encode_batch(sources + targets, num_threads=cfg.workers)
            writers[0].add(ids[: len(chunk)])
            writers[1].add(ids[len(chunk) :])
            for text, lines in zip(texts, (sources, targets), strict=False):
                text.write("\n".join(lines) + "\n")
            bar.update(len(chunk))
    for text in texts:
        text.close()
    count = writers[0].close()
    writers[1].close()
    if count != total:
        raise RuntimeError(
            f"{corpus.describe(split)}: {count} pairs now, {total} on the first read; did it change?"
        )
    return {"pairs": count, "src_tokens": writers[0].num_tokens, "tgt_tokens": writers[1].num_tokens}


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


def _progress(pairs: Iterator | None, total: int | None, desc: str) -> tqdm:
    # disable=None: a bar on a terminal, nothing in a log file.
    return tqdm(pairs, total=total, desc=desc, unit="pairs", unit_scale=True, mininterval=1.0, disable=None)


def _read_manifest(root: Path) -> dict | None:
    path = root / "manifest.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None


def _intact(root: Path, manifest: dict) -> bool:
    """Every file the manifest promises is there, and the vocabulary is the one it was written with."""
    src, tgt = manifest.get("src_lang"), manifest.get("tgt_lang")
    names = [f"{split}.{lang}.{ext}" for split in SPLITS for lang in (src, tgt) for ext in ("bin", "idx")]
    names += [f"{split}.{lang}.txt" for split in ("valid", "test") for lang in (src, tgt)]
    if not all((root / name).is_file() for name in [*names, "spm.model"]):
        return False
    return sha256_file(root / "spm.model") == manifest.get("vocab_sha256")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
