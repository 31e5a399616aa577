"""Test helpers: a small real corpus written by the sample generator, and running the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from transformer_mt.checkpoint import FORMAT, save_checkpoint
from transformer_mt.data.sample import generate_pairs
from transformer_mt.data.vocab import train_vocabulary
from transformer_mt.models import build_model

REPO = Path(__file__).resolve().parents[1]


def write_token_array(prefix: Path, sequences: list[list[int]], *, vocab_size: int) -> None:
    """A binarized token array of `sequences`, written as `prepare` writes one."""
    from transformer_mt.data.binarize import TokenArrayWriter

    with TokenArrayWriter(prefix, vocab_size=vocab_size) as writer:
        writer.add(sequences)


def write_small_corpus(directory: Path, train_size: int = 600) -> Path:
    """The embedded sample at a small size: train/valid/test .en/.de in `directory`."""
    from transformer_mt.data.sample import write_sample

    return write_sample(directory, seed=7, train_size=train_size, valid_size=40, test_size=40)


def files_overrides(corpus: Path, vocab_size: int = 200) -> list[str]:
    return [
        "data=files",
        f"data.train={corpus}/train",
        f"data.valid={corpus}/valid",
        f"data.test={corpus}/test",
        "data.src_lang=en",
        "data.tgt_lang=de",
        f"data.vocab_size={vocab_size}",
    ]


TINY_MODEL = [
    "model=transformer_tiny",
    "model.d_model=32",
    "model.ffn_dim=64",
    "model.heads=2",
    "model.encoder_layers=2",
    "model.decoder_layers=2",
]


def run_cli(*args: str, stdin: str | None = None, env: dict | None = None, timeout: float = 600,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`python -m transformer_mt ARGS` in a real subprocess."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "transformer_mt", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=cwd,
    )


SAMPLE_SENTENCES = [
    "The old woman sees the small dog.",
    "Today the teacher reads a book.",
    "The child gives the teacher a book.",
    "A man rides a bike.",
    "The small dog sleeps under the big tree.",
]


def write_random_checkpoint(
    path: Path,
    *,
    model: dict | None = None,
    decoding: dict | None = None,
    vocab_size: int = 120,
    seed: int = 0,
) -> Path:
    """A real checkpoint of a small randomly initialised model (the plumbing of decoding, serving and
    alignment needs no trained weights), with a sentencepiece model trained on the embedded sample.
    It stores `decoding` as its run's validation settings (default: beam 4, lenpen 0.6, at most
    source length + 6 output tokens, which keeps a random model's searches short)."""
    lines = [side for pair in generate_pairs(400, seed=3) for side in pair] + SAMPLE_SENTENCES
    vocab = train_vocabulary(lines, Path(path).parent / "spm", vocab_size=vocab_size, num_threads=1)
    model_config = model or {
        "arch": "transformer", "d_model": 32, "ffn_dim": 64, "heads": 4, "encoder_layers": 2,
        "decoder_layers": 2, "max_positions": 256,
    }
    torch.manual_seed(seed)
    built = build_model(model_config, vocab_size=len(vocab), pad_id=vocab.pad_id)
    decoding = decoding or {"beam": 4, "lenpen": 0.6, "max_len_a": 1.0, "max_len_b": 6}
    save_checkpoint(
        {
            "format": FORMAT,
            "model": built.state_dict(),
            "model_config": model_config,
            "vocab_size": built.vocab_size,
            "sentencepiece": vocab.to_bytes(),
            "step": 7,
            "config": {"data": {"src_lang": "en", "tgt_lang": "de"}, "decoding": decoding},
        },
        path,
    )
    return Path(path)
