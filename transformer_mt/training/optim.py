"""Adam and the learning-rate schedule of the paper (section 5.3, "Optimizer").

    lrate = d_model^-0.5 * min(step^-0.5, step * warmup_steps^-1.5)

increases linearly for the first `warmup_steps` and then decays with the inverse square root of the
step. fairseq writes the same shape with an explicit peak learning rate,

    lrate = lr * min(step / warmup_steps, sqrt(warmup_steps / step)),

which is `schedule=inverse_sqrt` here; the paper's form is `schedule=noam` (its scale factor is
`lr_scale`, 1.0 in the paper). Both decay for ever and so suit runs of open length.

A run with a fixed budget of `max_steps` (a recipe that must finish in an hour, say) does better
when the rate reaches its floor at the last step (Loshchilov & Hutter 2017; fairseq's `cosine`
scheduler without restarts): `schedule=cosine` warms up linearly as above, then follows

    lrate = min_lr + (lr - min_lr) * (1 + cos(pi * (step - warmup_steps) / (max_steps - warmup_steps))) / 2

down to `min_lr` at `max_steps`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

SCHEDULES = ("noam", "inverse_sqrt", "cosine", "constant")


def learning_rate(
    step: int,
    *,
    schedule: str,
    warmup_steps: int,
    d_model: int,
    lr: float,
    lr_scale: float,
    max_steps: int = 0,
    min_lr: float = 0.0,
) -> float:
    """The learning rate at `step` (1-based: the first update is step 1). `max_steps` and `min_lr`
    are the end and floor of the cosine schedule."""
    step = max(step, 1)
    if schedule == "noam":
        return lr_scale * d_model**-0.5 * min(step**-0.5, step * warmup_steps**-1.5)
    if schedule == "inverse_sqrt":
        return lr * min(step / warmup_steps, math.sqrt(warmup_steps / step))
    if schedule == "cosine":
        if step <= warmup_steps:
            return lr * step / warmup_steps
        progress = min((step - warmup_steps) / max(max_steps - warmup_steps, 1), 1.0)
        return min_lr + (lr - min_lr) * (1 + math.cos(math.pi * progress)) / 2
    if schedule == "constant":
        return lr
    raise ValueError(f"trainer.schedule={schedule!r} is not one of: {', '.join(SCHEDULES)}")


def build_adam(
    model: nn.Module, *, betas: tuple[float, float], eps: float, weight_decay: float, device: torch.device
) -> torch.optim.Adam:
    """Adam with the fused kernel on GPU and the multi-tensor (foreach) one on CPU."""
    params = [p for p in model.parameters() if p.requires_grad]
    fused = device.type == "cuda"
    return torch.optim.Adam(
        params, lr=0.0, betas=betas, eps=eps, weight_decay=weight_decay, fused=fused, foreach=not fused
    )
