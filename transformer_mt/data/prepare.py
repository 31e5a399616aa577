"""Prepare a corpus for training: clean, learn the joint vocabulary, binarize (paper section 5.1).

"Sentences were encoded using byte-pair encoding, which has a shared source-target vocabulary of about
37000 tokens" (WMT14 En-De; 32000 word-pieces for En-Fr). `prepare_data` runs the whole data stage:

0. check that every split's files are aligned (equal line counts, counted on the bytes), before the
   long work on train;
1. read the training pairs once, clean them (corpus.clean_pairs) and keep a bounded uniform sample of
   their lines (reservoir sampling) to train sentencepiece on; read valid and test once to validate them;
2. train one joint sentencepiece BPE model (data/vocab.py) on that sample, or take the given one
   (`data.spm_model`, its special ids moved to ours);
3. encode every split in chunks on `workers` threads, streaming the ids into memory-mapped arrays
   (data/binarize.py), and keep valid/test as text, the references of BLEU;
4. write `manifest.json` last: hashes of the inputs, of the config fields that shape the output and of
   the vocabulary. A later call whose inputs and config match loads the data instead; an interrupted
   run has no manifest and starts over.

Layout of `<output_dir>/data/`: spm.model, spm.vocab, {train,valid,test}.{lang}.bin/.idx,
{valid,test}.{lang}.txt, manifest.json. The manifest's `seconds` time each stage (hash, check, clean,
vocab, encode, and within encode: waiting for text, sentencepiece, writing), for `bench prepare`.

Memory is bounded whatever the corpus size: text streams through, the sentencepiece sample holds at
most `spm_train_lines` lines, encoding holds two chunks of `CHUNK_PAIRS` pairs, and what grows with
the corpus is 8 bytes of offsets per sequence.
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
from pathlib import Path
from typing import Optional

from tqdm import tqdm

from transformer_mt.data.binarize import ParallelDataset, TokenArray, encode_pairs, naming_the_file
from transformer_mt.data.corpus import SPLITS, CleaningStats, clean_pairs, sha256_file
from transformer_mt.data.sources import open_corpus
from transformer_mt.data.vocab import Vocabulary, adopt_vocabulary, train_vocabulary

FORMAT = "transformer-mt-data/1"


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
    # Where the presets' corpora live: their train/valid/test paths start with it (${.root}/...); the
    # presets default it to $TRANSFORMER_MT_DATA, else ../shared/data (relative to the working folder).
    root: Optional[str] = None
    corpus_hint: Optional[str] = None  # where to get the corpus, said when its files are missing
    vocab_size: int = 8000  # joint BPE vocabulary; the paper: 37000 (En-De), 32000 (En-Fr)
    spm_model: Optional[str] = None  # an existing sentencepiece model to use instead of training one
    spm_train_lines: int = 1_000_000  # lines (both languages) sampled from train for sentencepiece
    character_coverage: float = 1.0
    max_len: int = 250  # cleaning of train (Moses clean-corpus-n): whitespace tokens per side
    min_len: int = 1
    max_len_ratio: float = 9.0
    max_chars: int = 4096  # train lines longer than this (in characters) count as too long
    detokenize_train: str = "none"  # none | moses: undo Moses tokenization and escaping of train (sacremoses)
    workers: int = 2  # encoding threads
    seed: int = 1
    # BPE-dropout (Provilkov et al. 2020), a regulariser for small corpora: train is encoded
    # bpe_dropout_copies times, each copy segmented anew with every BPE merge skipped at this rate, so
    # the model meets each sentence cut into pieces several ways (an epoch is then a pass over all the
    # copies). Valid and test keep the one deterministic segmentation, as decoding does. 0: off.
    bpe_dropout: float = 0.0
    bpe_dropout_copies: int = 8

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
        if not 0.0 <= self.bpe_dropout < 1.0 or self.bpe_dropout_copies < 1:
            raise ValueError(
                f"data.bpe_dropout must be in [0, 1) (got {self.bpe_dropout}) and data.bpe_dropout_copies "
                f"at least 1 (got {self.bpe_dropout_copies})"
            )
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
    corpus = open_corpus(cfg, root)
    key = {"inputs": _fingerprint(corpus, cfg), "config": _shaping_fields(cfg)}
    manifest = _read_manifest(root)
    if manifest is not None and manifest.get("key") == key and _intact(root, manifest):
        log(f"data: {root} already prepared from these inputs and settings; loading it")
        return _load(root, manifest)
    if manifest is not None:
        log(f"data: {root} was prepared from other inputs or settings; preparing again")
    (root / "manifest.json").unlink(missing_ok=True)  # from here on, an interruption leaves it stale
    seconds = {"hash": time.perf_counter() - start}

    # 0. Every split aligned (line counts only), before the long work on train.
    tick = time.perf_counter()
    corpus.check()
    seconds["check"] = time.perf_counter() - tick

    # 1. Clean train and sample its lines for sentencepiece (unless a model is given); count valid and test.
    tick = time.perf_counter()
    stats = CleaningStats("train")
    sample = None if cfg.spm_model else _Reservoir(max(1, cfg.spm_train_lines // 2), cfg.seed)
    for pair in _progress(clean_pairs(corpus.pairs("train"), stats, **_rules(cfg)), None, "clean train"):
        if sample is not None:
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
    vocab = _vocabulary(cfg, root, sample, log)
    del sample
    seconds["vocab"] = time.perf_counter() - tick

    # 3. Encode and binarize every split.
    tick = time.perf_counter()
    spent = dict.fromkeys(("read", "sentencepiece", "write"), 0.0)
    splits = {split: _encode_split(corpus, split, cfg, vocab, root, counts[split], spent) for split in SPLITS}
    seconds["encode"] = time.perf_counter() - tick
    # Of which: waiting for the reader thread's text, sentencepiece encoding, writing the arrays.
    seconds.update({f"encode_{part}": value for part, value in spent.items()})
    pairs = sum(s["pairs"] for s in splits.values())
    log(f"data: encoded {pairs} pairs in {seconds['encode']:.1f}s ({pairs / seconds['encode']:.0f} pairs/s)")
    if cfg.bpe_dropout:
        log(
            f"data: train is {cfg.bpe_dropout_copies} copies of its {stats.kept} pairs, "
            f"each segmented with BPE-dropout {cfg.bpe_dropout}"
        )

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


def _fingerprint(corpus, cfg: DataConfig) -> dict[str, str]:
    """The inputs' hashes: the corpus files (or dataset fingerprints), and a given sentencepiece model."""
    inputs = corpus.fingerprint()
    if cfg.spm_model:
        inputs["data.spm_model"] = sha256_file(Path(cfg.spm_model).expanduser())
    return inputs


