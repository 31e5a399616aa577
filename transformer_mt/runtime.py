"""Where a command runs, decided once: device, precision, rank and world size.

Every command (train, evaluate, translate, average, bench) asks this module for a `Runtime` and then
uses its contexts and methods instead of branching on the environment: `autocast()` for mixed
precision, `wrap(model)` for DDP and `torch.compile`, `no_sync(module, sync=...)` for gradient
accumulation, `is_main` for what only rank 0 does, `main_first` for what rank 0 must do before the
others (however long it takes), and a few collectives (`all_reduce_sum`, `broadcast_object`,
`gather_objects`, `barrier`) that are plain pass-throughs on one process.

`init_runtime` reads what `torchrun` sets (RANK, WORLD_SIZE, LOCAL_RANK), picks the device and the
process-group backend (NCCL on GPU, gloo on CPU); `local_runtime` is the one-process runtime of the
decoding commands and the benchmarks. Both refuse an unknown or absent device with one line that
names the config key, before any work starts.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEVICES = ("auto", "cpu", "cuda")
PATIENT_TIMEOUT = datetime.timedelta(days=365)  # `main_first`'s wait: in practice none


def resolve_device(name: str, *, key: str = "device", local_rank: int = 0) -> torch.device:
    """The device that `key=name` asks for (`auto`: the GPU if there is one), or a ValueError."""
    if name not in DEVICES:
        raise ValueError(f"{key}={name!r} is not one of: {', '.join(DEVICES)}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"{key}=cuda but no CUDA device is visible; use {key}=cpu")
    return torch.device("cuda", local_rank)


def check_precision(precision: str, device: torch.device, *, key: str = "precision") -> None:
    """A ValueError unless `precision` is known and `device` can compute in it."""
    if precision not in PRECISIONS:
        raise ValueError(f"{key}={precision!r} is not one of: {', '.join(PRECISIONS)}")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"{key}=bf16 needs a GPU with bfloat16 support; use fp16 or fp32")


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed precision for forward passes on `device`; a no-op in fp32. The one place it is written."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=PRECISIONS[precision])


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    precision: str = "fp32"  # fp32 | bf16 | fp16
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def comm_device(self) -> torch.device:
        """Where collectives' tensors must live: the GPU for NCCL, the CPU for gloo."""
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.precision)

    def wrap(self, model: nn.Module, *, compile: bool = False) -> nn.Module:
        """The module a training step calls: DDP over the ranks (when there are several), compiled
        when asked. The unwrapped `model` stays the one to save and validate."""
        wrapped = model
        if self.distributed:
            device_ids = [self.device] if self.device.type == "cuda" else None
            wrapped = DistributedDataParallel(model, device_ids=device_ids)
        return torch.compile(wrapped) if compile else wrapped

    def no_sync(self, module: nn.Module, *, sync: bool) -> contextlib.AbstractContextManager:
        """Skip DDP's gradient all-reduce in this backward unless `sync` (the last micro-batch)."""
        ddp = getattr(module, "_orig_mod", module)  # torch.compile keeps the DDP module here
        if sync or not isinstance(ddp, DistributedDataParallel):
            return contextlib.nullcontext()
        return ddp.no_sync()

    def all_reduce_sum(self, values: list[float] | Tensor) -> list[float] | Tensor:
        """Sum over all ranks in one collective: a list of numbers gives a list; a tensor gives a
        tensor on this device (no host sync, so callers `.item()` only what they log)."""
        if isinstance(values, Tensor):
            if not self.distributed:
                return values
            t = values.to(self.comm_device, copy=True)
            dist.all_reduce(t)
            return t.to(values.device)
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.comm_device)
        dist.all_reduce(t)
        return t.tolist()

    def broadcast_object(self, obj: object) -> object:
        """Rank 0's `obj`, on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_objects(self, obj: object) -> list[object]:
        """Every rank's `obj`, in rank order (on every rank)."""
        if not self.distributed:
            return [obj]
        out: list[object] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    @contextlib.contextmanager
    def main_first(self, what: str) -> Iterator[None]:
        """Run the block on rank 0 first, and on the other ranks once rank 0 has finished it, however
        long that takes: they wait on a group of their own without the collective timeout (rank 0
        preparing a large corpus must not end the job), after printing what they wait for. If rank 0
        fails inside the block it exits, and torchrun stops the others."""
        if not self.distributed:
            yield
            return
        group = dist.new_group(backend="gloo", timeout=PATIENT_TIMEOUT)
        try:
            if not self.is_main:
                print(f"rank {self.rank}: waiting for rank 0 to {what} (no time limit)", file=sys.stderr, flush=True)
                dist.barrier(group=group)
            yield
            if self.is_main:
                dist.barrier(group=group)
        finally:
            dist.destroy_process_group(group)


def local_runtime(*, device: str = "auto", precision: str = "fp32", key_prefix: str = "") -> Runtime:
    """The runtime of a one-process command (evaluate, translate, average, bench)."""
    torch_device = resolve_device(device, key=f"{key_prefix}device")
    check_precision(precision, torch_device, key=f"{key_prefix}precision")
    return Runtime(torch_device, precision)


def init_runtime(
    *, device: str = "auto", precision: str = "fp32", timeout_s: float = 600.0, key_prefix: str = "trainer."
) -> Runtime:
    """Set up the process group (when launched by torchrun) and choose this rank's device."""
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    torch_device = resolve_device(device, key=f"{key_prefix}device", local_rank=local_rank)
    check_precision(precision, torch_device, key=f"{key_prefix}precision")
    if torch_device.type == "cuda":
        torch.cuda.set_device(torch_device)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if torch_device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend=backend,
            timeout=datetime.timedelta(seconds=timeout_s),
            device_id=torch_device if backend == "nccl" else None,
        )
    return Runtime(torch_device, precision, rank, world_size, local_rank)


def shutdown(runtime: Runtime) -> None:
    if runtime.distributed and dist.is_initialized():
        dist.destroy_process_group()


__all__ = [
    "PRECISIONS",
    "Runtime",
    "autocast",
    "check_precision",
    "init_runtime",
    "local_runtime",
    "resolve_device",
    "shutdown",
]
