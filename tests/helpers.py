"""Test helpers: a small real corpus written by the sample generator, and running the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