def _shaping_fields(cfg: DataConfig) -> dict:
    """The settings that change the output (file contents are hashed apart, so paths are left out)."""
    fields = asdict(cfg)
    for name in ("train", "valid", "test", "hf_path", "workers", "root", "corpus_hint", "spm_model"):
        del fields[name]
    if cfg.spm_model:  # the given model is the vocabulary: the settings for training one do not apply
        for name in ("vocab_size", "spm_train_lines", "character_coverage"):
            del fields[name]
    if not cfg.bpe_dropout:  # off: the copies do not apply (and data prepared before the option still matches)
        del fields["bpe_dropout"], fields["bpe_dropout_copies"]
    return fields


def _vocabulary(cfg: DataConfig, root: Path, sample: _Reservoir | None, log: Callable[[str], None]) -> Vocabulary:
    """The given sentencepiece model (data.spm_model) with our special ids, or one trained on `sample`."""
    if sample is None:
        with naming_the_file(root / "spm.model"):
            vocab, note = adopt_vocabulary(cfg.spm_model, root / "spm")
        log(f"{note}; {len(vocab)} pieces (data.vocab_size, spm_train_lines, character_coverage do not apply)")
        return vocab
    lines = 2 * len(sample.items)
    log(f"data: training a sentencepiece BPE model of {cfg.vocab_size} pieces (data.vocab_size) on {lines} lines")
    vocab = train_vocabulary(
        _drain(sample.items),
        root / "spm",
        vocab_size=cfg.vocab_size,
        character_coverage=cfg.character_coverage,
        num_threads=cfg.workers,
    )
    if len(vocab) < cfg.vocab_size:
        log(
            f"data: the vocabulary has {len(vocab)} pieces, not the {cfg.vocab_size} asked for (data.vocab_size): "
            f"that is all that sentencepiece BPE makes of these {lines} lines; set data.vocab_size={len(vocab)} "
            "or less to make this explicit"
        )
    return vocab


def _drain(pairs: list[tuple[str, str]]) -> Iterator[str]:
    """The lines of `pairs`, source then target, each pair let go once sentencepiece has copied it."""
    for i, (src, tgt) in enumerate(pairs):
        pairs[i] = None  # type: ignore[call-overload]
        yield src
        yield tgt


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


def _encode_split(
    corpus, split: str, cfg: DataConfig, vocab: Vocabulary, root: Path, total: int, spent: dict[str, float]
) -> dict:
    """Encode one split into `{split}.{lang}.bin/.idx` (and `.txt` for valid/test); train in
    `bpe_dropout_copies` sampled segmentations when BPE-dropout is on."""
    pairs: Iterator[tuple[str, str]] = corpus.pairs(split)
    if split == "train":
        pairs = clean_pairs(pairs, CleaningStats("train"), **_rules(cfg))
    dropout = cfg.bpe_dropout if split == "train" else 0.0  # valid and test: as decoding segments them
    copies = cfg.bpe_dropout_copies if dropout else 1
    langs = (cfg.src_lang, cfg.tgt_lang)
    with _progress(None, total, f"encode {split}") as bar:
        written = encode_pairs(
            pairs,
            vocab,
            [root / f"{split}.{lang}" for lang in langs],
            texts=None if split == "train" else [root / f"{split}.{lang}.txt" for lang in langs],
            workers=cfg.workers,
            bpe_dropout=dropout,
            copies=copies,
            seed=cfg.seed,
            spent=spent,
            progress=bar.update,
        )
    if written["pairs"] != total * copies:
        raise RuntimeError(
            f"{corpus.describe(split)}: {written['pairs'] // copies} pairs now, {total} on the first read; "
            "did it change?"
        )
    return written


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
    with naming_the_file(tmp):
        tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
