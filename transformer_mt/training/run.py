"""One training run: its parts, assembled once by `trainer.build_run`, and the counters it carries.

torchtitan's Trainer composes its parts (model, optimiser, data loader, checkpointer, metrics)
instead of inheriting them; a `TrainingRun` is that composition as a plain dataclass, which the
step (`step.train_step`), the loop's functions (`trainer.py`) and the checkpoint (`resume.py`)
read. The first six fields are all that `train_step` needs: `bench train` builds a run of those
alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from transformer_mt.data.loader import BatchLoader
from transformer_mt.models import EncoderDecoder
from transformer_mt.runtime import Runtime
from transformer_mt.training.checkpointer import Checkpointer
from transformer_mt.training.config import TrainerConfig
from transformer_mt.training.cost import TrainingCost
from transformer_mt.training.metrics import MetricsWindow, TrainingLog
from transformer_mt.training.signals import StopRequest
from transformer_mt.training.validation import ValidationSet


class TrainingError(Exception):
    """Training cannot go on; the message says why and where to resume from."""


def no_shared_filesystem(what: object, *, or_else: str = "") -> str:
    """The end of the message for a rank that cannot see what rank 0 wrote: on several nodes, the
    usual cause is a run folder that is not on a shared filesystem."""
    return (
        f"on several nodes without a shared filesystem, copy rank 0's {what} to the same path on every node "
        f"{or_else}before launching"
    )


@dataclass
class TrainState:
    """What the loop carries between updates (and into checkpoints) besides the modules."""

    step: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    bad_validations: int = 0
    nonfinite_in_a_row: int = 0
    skipped_steps: int = 0


@dataclass
class TrainingRun:
    cfg: TrainerConfig
    runtime: Runtime
    model: EncoderDecoder  # unwrapped: what is saved and validated
    step_model: nn.Module  # what a step calls: `runtime.wrap(model)` (DDP over the ranks, compiled)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler  # enabled in fp16 only
    state: TrainState = field(default_factory=TrainState)
    cost: TrainingCost = field(default_factory=TrainingCost)
    stop: StopRequest = field(default_factory=StopRequest)  # SIGTERM / SIGINT, voted on in each update
    # The loop's parts (build_run fills them in; a run for `train_step` alone has none).
    loader: BatchLoader | None = None  # this rank's batches, one update at a time
    valid: ValidationSet | None = None
    checkpointer: Checkpointer | None = None
    log: TrainingLog = field(default_factory=TrainingLog.silent)
    window: MetricsWindow = field(default_factory=MetricsWindow)  # sums since the last log line

    def close(self) -> None:
        """Stop the loader's thread and close the log's writers (on every exit, errors included)."""
        if self.loader is not None:
            self.loader.close()
        self.log.close()


__all__ = ["TrainingError", "TrainState", "TrainingRun"]
