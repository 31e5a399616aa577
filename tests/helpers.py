"""Test helpers: a small real corpus written by the sample generator, and running the CLI."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from filelock import FileLock

from transformer_mt.checkpoint import FORMAT, save_checkpoint
from transformer_mt.data.sample import generate_pairs
from transformer_mt.data.vocab import train_vocabulary
from transformer_mt.models import DecoderState, build_model

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


def kill_process_tree(process: subprocess.Popen) -> None:
    """SIGKILL a test's background process and every process under it, then reap it.

    Killing its process group is not enough: torchrun starts each worker in a session of its own,
    and a SIGKILLed torchrun cannot stop them, so they would train on after the test.
    """
    if process.poll() is not None:
        return
    pids, i = [process.pid], 0
    while i < len(pids):  # every descendant, found before any of them dies and is re-parented
        for task in Path(f"/proc/{pids[i]}/task").glob("*"):
            with contextlib.suppress(OSError):
                pids += [int(child) for child in (task / "children").read_text().split()]
        i += 1
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait()


BACKGROUND_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


class Background:
    """A command running in the background, in a session of its own; its stderr goes to a file (a
    full pipe would block it). Whatever a test leaves running is killed by conftest's fixture."""

    running: list[Background] = []

    def __init__(self, argv: list[str]) -> None:
        self.stderr_file = tempfile.TemporaryFile("w+")
        self.process = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=self.stderr_file, text=True, env=BACKGROUND_ENV, cwd=REPO,
            start_new_session=True,
        )  # fmt: skip
        Background.running.append(self)

    def stderr(self) -> str:
        self.stderr_file.seek(0)
        return self.stderr_file.read()

    def wait_for(self, condition, timeout: float = 300) -> None:
        """Poll `condition()` until true; fail if the process ends first or the time runs out."""
        deadline = time.monotonic() + timeout
        while not condition():
            if self.process.poll() is not None:
                pytest.fail(f"the run ended first (status {self.process.returncode}): {self.stderr()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"gave up waiting after {timeout} s")
            time.sleep(0.02)

    def finish(self, timeout: float = 120) -> int:
        """The exit status (-N: killed by signal N); fails if the process is still running after `timeout`."""
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        kill_process_tree(self.process)


def decode_step_by_step(model, src, prev, order, reorder_at):
    """Decode `prev` one position at a time with a DecoderState, reordering the batch by `order`
    before step `reorder_at` as beam search does. Returns the step logits concatenated along time
    (rows in `order`), the reordered `prev`, and `state.steps` after each step."""
    memory, state, steps, counts = model.encode(src), DecoderState(), [], []
    for t in range(prev.size(1)):
        if t == reorder_at:
            memory, prev = memory.reorder(order), prev[order]
            state.reorder(order)
            steps = [logits[order] for logits in steps]
        logits, state = model.decode(prev[:, t : t + 1], memory, state)
        steps.append(logits)
        counts.append(state.steps)
    return torch.cat(steps, 1), prev, counts


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


# The small Transformer of the tests that train on the embedded sample (norm and rate set by each).
SMALL_TRANSFORMER = [
    "model=transformer_tiny",
    "model.d_model=64",
    "model.ffn_dim=256",
    "model.heads=4",
    "model.encoder_layers=2",
    "model.decoder_layers=2",
    "model.dropout=0.0",
]

# A small Transformer trained on the embedded sample (data=sample, its 500 test pairs), for tests that
# need a model that translates, not random weights. Measured 2026-12-03 (torch 2.13.0, one CPU
# thread): post-norm, 800 steps, about 35 s of CPU, test BLEU 34.0 with beam 4.
TRAINED_SAMPLE = [
    "data.vocab_size=500",
    "trainer.max_tokens=1024",
    "trainer.warmup_steps=100",
    "trainer.log_every=100",
    "trainer.valid_bleu_sentences=50",
    "trainer.device=cpu",
    *SMALL_TRANSFORMER,
]
TRAINED_VARIANTS = {
    "post": ["model.norm=post", "trainer.lr=0.004", "trainer.max_steps=800"],
    # Pre-norm learns faster at a higher rate: half the steps.
    "pre": ["model.norm=pre", "trainer.lr=0.006", "trainer.max_steps=400"],
}


def trained_sample_run(tmp_path_factory, variant: str) -> Path:
    """The run folder of TRAINED_SAMPLE + TRAINED_VARIANTS[variant], trained once per test session
    and shared by pytest-xdist's workers (a lock in their common temporary folder)."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    run = root / f"trained_sample_{variant}"
    with FileLock(str(root / f"trained_sample_{variant}.lock")):
        if not (run / "done").exists():
            overrides = TRAINED_VARIANTS[variant]
            steps = next(o for o in overrides if o.startswith("trainer.max_steps=")).split("=")[1]
            result = run_cli(
                "train",
                f"output_dir={run}",
                *TRAINED_SAMPLE,
                *overrides,
                f"trainer.valid_every={steps}",
                f"trainer.save_every={steps}",
                timeout=900,
            )
            assert result.returncode == 0, result.stderr[-3000:]
            (run / "done").touch()
    return run
