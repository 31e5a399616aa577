"""`transformer-mt bench layers`: the paper's Table 1 measured (section 4, "Why Self-Attention").

Table 1 compares layer types that map n vectors of width d to n others by three costs: computation
per layer, the minimum number of sequential operations, and the maximum path length between two
positions. One layer of each type (`layer_probes.py` builds them) is measured over a sweep of n and d:

- forward and forward+backward time (median of `repeats` runs after `warmup`), with the default
  kernels, i.e. what training gets;
- FLOPs, analytic (`layer_probes.layer_flops`; the tests check them against torch's FlopCounterMode);
- memory: the bytes the forward pass saves for backward, and on a GPU the peak allocated;
- sequential operations: the longest chain of dependent kernels from input to output (and of
  dependent matrix products), recorded op by op;
- the maximum path length, probed with gradients: how many stacked layers it takes before the last
  output depends on the first input.

Time, FLOPs and memory get log-log slopes against n over the largest lengths, and the n where
self-attention becomes dearer than each other layer (the paper's n = d crossover with the
recurrence). Results go to the terminal, a JSON file and a PNG plot.

    transformer-mt bench layers                          # CPU defaults, a few minutes
    transformer-mt bench layers quick=true plot=null     # seconds
    transformer-mt bench layers lengths=[64,256,1024,4096] widths=[512,1024] device=cuda
"""

# ruff: noqa: UP006, UP035, UP045 -- OmegaConf reads LayersBenchConfig: List/Optional, not list/X | None.
from __future__ import annotations

import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, List, Optional

import numpy as np
import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import Tensor, nn

from transformer_mt.bench.layer_probes import (
    LAYER_TYPES,
    build_layer,
    critical_path,
    layer_flops,
    path_length,
    saved_activation_bytes,
)

# Table 1 of the paper. The separable convolution's row is from the text ("equal to the combination
# of a self-attention layer and a point-wise feed-forward layer"); its path is the convolution's.
THEORY: dict[str, dict[str, str]] = {
    "self_attention": {"complexity": "O(n^2 d)", "sequential": "O(1)", "path": "O(1)"},
    "restricted_attention": {"complexity": "O(r n d)", "sequential": "O(1)", "path": "O(n/r)"},
    "recurrent": {"complexity": "O(n d^2)", "sequential": "O(n)", "path": "O(n)"},
    "convolution": {"complexity": "O(k n d^2)", "sequential": "O(1)", "path": "O(n/k)"},
    "dilated_convolution": {"complexity": "O(k n d^2)", "sequential": "O(1)", "path": "O(log_k n)"},
    "separable_convolution": {"complexity": "O(k n d + n d^2)", "sequential": "O(1)", "path": "O(n/k)"},
}


@dataclass
class LayersBenchConfig:
    """Which layers, over which lengths n and widths d, on which device, and where the results go."""

    layers: List[str] = field(default_factory=lambda: list(LAYER_TYPES))
    lengths: List[int] = field(default_factory=lambda: [16, 32, 64, 128, 256, 512, 1024])  # n
    widths: List[int] = field(default_factory=lambda: [64, 256, 512])  # d (the paper's d_model is 512)
    batch: int = 1  # sequences per measurement: Table 1 counts per sequence
    heads: int = 8  # attention heads (the paper's h); every width must be a multiple
    window: int = 16  # restricted self-attention: query i sees keys j with |i - j| <= window (the paper's r)
    kernel: int = 3  # convolution kernel width k
    repeats: int = 5  # timed runs per measurement; the median is reported
    warmup: int = 2
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # torch CPU threads. 1 by default: steady timings on a shared machine, and an LSTM's per-step thread
    # synchronisation does not swamp its time when cores are oversubscribed; 0 keeps torch's default.
    threads: int = 1
    probe_lengths: List[int] = field(default_factory=lambda: [16, 32, 64, 128, 256])  # path-length probe n
    probe_width: int = 8  # the path-length probe's width d (float64, 2 attention heads)
    fit_points: int = 4  # slopes are fitted on this many of the largest lengths
    quick: bool = False  # tiny sizes and one timed run (tests, smoke runs): replaces the sizes above
    seed: int = 0
    output: Optional[str] = "bench_layers.json"  # every measurement, the slopes and the crossovers
    plot: Optional[str] = "bench_layers.png"  # the log-log figure (needs matplotlib); null: none


def quick_sizes(cfg: LayersBenchConfig) -> LayersBenchConfig:
    """`quick=true`: a sweep that runs in seconds on one core."""
    cfg.lengths, cfg.widths, cfg.probe_lengths = [8, 16, 32, 64], [16, 32], [8, 16, 32]
    cfg.heads, cfg.window, cfg.repeats, cfg.warmup, cfg.fit_points = 2, 4, 1, 0, 3
    return cfg


