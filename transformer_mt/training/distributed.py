"""Where training runs, decided once: device, precision, rank and world size.

`init_runtime` reads what `torchrun` sets (RANK, WORLD_SIZE, LOCAL_RANK), picks the device and the
process-group backend (NCCL on GPU, gloo on CPU), and returns a `Runtime`. The trainer then uses its
contexts (`autocast`) and flags (`is_main`) instead of branching on the environment everywhere.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Runtime:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    precision: str  # fp32 | bf16 | fp16

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision for the forward pass; a no-op in fp32."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=PRECISIONS[self.precision])

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Sum a few numbers over all ranks (one collective)."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.comm_device)
        dist.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    @property
    def comm_device(self) -> torch.device:
        """Where collectives' tensors must live: the GPU for NCCL, the CPU for gloo."""
        return self.device if self.device.type == "cuda" else torch.device("cpu")


def init_runtime(*, device: str = "auto", precision: str = "fp32", timeout_s: float = 600.0) -> Runtime:
    """Set up the process group (when launched by torchrun) and choose the device."""
    if precision not in PRECISIONS:
        raise ValueError(f"trainer.precision={precision!r} is not one of: {', '.join(PRECISIONS)}")
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("trainer.device=cuda but no CUDA device is visible; use trainer.device=cpu")
        torch_device = torch.device("cuda", local_rank)
        torch.cuda.set_device(torch_device)
    elif device == "cpu":
        torch_device = torch.device("cpu")
    else:
        raise ValueError(f"trainer.device={device!r} is not one of: auto, cpu, cuda")
    if precision == "bf16" and torch_device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("trainer.precision=bf16 needs a GPU with bfloat16 support; use fp16 or fp32")
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if torch_device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend=backend,
            timeout=datetime.timedelta(seconds=timeout_s),
            device_id=torch_device if backend == "nccl" else None,
        )
    return Runtime(rank, world_size, local_rank, torch_device, precision)


def shutdown(runtime: Runtime) -> None:
    if runtime.distributed and dist.is_initialized():
        dist.destroy_process_group()


def gather_objects(runtime: Runtime, obj: object) -> list[object]:
    """Every rank's `obj`, in rank order (on every rank)."""
    if not runtime.distributed:
        return [obj]
    out: list[object] = [None] * runtime.world_size
    dist.all_gather_object(out, obj)
    return out
