"""Training cost as Table 2 of the paper reports it.

The paper estimates FLOPs as training time x number of GPUs x the GPU's sustained single-precision
rate (2.8 / 3.7 / 6.0 / 9.5 TFLOP/s for K80 / K40 / M40 / P100). We report that estimate next to an
analytic count: each batch adds 3 x the model's `forward_flops` for its padded shape (the backward
pass costs about twice the forward), summed over all ranks. Their ratio to the device's peak is the
model FLOPs utilisation (MFU).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

# Dense peak FLOP/s of common accelerators, by precision (vendor data sheets, no sparsity).
PEAK_FLOPS = {
    "H200": {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12},
    "H100": {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12},
    "A100": {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12},
    "L4": {"bf16": 121e12, "fp16": 121e12, "fp32": 30e12},
    "V100": {"bf16": 0.0, "fp16": 125e12, "fp32": 15.7e12},
}
PAPER_P100_SUSTAINED = 9.5e12  # the paper's estimate for the P100 it trained on


def device_peak_flops(device: torch.device, precision: str) -> float | None:
    """The per-device peak for this precision if the device is known, else None."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peaks in PEAK_FLOPS.items():
        if key in name:
            return peaks.get(precision) or None
    return None


@dataclass
class TrainingCost:
    """Accumulates the work of a run (this rank's share; the trainer sums over ranks)."""

    flops: float = 0.0
    target_tokens: int = 0
    source_tokens: int = 0
    wall_seconds: float = 0.0
    _started: float = field(default_factory=time.perf_counter, repr=False)

    def add_batch(self, forward_flops: float, source_tokens: int, target_tokens: int) -> None:
        self.flops += 3.0 * forward_flops
        self.source_tokens += source_tokens
        self.target_tokens += target_tokens

    def elapsed(self) -> float:
        return self.wall_seconds + time.perf_counter() - self._started

    def state_dict(self) -> dict[str, float]:
        return {
            "flops": self.flops,
            "target_tokens": self.target_tokens,
            "source_tokens": self.source_tokens,
            "wall_seconds": self.elapsed(),
        }

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.flops = float(state["flops"])
        self.target_tokens = int(state["target_tokens"])
        self.source_tokens = int(state["source_tokens"])
        self.wall_seconds = float(state["wall_seconds"])
        self._started = time.perf_counter()


def cost_summary(
    *, flops: float, wall_seconds: float, target_tokens: int, devices: int, peak_flops: float | None
) -> list[str]:
    """Lines of the end-of-run report."""
    device_days = wall_seconds * devices / 86400
    lines = [
        f"training cost: {flops:.3e} FLOPs (analytic, 3 x forward), {target_tokens:,} target tokens, "
        f"{wall_seconds:.0f} s wall on {devices} device(s) = {device_days:.4f} device-days",
        f"  achieved {flops / max(wall_seconds, 1e-9):.3e} FLOP/s in all",
    ]
    if peak_flops:
        mfu = flops / (wall_seconds * devices * peak_flops)
        estimate = wall_seconds * devices * peak_flops
        lines.append(
            f"  model FLOPs utilisation {100 * mfu:.1f}% of {peak_flops:.3e} FLOP/s peak per device; "
            f"the paper's estimate (time x devices x peak) would be {estimate:.3e} FLOPs"
        )
    lines.append(
        f"  the paper's method on P100s (9.5 TFLOP/s sustained) for the same wall time and device count: "
        f"{wall_seconds * devices * PAPER_P100_SUSTAINED:.3e} FLOPs"
    )
    return lines
