"""What the speed harnesses share: key=value options, timing, the device's peak, a table, JSON.

Options are typed dataclasses read with OmegaConf from `key=value` arguments (`batch_size=64`,
`peers=[torch,joeynmt]`), so a misspelt key or a wrong type is an error that names the valid options
before any work starts. The peak FLOP/s that model FLOPs utilisation (MFU) divides by is measured in
the same run, with a large matrix product in each precision, rather than read from a data sheet:
on a CPU there is no data sheet, and on a GPU the measured peak is what a good kernel reaches.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import difflib
import json
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from transformer_mt.runtime import PRECISIONS

T = TypeVar("T")


def parse_options(schema: type[T], overrides: Sequence[str], command: str) -> T:
    """The `schema` dataclass with `key=value` overrides applied; a ValueError names any bad one.

    A list option takes `key=[a,b]` or, for one element, `key=a`; a dict option takes `key.name=value`.
    """
    fields = {f.name: f for f in dataclasses.fields(schema)}
    dotlist = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{command}: expected key=value, got {item!r}; options: {', '.join(fields)}")
        option, dot, _ = key.partition(".")  # `option.key=value` sets one key of a Dict option
        if option not in fields or (dot and "Dict" not in str(fields[option].type)):
            close = difflib.get_close_matches(option, fields, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{command}: unknown option {key!r}{hint}; options: {', '.join(fields)}")
        if "List" in str(fields[option].type) and not dot and not value.lstrip().startswith("["):
            value = f"[{value}]"
        dotlist.append(f"{key}={value}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.from_dotlist(dotlist))
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        reason = str(err).splitlines()[0]
        raise ValueError(f"{command}: bad value for {getattr(err, 'full_key', '')!r}: {reason}") from None


def options_help(schema: type, command: str, doc: str) -> str:
    """The text of `--help`: what the command does, then its options with their defaults."""
    defaults = OmegaConf.to_yaml(OmegaConf.structured(schema))
    return (
        f"{doc.strip()}\n\nOptions of `transformer-mt {command}` (override any with key=value):\n\n{defaults}"
    )


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], Any], *, warmup: int, repeats: int, device: torch.device) -> list[float]:
    """Seconds of each of `repeats` calls of `fn`, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def measure_peak_flops(
    device: torch.device, precision: str, *, size: int | None = None, seconds: float = 1.0
) -> float:
    """FLOP/s of the fastest of repeated square matrix products (2 n^3 FLOPs each) in `precision`.

    Both operand layouts are tried, `a @ b.T` (the layout of `nn.Linear`) and `a @ b`: on some CPUs
    without native bf16 one of them is many times slower than the other. n = 1024 on a CPU and 8192
    on a GPU unless `size` is given; each layout runs for about `seconds` / 2 and at least 3 times.
    """
    n = size or (8192 if device.type == "cuda" else 1024)
    dtype = PRECISIONS[precision]
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = float("inf")
    for second in (b.t(), b):
        start = time.perf_counter()
        torch.mm(a, second)  # warm-up (kernel selection, page faults), timed to skip a hopeless layout
        synchronize(device)
        if time.perf_counter() - start > 4 * best:
            continue
        spent, calls = 0.0, 0
        while spent < seconds / 2 or calls < 3:
            start = time.perf_counter()
            torch.mm(a, second)
            synchronize(device)
            elapsed = time.perf_counter() - start
            best, spent, calls = min(best, elapsed), spent + elapsed, calls + 1
    return 2 * n**3 / best


def environment(device: torch.device) -> dict[str, Any]:
    """Where the numbers were taken: date, device, threads, versions."""
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = _cpu_name()
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": device.type,
        "device_name": device_name,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "cpu"


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """A plain-text table of `rows`; `columns` are (key, header). Floats get 3 significant digits."""

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
        return str(value)

    body = [[cell(row.get(key)) for key, _ in columns] for row in rows]
    widths = [
        max(len(header), *(len(r[i]) for r in body)) if body else len(header)
        for i, (_, header) in enumerate(columns)
    ]

    def line(cells: list[str]) -> str:
        aligned = [
            c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(aligned)

    return "\n".join([line([h for _, h in columns]), line(["-" * w for w in widths]), *map(line, body)])


def write_json(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write `payload` as indented JSON (creating the folder); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


__all__ = [
    "parse_options",
    "options_help",
    "synchronize",
    "time_calls",
    "median",
    "measure_peak_flops",
    "environment",
    "format_table",
    "write_json",
]