def parse_config(overrides: list[str]) -> LayersBenchConfig:
    """key=value overrides on the defaults, type-checked; any mistake is one ValueError for people."""
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ValueError(f"expected key=value overrides, got {' '.join(bad)!r}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(LayersBenchConfig), OmegaConf.from_dotlist(overrides))
        cfg: LayersBenchConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as err:
        raise ValueError(str(err).splitlines()[0]) from None
    if cfg.quick:
        cfg = quick_sizes(cfg)
    unknown = [name for name in cfg.layers if name not in LAYER_TYPES]
    if unknown:
        raise ValueError(f"unknown layer type(s) {', '.join(unknown)}; choose from: {', '.join(LAYER_TYPES)}")
    if not cfg.lengths or not cfg.widths or min(cfg.lengths + cfg.widths + cfg.probe_lengths) < 2:
        raise ValueError("lengths, widths and probe_lengths must be non-empty lists of sizes >= 2")
    if any(d % cfg.heads for d in cfg.widths):
        raise ValueError(f"every width must be a multiple of heads={cfg.heads}, got widths={cfg.widths}")
    if cfg.kernel < 2 or cfg.window < 1 or cfg.batch < 1 or cfg.repeats < 1 or cfg.fit_points < 2:
        raise ValueError("need kernel >= 2, window >= 1, batch >= 1, repeats >= 1 and fit_points >= 2")
    cfg.lengths.sort()
    cfg.widths.sort()
    cfg.probe_lengths.sort()
    return cfg


# -------------------------------------------------------------------------------------------------
# Timing and memory of one layer


def median_seconds(fn: Callable[[], Any], repeats: int, warmup: int, device: torch.device) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_layer(layer: nn.Module, x: Tensor, *, repeats: int, warmup: int) -> dict[str, Any]:
    """Forward and forward+backward median seconds, saved activations and (GPU) peak memory."""
    grad_out = torch.randn_like(x)
    x = x.detach().requires_grad_()

    def forward() -> None:
        with torch.no_grad():
            layer(x)

    def forward_backward() -> None:
        x.grad = None
        layer.zero_grad(set_to_none=True)
        layer(x).backward(grad_out)

    result: dict[str, Any] = {
        "forward_s": median_seconds(forward, repeats, warmup, x.device),
        "forward_backward_s": median_seconds(forward_backward, repeats, warmup, x.device),
        "saved_activation_bytes": saved_activation_bytes(layer, x),
        "peak_memory_bytes": None,
    }
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
        torch.cuda.reset_peak_memory_stats(x.device)
        base = torch.cuda.memory_allocated(x.device)
        forward_backward()
        torch.cuda.synchronize(x.device)
        result["peak_memory_bytes"] = torch.cuda.max_memory_allocated(x.device) - base
    return result


# -------------------------------------------------------------------------------------------------
# Slopes and crossovers


def loglog_slope(xs: list[float], ys: list[float]) -> float | None:
    """The least-squares slope of log y against log x (None with fewer than 2 usable points)."""
    points = [(math.log(x), math.log(y)) for x, y in zip(xs, ys, strict=True) if x > 0 and y and y > 0]
    if len(points) < 2:
        return None
    lx, ly = zip(*points, strict=True)
    return float(np.polyfit(lx, ly, 1)[0])


def crossover(lengths: list[int], ours: list[float], theirs: list[float]) -> dict[str, float | None]:
    """Where `ours` first rises above `theirs`: n interpolated on log-log axes (None if it does not
    cross from below within the lengths), and the ratio ours / theirs at the smallest and largest n."""
    gaps = [math.log(a / b) for a, b in zip(ours, theirs, strict=True)]
    n = None
    for i in range(1, len(lengths)):
        if gaps[i - 1] <= 0 < gaps[i]:
            t = -gaps[i - 1] / (gaps[i] - gaps[i - 1])
            n = math.exp(math.log(lengths[i - 1]) + t * math.log(lengths[i] / lengths[i - 1]))
            break
    return {"n": n, "ratio_first": ours[0] / theirs[0], "ratio_last": ours[-1] / theirs[-1]}


METRICS = ("forward_s", "forward_backward_s", "flops", "saved_activation_bytes")


def summarise(cfg: LayersBenchConfig, rows: list[dict[str, Any]]) -> tuple[list[dict], list[dict]]:
    """Slopes against n per (layer, d), and self-attention's crossover with every other layer per d."""

    def series(layer: str, d: int, metric: str) -> list[float]:
        found = {r["n"]: r[metric] for r in rows if r["layer"] == layer and r["d"] == d}
        return [found[n] for n in cfg.lengths]

    fit = cfg.lengths[-cfg.fit_points :]
    slopes = [
        {"layer": layer, "d": d} | {m: loglog_slope(fit, series(layer, d, m)[-len(fit) :]) for m in METRICS}
        for layer in cfg.layers
        for d in cfg.widths
    ]
    crossovers = []
    if "self_attention" in cfg.layers:
        for d in cfg.widths:
            for other in cfg.layers:
                if other != "self_attention":
                    crossovers.append(
                        {"d": d, "versus": other}
                        | {
                            m: crossover(cfg.lengths, series("self_attention", d, m), series(other, d, m))
                            for m in ("flops", "forward_s", "forward_backward_s")
                        }
                    )
    return slopes, crossovers


# -------------------------------------------------------------------------------------------------
# The sweep


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device={name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name} but CUDA is not available here; use device=cpu or device=auto")
    return device


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def environment(device: torch.device) -> dict[str, Any]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return {
        "date": datetime.date.today().isoformat(),
        "device": str(device),
        "device_name": name,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }


def run(cfg: LayersBenchConfig, log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Every measurement of the sweep, its slopes and crossovers, and the structure probes."""
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    opts = {"heads": cfg.heads, "window": cfg.window, "kernel": cfg.kernel}
    rows, sequential, paths = [], [], []
    for layer_type in cfg.layers:
        log(f"{layer_type}: time and memory over n={cfg.lengths}, d={cfg.widths}")
        for d in cfg.widths:
            torch.manual_seed(cfg.seed)
            layer = build_layer(layer_type, d, **opts).to(device)
            for n in cfg.lengths:
                x = torch.randn(cfg.batch, n, d, device=device)
                flops = layer_flops(layer_type, cfg.batch, n, d, window=cfg.window, kernel=cfg.kernel)
                measured = measure_layer(layer, x, repeats=cfg.repeats, warmup=cfg.warmup)
                rows.append(
                    {"layer": layer_type, "n": n, "d": d, "batch": cfg.batch, "flops": flops} | measured
                )
        # The chain of dependent kernels does not depend on d: recorded at the smallest width.
        layer = build_layer(layer_type, cfg.widths[0], **opts).to(device)
        for n in cfg.lengths:
            kernels, matmuls = critical_path(layer, torch.randn(cfg.batch, n, cfg.widths[0], device=device))
            sequential.append({"layer": layer_type, "n": n, "kernels": kernels, "matmuls": matmuls})
        log(f"{layer_type}: path length over n={cfg.probe_lengths}")
        for n in cfg.probe_lengths:
            depth = path_length(
                layer_type, n, d=cfg.probe_width, window=cfg.window, kernel=cfg.kernel, seed=cfg.seed
            )
            paths.append({"layer": layer_type, "n": n, "path_length": depth})
    slopes, crossovers = summarise(cfg, rows)
    structure = {
        layer_type: {
            "kernels_vs_n": loglog_slope(
                cfg.lengths, [s["kernels"] for s in sequential if s["layer"] == layer_type]
            ),
            "path_length_vs_n": loglog_slope(
                cfg.probe_lengths, [p["path_length"] for p in paths if p["layer"] == layer_type]
            ),
        }
        for layer_type in cfg.layers
    }
    return {
        "config": asdict(cfg),
        "environment": environment(device),
        "theory": {name: THEORY[name] for name in cfg.layers},
        "measurements": rows,
        "sequential_ops": sequential,
        "path_length": paths,
        "slopes_vs_n": slopes,
        "structure_slopes_vs_n": structure,
        "crossovers": crossovers,
    }


def main(overrides: list[str], show_help: bool) -> int | None:
    cfg = parse_config(overrides)
    if show_help:
        print(
            f"transformer-mt bench layers: {__doc__.strip()}\n\nConfig (override any key with key=value):\n"
        )
        print(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
        return 0
    from transformer_mt.bench import plot

    if cfg.plot:
        plot.require_matplotlib()  # before minutes of measuring, not after
    results = run(cfg, log=lambda line: print(line, file=sys.stderr, flush=True))
    print(plot.report(results))
    if cfg.output:
        Path(cfg.output).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.output).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {cfg.output}", file=sys.stderr)
    if cfg.plot:
        Path(cfg.plot).parent.mkdir(parents=True, exist_ok=True)
        plot.plot_layers(results, cfg.plot)
        print(f"wrote {cfg.plot}", file=sys.stderr)
    return 0
