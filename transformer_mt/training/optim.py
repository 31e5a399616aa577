"""Adam and the learning-rate schedule of the paper (section 5.3, "Optimizer").

    lrate = d_model^-0.5 * min(step^-0.5, step * warmup_steps^-1.5)

increases linearly for the first `warmup_steps` and then decays with the inverse square root of the
step. fairseq writes the same shape with an explicit peak learning rate,

    lrate = lr * min(step / warmup_steps, sqrt(warmup_steps / step)),

which is `schedule=inverse_sqrt` here; the paper's form is `schedule=noam` (its scale factor is
`lr_scale`, 1.0 in the paper).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def learning_rate(
    step: int, *, schedule: str, warmup_steps: int, d_model: int, lr: float, lr_scale: float
) -> float:
    """The learning rate at `step` (1-based: the first update is step 1)."""
    step = max(step, 1)
    if schedule == "noam":
        return lr_scale * d_model**-0.5 * min(step**-0.5, step * warmup_steps**-1.5)
    if schedule == "inverse_sqrt":
        return lr * min(step / warmup_steps, math.sqrt(warmup_steps / step))
    if schedule == "constant":
        return lr
    raise ValueError(f"trainer.schedule={schedule!r} is not one of: noam, inverse_sqrt, constant")


def build_adam(
    model: nn.Module, *, betas: tuple[float, float], eps: float, weight_decay: float, device: torch.device
) -> torch.optim.Adam:
    """Adam with the fused kernel on GPU and the multi-tensor (foreach) one on CPU."""
    params = [p for p in model.parameters() if p.requires_grad]
    fused = device.type == "cuda"
    return torch.optim.Adam(
        params, lr=0.0, betas=betas, eps=eps, weight_decay=weight_decay, fused=fused, foreach=not fused
    )
