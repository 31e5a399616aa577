"""`trainer.compile=true`: the step runs under `torch.compile` (`Runtime.wrap`) and trains as eager does.

Two real `transformer-mt train` runs of a one-layer model on the small sample corpus, without dropout
(compiled code draws dropout masks from its own generator), the same seed and the same batches:
one eager, one compiled. Every logged loss must agree within LOSS_TOLERANCE bits and the final
parameters within PARAM_TOLERANCE (relative, over all parameters). Measured on the CPU (torch
2.13.0, inductor with gcc): the logged losses are equal to all 3 printed decimals and the parameters
differ by 4.5e-4 after the 12 steps, which move them by 7.9e-2 from their initial values (Adam turns
tiny gradient differences into updates of the size of the learning rate, so parameters drift apart
even when the arithmetic agrees to rounding). The compiled run writes its code into a cache
folder of its own, which proves that inductor really compiled the step (a compile flag that is
silently ignored would otherwise pass as "equal to eager").

The compile costs about 40 CPU seconds (two graphs: the first batch's shapes, then dynamic shapes
after the first recompile); this is the one compiled run of the default suite.
`tests/test_gpu_training.py` runs the same check on the GPU.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from tests.helpers import files_overrides, run_cli
from tests.test_trainer import QUICK, fresh_run, losses, params

STEPS = 12
LOSS_TOLERANCE = 0.01  # bits per token, on the logged loss (3 decimals)
PARAM_TOLERANCE = 1e-2  # ||compiled - eager|| / ||eager|| over all parameters after STEPS steps
ONE_LAYER = [
    "model=transformer_tiny",
    "model.d_model=32",
    "model.ffn_dim=64",
    "model.heads=2",
    "model.encoder_layers=1",
    "model.decoder_layers=1",
    "model.dropout=0.0",
]


def train_eager_and_compiled(
    prepared: Path, corpus: Path, tmp_path: Path, device: str
) -> tuple[Path, Path, Path]:
    """The eager run, the compiled run and the compiled run's inductor cache folder."""
    args = [
        *files_overrides(corpus),
        *ONE_LAYER,
        *QUICK,
        f"trainer.device={device}",
        f"trainer.max_steps={STEPS}",
        f"trainer.valid_every={STEPS}",
        f"trainer.save_every={STEPS}",
    ]
    eager, compiled, cache = (
        fresh_run(prepared, tmp_path, "eager"),
        fresh_run(prepared, tmp_path, "compiled"),
        tmp_path / "inductor",
    )
    result = run_cli("train", *args, f"output_dir={eager}")
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_cli(
        "train",
        *args,
        "trainer.compile=true",
        f"output_dir={compiled}",
        env={"TORCHINDUCTOR_CACHE_DIR": str(cache)},
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return eager, compiled, cache


def assert_compiled_matches_eager(eager: Path, compiled: Path, cache: Path, device: str) -> None:
    assert cache.is_dir() and any(p.is_file() for p in cache.rglob("*")), (
        f"trainer.compile=true left nothing in its inductor cache {cache}: the step was not compiled"
    )
    assert f"1 rank(s) on {device}" in (compiled / "train.log").read_text()
    a, b = losses(eager), losses(compiled)
    assert sorted(a) == list(range(1, STEPS + 1)) and sorted(b) == sorted(a)
    worst = max(abs(float(a[step]) - float(b[step])) for step in a)
    assert worst <= LOSS_TOLERANCE, f"logged losses differ by up to {worst:.3f} bits: eager {a}, compiled {b}"
    pa, pb = (
        params(eager / "checkpoints/checkpoint_last.pt"),
        params(compiled / "checkpoints/checkpoint_last.pt"),
    )
    assert pa.keys() == pb.keys()  # the unwrapped module is saved, without `_orig_mod.` prefixes
    difference = math.sqrt(sum(((pa[k].double() - pb[k].double()) ** 2).sum().item() for k in pa))
    norm = math.sqrt(sum((pa[k].double() ** 2).sum().item() for k in pa))
    assert all(torch.isfinite(p).all() for p in pb.values())
    assert difference / norm <= PARAM_TOLERANCE, (
        f"parameters after {STEPS} steps differ by {difference / norm:.2e} (relative; tolerance {PARAM_TOLERANCE:.0e})"
    )


def test_compiled_training_matches_eager_on_cpu(prepared, corpus, tmp_path):
    eager, compiled, cache = train_eager_and_compiled(prepared, corpus, tmp_path, "cpu")
    assert_compiled_matches_eager(eager, compiled, cache, "cpu")
