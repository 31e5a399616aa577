"""Where the `gpu`-marked tests run: a CUDA device, or the CPU when asked.

    pytest -m gpu                                   # on the GPU; skipped, with the reason, without one
    TRANSFORMER_MT_TEST_DEVICE=cuda pytest -m gpu   # the GPU is required: an error where torch sees none
    TRANSFORMER_MT_TEST_DEVICE=cpu pytest -m gpu    # the same test bodies on the CPU (what a CPU allows)

`scripts/gpu_check.sh` sets TRANSFORMER_MT_TEST_DEVICE=cuda, so that a machine whose GPU torch cannot
see fails the check instead of skipping every test. Test modules put `GPU` in their `pytestmark`
(or on single tests) and run on `DEVICE`.
"""

from __future__ import annotations

import os

import pytest
import torch

VARIABLE = "TRANSFORMER_MT_TEST_DEVICE"
REQUESTED = os.environ.get(VARIABLE, "")

if REQUESTED not in ("", "cuda", "cpu"):
    raise RuntimeError(f"{VARIABLE}={REQUESTED!r}: set it to cuda or cpu, or leave it unset")
if REQUESTED == "cuda" and not torch.cuda.is_available():
    raise RuntimeError(
        f"{VARIABLE}=cuda but torch {torch.__version__} sees no CUDA device "
        f"(built for CUDA {torch.version.cuda}); unset it to skip the GPU tests"
    )

DEVICE = torch.device("cpu" if REQUESTED == "cpu" else "cuda")
ON_GPU = DEVICE.type == "cuda"
NO_DEVICE = DEVICE.type == "cuda" and not torch.cuda.is_available()

GPU = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        NO_DEVICE,
        reason=f"needs a CUDA device (none visible); {VARIABLE}=cpu runs these tests on the CPU",
    ),
]


def bf16_supported() -> bool:
    """bf16 arithmetic: any CPU (emulated where it has no bf16 instructions), CUDA from sm80 (Ampere)."""
    return not ON_GPU or torch.cuda.get_device_capability(DEVICE) >= (8, 0)


def device_override() -> str:
    """The trainer's override for `DEVICE`."""
    return f"trainer.device={DEVICE.type}"
