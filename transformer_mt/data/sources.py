"""Which corpus a `DataConfig` names: local files, a Hugging Face dataset or the embedded sample,
Moses-detokenized on the way in if asked; and what to say when a preset's corpus files are missing.

The presets of the corpora beside the project read them from `data.root` (`${.root}/multi30k/train`),
which defaults to $TRANSFORMER_MT_DATA, else `../shared/data` relative to the working folder; a
missing file is named together with where data.root pointed, how to point it elsewhere, and where
to get the corpus (the preset's `corpus_hint`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from transformer_mt.data.binarize import naming_the_file
from transformer_mt.data.corpus import SPLITS, HFCorpus, MissingFilesError, TextCorpus, sha256_file

if TYPE_CHECKING:  # prepare.py imports this module
    from transformer_mt.data.prepare import DataConfig

DATA_ROOT_ENV = "TRANSFORMER_MT_DATA"  # the presets' data.root when set


def open_corpus(cfg: DataConfig, root: Path) -> TextCorpus | HFCorpus:
    """The corpus that the DataConfig `cfg` names; the embedded sample is written under `root`."""
    if cfg.source == "hf":
        corpus = HFCorpus(
            cfg.src_lang, cfg.tgt_lang, name=cfg.hf_name, config=cfg.hf_config, path=cfg.hf_path
        )
    elif cfg.source == "sample":
        corpus = _SampleCorpus(root / "sample", cfg.seed, cfg.src_lang, cfg.tgt_lang)
    else:
        corpus = TextCorpus({split: getattr(cfg, split) for split in SPLITS}, cfg.src_lang, cfg.tgt_lang)
        missing = [path for split in SPLITS for path in corpus.paths(split) if not path.is_file()]
        if missing:
            raise MissingFilesError(missing, _where_to_get(cfg, missing))
    if cfg.spm_model and not Path(cfg.spm_model).expanduser().is_file():
        raise FileNotFoundError(f"data.spm_model={cfg.spm_model}: file not found")
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

    def check(self) -> None:
        self._write()
        super().check()

    def pairs(self, split: str) -> Iterator[tuple[str, str]]:
        self._write()
        return super().pairs(split)

    def _write(self) -> None:
        if not self.written:
            from transformer_mt.data.sample import write_sample

            with naming_the_file(self.directory):
                write_sample(self.directory, seed=self.seed)
            self.written = True


def _where_to_get(cfg: DataConfig, missing: list[Path]) -> str:
    """What to do about missing corpus files: where data.root pointed, and where to get the corpus."""
    hint = ""
    if cfg.root is not None and all(path.is_relative_to(Path(cfg.root).expanduser()) for path in missing):
        env = os.environ.get(DATA_ROOT_ENV)
        origin = (
            f"from {DATA_ROOT_ENV}"
            if env == cfg.root
            else f"the default; {DATA_ROOT_ENV} is not set"
            if env is None
            else f"set by data.root; {DATA_ROOT_ENV}={env} is overridden"
        )
        hint = (
            f". data.root={cfg.root} ({origin}): point {DATA_ROOT_ENV}=DIR or data.root=DIR at the folder "
            "that holds the corpora"
        )
    if cfg.corpus_hint:
        hint += f". Get the corpus: {cfg.corpus_hint}"
    return hint
