"""Training on the GPU, through the real CLI: the step in fp32, bf16 and fp16, the fp16 loss scaler
against an injected overflow, bit-exact resume (the CUDA random generator included), and
`trainer.compile=true` against eager. On `tests.devices.DEVICE` (CUDA; TRANSFORMER_MT_TEST_DEVICE=cpu
runs the same bodies on the CPU).

Each run is a `transformer-mt train` subprocess of the tiny model of tests/test_trainer.py on the
small sample corpus, so what runs is what a user runs: device selection, fused Adam on CUDA,
autocast, the CUDA GradScaler, `max_memory_allocated` in the step log, checkpoints with the CUDA
generator's state, and `Runtime.wrap` for compile.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.devices import DEVICE, GPU, bf16_supported, device_override
from tests.helpers import REPO, TINY_MODEL, files_overrides, run_cli
from tests.test_compile import assert_compiled_matches_eager, train_eager_and_compiled
from tests.test_trainer import QUICK, fresh_run, losses, params
from transformer_mt.checkpoint import load_checkpoint

pytestmark = GPU

# The real CLI with GradScaler.unscale_ wrapped: on its AT-th call (the AT-th update attempted) it sets
# one gradient element to +inf first, as an fp16 overflow would, and writes the loss scale it found.
INJECTING_CLI = """
import sys
from pathlib import Path
import torch
record, at = Path(sys.argv[1]), int(sys.argv[2])
real_unscale = torch.amp.GradScaler.unscale_
calls = 0
def unscale_(self, optimizer):
    global calls
    calls += 1
    if calls == at:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        grads[0].view(-1)[0] = float("inf")
        record.write_text(repr(self.get_scale()))
    return real_unscale(self, optimizer)
torch.amp.GradScaler.unscale_ = unscale_
from transformer_mt.cli import main
main(sys.argv[3:])
"""

# The real CLI in PyTorch's deterministic mode: without it two identical CUDA runs may already differ
# (PyTorch documents the backward of its memory-efficient attention kernel as non-deterministic by
# default), which would hide what this test looks for: state that a resume loses.
DETERMINISTIC_CLI = """
import sys
import torch
torch.use_deterministic_algorithms(True, warn_only=True)
from transformer_mt.cli import main
main(sys.argv[1:])
"""
DETERMINISTIC_ENV = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}  # what cuBLAS needs for repeatable results


def run_args(run: Path, corpus: Path, *extra: str) -> list[str]:
    return [
        "train",
        *files_overrides(corpus),
        *TINY_MODEL,
        *QUICK,
        device_override(),
        f"output_dir={run}",
        *extra,
    ]


def python_cli(program: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -c PROGRAM ARGS` (a wrapped CLI) in a real subprocess, from the repository root."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", program, *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=600,
        cwd=REPO,
    )


def finite_checkpoint(path: Path) -> dict:
    saved = load_checkpoint(path)
    assert all(torch.isfinite(t).all() for t in saved["model"].values() if t.is_floating_point())
    return saved


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_training_steps_on_device(prepared, corpus, tmp_path, precision):
    if precision == "bf16" and not bf16_supported():
        pytest.skip("bf16 needs a GPU of compute capability 8.0 or later")
    run = fresh_run(prepared, tmp_path, precision)
    result = run_cli(
        *run_args(
            run,
            corpus,
            "trainer.max_steps=30",
            f"trainer.precision={precision}",
            "trainer.valid_every=30",
            "trainer.save_every=30",
        )
    )
    assert result.returncode == 0, result.stderr[-3000:]
    log = (run / "train.log").read_text()
    assert f"1 rank(s) on {DEVICE.type}, {precision}" in log
    logged = [float(v) for v in losses(run).values()]
    assert len(logged) == 30 and all(math.isfinite(v) for v in logged)
    assert sum(logged[-5:]) < sum(logged[:5])  # it learns
    saved = finite_checkpoint(run / "checkpoints/checkpoint_last.pt")
    assert saved["step"] == 30
    if precision == "fp16":
        assert "loss scale" in log and saved["scaler"]["scale"] > 0


def test_fp16_scaler_skips_an_injected_overflow_and_recovers(prepared, corpus, tmp_path):
    """An inf in the gradients of the 6th update: the GradScaler skips that update and halves its scale,
    no inf reaches the weights (they are checked finite before every save), and training goes on to
    its last step with finite, falling losses."""
    run, record = fresh_run(prepared, tmp_path, "overflow"), tmp_path / "injected"
    steps = 20
    result = python_cli(
        INJECTING_CLI,
        str(record),
        "6",
        *run_args(
            run,
            corpus,
            f"trainer.max_steps={steps}",
            "trainer.precision=fp16",
            f"trainer.valid_every={steps}",
            f"trainer.save_every={steps}",
        ),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert record.exists(), "the overflow was never injected (GradScaler.unscale_ was not called 6 times)"
    scale = float(record.read_text())
    log = (run / "train.log").read_text()
    assert f"non-finite gradients; update skipped, loss scale lowered to {scale / 2:g}" in log, log[-3000:]
    logged = losses(run)
    assert sorted(logged) == list(range(1, steps + 1))  # every step after the skipped update was made
    values = [float(v) for v in logged.values()]
    assert all(math.isfinite(v) for v in values) and sum(values[-5:]) < sum(values[:5])
    saved = finite_checkpoint(run / "checkpoints/checkpoint_last.pt")
    assert saved["step"] == steps and saved["scaler"]["scale"] <= scale / 2


def test_resume_on_device_is_bit_exact(prepared, corpus, tmp_path):
    """12 steps straight, or 6 and a resume to 12 (in a new process): the same losses and bit-equal
    weights. The tiny model has dropout 0.1, so the CUDA generator's state must travel too."""
    common = ["trainer.save_every=4", "trainer.valid_every=4"]

    def train(name: str, steps: int) -> Path:
        run = tmp_path / name
        if not run.exists():
            run = fresh_run(prepared, tmp_path, name)
        result = python_cli(
            DETERMINISTIC_CLI,
            *run_args(run, corpus, f"trainer.max_steps={steps}", *common),
            env=DETERMINISTIC_ENV,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return run

    straight = train("straight", 12)
    train("interrupted", 6)
    interrupted = train("interrupted", 12)
    assert "resumed from" in (interrupted / "train.log").read_text()
    a, b = (
        params(straight / "checkpoints/checkpoint_last.pt"),
        params(interrupted / "checkpoints/checkpoint_last.pt"),
    )
    same = losses(straight) == losses(interrupted) and all(torch.equal(a[k], b[k]) for k in a)
    if not same:  # is it the resume, or does the device not repeat itself at all?
        again = params(train("straight_again", 12) / "checkpoints/checkpoint_last.pt")
        repeats = all(torch.equal(a[k], again[k]) for k in a)
        pytest.fail(
            "a resumed run differs from the straight one; "
            + (
                "two straight runs are bit-equal, so the resume loses state"
                if repeats
                else "two straight runs differ too: the device is not deterministic here"
            )
        )
    assert sorted(losses(straight)) == list(range(1, 13))


def test_compiled_training_matches_eager_on_device(prepared, corpus, tmp_path):
    eager, compiled, cache = train_eager_and_compiled(prepared, corpus, tmp_path, DEVICE.type)
    assert_compiled_matches_eager(eager, compiled, cache, DEVICE.type)
