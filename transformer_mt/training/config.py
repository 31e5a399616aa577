"""The trainer's settings: batches, stopping rules, the optimiser and schedule, where it runs, logging,
validation and checkpoints. `trainer=default` (configs/trainer/default.yaml) picks the paper's values;
every field can be set on the command line as `trainer.NAME=VALUE`.
"""

# ruff: noqa: UP006, UP035, UP045 -- OmegaConf reads the dataclass fields: List/Optional, not list/X | None.
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional

from transformer_mt.runtime import PRECISIONS
from transformer_mt.training.optim import learning_rate


@dataclass
class TrainerConfig:
    # Batching: tokens per device per micro-batch, micro-batches per update.
    max_tokens: int = 4096
    update_freq: int = 1
    # Stopping.
    max_steps: int = 100_000
    max_epochs: int = 0  # 0: no limit
    max_minutes: float = 0.0  # wall-clock budget of the whole run, resumes included (0: no limit)
    patience: int = 0  # validations without improvement before stopping; 0: never stop early
    target_bleu: float = 0.0  # stop once validation BLEU reaches this (MLPerf's time to 25.0); 0: no target
    # Optimiser and schedule (paper 5.3).
    schedule: str = "noam"  # noam (the paper's formula) | inverse_sqrt (fairseq's) | cosine | constant
    lr: float = 5e-4  # peak for inverse_sqrt and cosine, the rate for constant
    min_lr: float = 0.0  # cosine: the rate it reaches at max_steps
    lr_scale: float = 1.0  # factor on the paper's formula
    warmup_steps: int = 4000
    adam_betas: List[float] = field(default_factory=lambda: [0.9, 0.98])
    adam_eps: float = 1e-9
    weight_decay: float = 0.0
    clip_norm: float = 0.0  # 0: no clipping (the paper does not clip)
    label_smoothing: float = 0.1
    # Where and how.
    precision: str = "fp32"  # fp32 | bf16 | fp16
    device: str = "auto"  # auto | cpu | cuda
    compile: bool = False
    seed: int = 1
    dist_timeout_s: float = 600.0  # a collective waiting longer (a rank died or hangs) ends the job
    max_nonfinite_steps: int = 10  # consecutive non-finite updates before training stops (fp16: at scale < 1)
    peak_flops: Optional[float] = None  # per-device peak FLOP/s for MFU when the device is unknown
    # Logging, validation, checkpoints.
    log_every: int = 50
    valid_every: int = 1000
    valid_bleu: bool = True
    valid_bleu_sentences: int = 200
    save_every: int = 1000
    keep_last: int = 5
    resume: bool = True  # continue from <output_dir>/checkpoints/checkpoint_last.pt when it exists
    init_from: Optional[str] = None  # a new run starts from this checkpoint's weights (fine-tuning)
    prefetch_updates: int = 2  # updates collated ahead in a background thread; 0: on the main thread

    def __post_init__(self) -> None:
        positive = ("max_tokens", "update_freq", "max_steps", "log_every", "valid_every", "save_every")
        positive += ("max_nonfinite_steps", "valid_bleu_sentences")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"trainer.{name} must be at least 1, got {getattr(self, name)}")
        for name in ("max_epochs", "patience", "keep_last", "warmup_steps", "seed", "prefetch_updates"):
            if getattr(self, name) < 0:  # 0: off / keep all / none / on the main thread
                raise ValueError(f"trainer.{name} must be 0 or more, got {getattr(self, name)}")
        for name in ("lr", "lr_scale", "adam_eps"):  # a rate <= 0 would train by gradient ascent, or not at all
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"trainer.{name} must be a positive number, got {getattr(self, name)}")
        for name in ("min_lr", "weight_decay", "clip_norm", "max_minutes"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"trainer.{name} must be 0 or a positive number, got {getattr(self, name)}")
        if len(self.adam_betas) == 2 and not all(0.0 <= beta < 1.0 for beta in self.adam_betas):
            raise ValueError(f"trainer.adam_betas must both be in [0, 1), got {list(self.adam_betas)}")
        if self.peak_flops is not None and not self.peak_flops > 0:
            raise ValueError(f"trainer.peak_flops must be positive (or null to measure it), got {self.peak_flops}")
        if self.warmup_steps < 1 and self.schedule != "constant":
            raise ValueError(f"trainer.warmup_steps must be at least 1, got {self.warmup_steps}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"trainer.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if len(self.adam_betas) != 2:
            raise ValueError(f"trainer.adam_betas needs two values, got {list(self.adam_betas)}")
        learning_rate(1, schedule=self.schedule, warmup_steps=1, d_model=1, lr=1.0, lr_scale=1.0)
        if self.schedule == "cosine" and not 0.0 <= self.min_lr <= self.lr:
            raise ValueError(f"trainer.min_lr={self.min_lr} must be in [0, trainer.lr={self.lr}] for schedule=cosine")
        if self.schedule == "cosine" and self.warmup_steps >= self.max_steps:
            raise ValueError(
                f"trainer.warmup_steps={self.warmup_steps} leaves no step to decay over before "
                f"trainer.max_steps={self.max_steps} (schedule=cosine)"
            )
        if self.precision not in PRECISIONS:
            raise ValueError(f"trainer.precision={self.precision!r} is not one of: {', '.join(PRECISIONS)}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"trainer.device={self.device!r} is not one of: auto, cpu, cuda")
        if not self.dist_timeout_s > 0:
            raise ValueError(f"trainer.dist_timeout_s must be positive, got {self.dist_timeout_s}")
        if not math.isfinite(self.target_bleu) or self.target_bleu < 0 or (self.target_bleu > 0 and not self.valid_bleu):
            raise ValueError(
                f"trainer.target_bleu={self.target_bleu} needs a positive target and trainer.valid_bleu=true"
            )

__all__ = ["TrainerConfig"]
