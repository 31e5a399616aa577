"""The timing loop and the synthetic batch that every training measurement shares.

Only torch and the standard library: this file runs inside the peers' virtual environments too.
Ids 0-3 are kept for specials (pad, unk, bos, eos in transformer-mt; the peers order theirs
differently), so the random tokens are drawn from [4, vocab_size) and no position is padding.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def synthetic_batch(
    args: dict[str, Any], device: torch.device, bos: int, eos: int
) -> dict[str, torch.Tensor]:
    """Random (batch, len) ids: `src` (with a final EOS), `prev` (BOS + target), `target` (+ EOS)."""
    gen = torch.Generator().manual_seed(args["seed"])
    b, s, t, v = args["batch_size"], args["src_len"], args["tgt_len"], args["vocab_size"]
    src = torch.randint(4, v, (b, s), generator=gen)
    words = torch.randint(4, v, (b, t), generator=gen)
    src[:, -1] = eos
    prev = torch.cat([torch.full((b, 1), bos), words[:, :-1]], dim=1)  # (batch, tgt_len)
    target = torch.cat([words[:, :-1], torch.full((b, 1), eos)], dim=1)  # (batch, tgt_len)
    return {name: x.to(device) for name, x in {"src": src, "prev": prev, "target": target}.items()}


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=PRECISIONS[precision])


def time_steps(step: Callable[[], Any], args: dict[str, Any], device: torch.device) -> list[float]:
    """Seconds of each of args["steps"] calls of `step`, after args["warmup"] untimed calls."""
    for _ in range(args["warmup"]):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = []
    for _ in range(args["steps"]):
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def setup(args: dict[str, Any]) -> torch.device:
    """Threads, seed and device as the harness asked."""
    if args.get("threads"):
        torch.set_num_threads(args["threads"])
    torch.manual_seed(args["seed"])
    return torch.device(args["device"])


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def run_script(measure: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Read the JSON arguments from argv, measure, and print the JSON result as the last line."""
    args = json.loads(sys.argv[1])
    result = measure(args)
    result.setdefault("torch", torch.__version__)
    print(json.dumps(result), flush=True)
