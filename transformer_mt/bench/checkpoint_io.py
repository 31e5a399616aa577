"""`transformer-mt bench checkpoint`: what the checkpoint digest costs in save and load time.

`checkpoint.save_checkpoint` stores a digest of the file's bytes (a sha256 tree over 16 MiB blocks,
hashed by several threads) and `load_checkpoint` verifies it. This measures both against the same
work without a digest: `torch.save` into memory, one write, fsync and rename (what
`save_checkpoint` did before), and a plain `torch.load(weights_only=True)`, on a state of
`params_millions` fp32 parameters, with Adam's two moments when `optimizer=true` (a training
checkpoint, three times the model's bytes). The files go to `dir` (default: a temporary folder;
give one on the disk that runs use). The medians of `repeats` runs are reported, and the digest
alone in GB/s.
"""

# ruff: noqa: UP035, UP045 -- OmegaConf reads the dataclass fields: Optional, not X | None.
from __future__ import annotations

import io
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from transformer_mt import checkpoint as ckpt
from transformer_mt.bench import common


@dataclass
class CheckpointBenchConfig:
    """Options of `bench checkpoint` (key=value on the command line)."""

    params_millions: float = 200.0  # model parameters, fp32
    optimizer: bool = True  # add Adam's exp_avg and exp_avg_sq (a training checkpoint)
    tensors: int = 200  # the parameters are split into this many tensors
    repeats: int = 3
    dir: Optional[str] = None  # where the files are written (default: a temporary folder)
    output: Optional[str] = None  # write the results here as JSON

    def __post_init__(self) -> None:
        if not self.params_millions > 0 or self.tensors < 1 or self.repeats < 1:
            raise ValueError("bench checkpoint: params_millions must be > 0, tensors and repeats >= 1")


def make_state(cfg: CheckpointBenchConfig) -> dict[str, Any]:
    numel = int(cfg.params_millions * 1e6) // cfg.tensors
    generator = torch.Generator().manual_seed(0)
    model = {f"layer{i}.weight": torch.randn(numel, generator=generator) for i in range(cfg.tensors)}
    state: dict[str, Any] = {"format": ckpt.FORMAT, "model": model, "step": 1}
    if cfg.optimizer:
        moments = {i: {"exp_avg": t.clone(), "exp_avg_sq": t.square()} for i, t in enumerate(model.values())}
        state["optimizer"] = {"state": moments, "param_groups": [{"params": list(range(cfg.tensors))}]}
    return state


def plain_save(state: dict[str, Any], path: Path) -> None:
    """`save_checkpoint` without the digest: serialise, write, fsync, rename."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    tmp = path.with_name(f".{path.name}.plain.tmp")
    with open(tmp, "wb") as f:
        f.write(buffer.getbuffer())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def run(cfg: CheckpointBenchConfig) -> dict[str, Any]:
    state = make_state(cfg)
    with tempfile.TemporaryDirectory(dir=cfg.dir) as folder:
        plain, digested = Path(folder) / "plain.pt", Path(folder) / "digest.pt"
        timings: dict[str, list[float]] = {key: [] for key in ("save", "save_digest", "load", "load_digest")}
        for _ in range(cfg.repeats):
            timings["save"].append(_seconds(lambda: plain_save(state, plain)))
            timings["save_digest"].append(_seconds(lambda: ckpt.save_checkpoint(state, digested)))
            timings["load"].append(_seconds(lambda: torch.load(plain, map_location="cpu", weights_only=True)))
            timings["load_digest"].append(_seconds(lambda: ckpt.load_checkpoint(digested)))
        size = digested.stat().st_size
        data = digested.read_bytes()
        hashing = [_seconds(lambda: ckpt.bytes_digest(memoryview(data))) for _ in range(cfg.repeats)]
    medians = {key: common.median(values) for key, values in timings.items()}
    rows = [
        {"step": "save", "plain_s": medians["save"], "digest_s": medians["save_digest"]},
        {"step": "load", "plain_s": medians["load"], "digest_s": medians["load_digest"]},
    ]
    for row in rows:
        row["slowdown"] = row["digest_s"] / row["plain_s"]
    return {
        "config": asdict(cfg),
        "environment": common.environment(torch.device("cpu")),
        "file_bytes": size,
        "digest_gb_per_s": size / common.median(hashing) / 1e9,
        "digest_threads": min(8, os.cpu_count() or 1),
        "rows": rows,
        "timings": timings,
    }


def _seconds(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def table(payload: dict[str, Any]) -> str:
    columns = [("step", "step"), ("plain_s", "without digest (s)"), ("digest_s", "with digest (s)")]
    columns.append(("slowdown", "ratio"))
    head = (
        f"checkpoint of {payload['file_bytes'] / 1e9:.2f} GB; digest alone: {payload['digest_gb_per_s']:.2f} GB/s "
        f"on {payload['digest_threads']} threads ({payload['environment']['device_name']})"
    )
    return head + "\n" + common.format_table(payload["rows"], columns)


def main(overrides: list[str], show_help: bool) -> int | None:
    if show_help:
        print(common.options_help(CheckpointBenchConfig, "bench checkpoint", __doc__ or ""))
        return None
    cfg = common.parse_options(CheckpointBenchConfig, overrides, "bench checkpoint")
    payload = run(cfg)
    print(table(payload))
    if cfg.output:
        print(f"wrote {common.write_json(cfg.output, payload)}", file=sys.stderr)
    return 0


__all__ = ["CheckpointBenchConfig", "make_state", "plain_save", "run", "table", "main"]
