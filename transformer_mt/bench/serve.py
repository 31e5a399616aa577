"""`transformer-mt bench serve`: a loopback load test of `transformer-mt serve`.

Starts the service (a real `transformer-mt serve` process on a free 127.0.0.1 port) over
`checkpoint=PATH` and sends it a fixed plan of requests: `clients` concurrent clients, each sending
`requests` requests one after another, each of `min_lines`..`max_lines` lines drawn from
`input=FILE` (default: the English side of the embedded sample's test split). Then the very same
requests again one at a time, from one client: the throughput and latency that dynamic batching
is measured against. Everything is bounded: the counts are fixed, and the whole run stops by itself
after `timeout_s` (a phase cut short is reported as such).

Correctness is checked, not assumed: every request must be answered with 200, and every line of
every answer must equal what `translate` gives for that line alone (a Translator over the same
checkpoint with the same decoding settings, translating one line at a time). Exit status 1 if
either fails.

Reported per phase: requests and lines answered, wall time, lines/s and requests/s, latency p50 and
p99 (ms, per request, from sending it to its answer), and the concurrent phase's throughput over
the sequential one's. Timed figures mean something only on an otherwise idle machine.
"""

# ruff: noqa: UP045 -- OmegaConf reads the dataclass fields: Optional, not X | None.
from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from transformer_mt.bench import common
from transformer_mt.data.corpus import read_lines
from transformer_mt.data.prepare import DataConfig
from transformer_mt.data.sample import write_sample
from transformer_mt.decoding.translator import Translator
from transformer_mt.runtime import resolve_device


@dataclass
class ServeBenchConfig:
    """Options of `bench serve` (key=value on the command line)."""

    checkpoint: Optional[str] = None  # required: the model to serve
    input: Optional[str] = None  # sentences, one a line; None: the embedded sample's test split (English)
    clients: int = 32  # concurrent clients, each with one request in flight at a time
    requests: int = 25  # requests per client
    min_lines: int = 1  # lines per request, drawn uniformly from min_lines..max_lines
    max_lines: int = 8
    beam: Optional[int] = None  # decoding settings of every request (None: the checkpoint's)
    lenpen: Optional[float] = None
    batch_window_ms: float = 5.0  # the server's batching window
    sequential: bool = True  # also send the same requests one at a time (the baseline)
    check: bool = True  # compare every answered line with `translate` of that line alone
    device: str = "auto"
    precision: str = "fp32"
    threads: Optional[int] = None  # torch CPU threads of the server (default: torch's choice)
    timeout_s: float = 1800.0  # the whole run stops by itself after this
    startup_timeout_s: float = 300.0
    seed: int = 1  # which lines each request gets
    output: Optional[str] = None  # write the results here as JSON

    def __post_init__(self) -> None:
        problems = []
        if self.checkpoint is None:
            problems.append("checkpoint=PATH is required")
        elif not Path(self.checkpoint).is_file():
            problems.append(f"checkpoint={self.checkpoint}: no such file")
        if self.input is not None and not Path(self.input).is_file():
            problems.append(f"input={self.input}: no such file")
        if not 1 <= self.clients <= 1024:
            problems.append(f"clients={self.clients} must be between 1 and 1024")
        if not 1 <= self.requests <= 100_000:
            problems.append(f"requests={self.requests} must be between 1 and 100000")
        if not 1 <= self.min_lines <= self.max_lines <= 1024:
            problems.append(f"need 1 <= min_lines={self.min_lines} <= max_lines={self.max_lines} <= 1024")
        for name in ("timeout_s", "startup_timeout_s"):
            if getattr(self, name) <= 0:
                problems.append(f"{name}={getattr(self, name)} must be positive")
        if problems:
            raise ValueError("bench serve: " + "; ".join(problems))


def sentences(cfg: ServeBenchConfig) -> list[str]:
    if cfg.input is not None:
        found = [line for line in read_lines(cfg.input) if line.strip()]
        if not found:
            raise ValueError(f"bench serve: input={cfg.input} has no non-empty line")
        return found
    with tempfile.TemporaryDirectory() as tmp:  # the sample `data=sample` prepares, test split
        directory = write_sample(tmp, seed=DataConfig.seed)
        return (Path(directory) / "test.en").read_text(encoding="utf-8").splitlines()


def plan(cfg: ServeBenchConfig, pool: list[str]) -> list[list[list[str]]]:
    """plan[client][request] = the lines of that request."""
    rng = random.Random(cfg.seed)
    return [
        [rng.sample(pool, min(len(pool), rng.randint(cfg.min_lines, cfg.max_lines))) for _ in range(cfg.requests)]
        for _ in range(cfg.clients)
    ]


def decoding_options(cfg: ServeBenchConfig) -> dict[str, Any]:
    return {name: value for name, value in (("beam", cfg.beam), ("lenpen", cfg.lenpen)) if value is not None}


# ---------------------------------------------------------------------------------------------
# The server process


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`transformer-mt serve` on 127.0.0.1, its log in a file."""

    def __init__(self, cfg: ServeBenchConfig, log_path: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        args = [
            f"checkpoint={cfg.checkpoint}",
            "host=127.0.0.1",
            f"port={self.port}",
            f"device={cfg.device}",
            f"precision={cfg.precision}",
            f"server.batch_window_ms={cfg.batch_window_ms}",
            f"server.max_queue={max(64, 2 * cfg.clients)}",  # never full: each client has one request out
            f"server.max_lines={max(64, cfg.max_lines)}",
            "server.access_log=false",
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if cfg.threads:
            env["OMP_NUM_THREADS"] = str(cfg.threads)
        self._log = log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "transformer_mt", "serve", *args],
            stdout=self._log, stderr=subprocess.STDOUT, env=env,
        )

    def wait_ready(self, httpx: Any, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"bench serve: the server exited with {self.process.returncode}: {self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"bench serve: the server did not answer /health within {timeout_s:.0f} s: {self.log_tail()}")

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM, as a service manager stops it; the exit status (None if it had to be killed)."""
        status: int | None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            status = self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            status = None
        self._log.close()
        return status

    def log_tail(self, chars: int = 2000) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]


# ---------------------------------------------------------------------------------------------
# The clients


async def _client(http: Any, url: str, requests: list[list[str]], options: dict, record: list) -> None:
    for lines in requests:
        start = time.perf_counter()
        try:
            answer = await http.post(f"{url}/translate", json={"text": lines, **options})
            status, body = answer.status_code, answer.json()
        except Exception as err:  # noqa: BLE001 - a failed request is counted and reported, not raised
            status, body = None, {"error": f"{type(err).__name__}: {err}"}
        record.append((lines, status, body, time.perf_counter() - start))


async def _phase(url: str, work: list[list[list[str]]], options: dict, timeout_s: float, httpx: Any) -> dict:
    """Each list of `work` is one client's requests, sent one after another; clients run concurrently."""
    record: list = []
    limits = httpx.Limits(max_connections=len(work), max_keepalive_connections=len(work))
    start = time.perf_counter()
    timed_out = False
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as http:
        tasks = [asyncio.create_task(_client(http, url, requests, options, record)) for requests in work]
        done, pending = await asyncio.wait(tasks, timeout=timeout_s)
        if pending:
            timed_out = True
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
    return {"record": record, "wall_s": time.perf_counter() - start, "timed_out": timed_out}


def summarise(name: str, phase: dict, expected_requests: int) -> dict[str, Any]:
    record, wall = phase["record"], phase["wall_s"]
    ok = [(lines, seconds) for lines, status, _, seconds in record if status == 200]
    latencies = np.array([seconds for _, seconds in ok]) * 1000.0
    lines = sum(len(lines) for lines, _ in ok)
    p50, p99 = (float(v) for v in np.percentile(latencies, [50, 99])) if len(ok) else (None, None)
    return {
        "phase": name,
        "requests": expected_requests,
        "answered": len(ok),
        "failed": len(record) - len(ok),
        "timed_out": phase["timed_out"],
        "lines": lines,
        "wall_s": wall,
        "requests_per_second": len(ok) / wall if wall > 0 else None,
        "lines_per_second": lines / wall if wall > 0 else None,
        "latency_p50_ms": p50,
        "latency_p99_ms": p99,
    }


def check_lines(cfg: ServeBenchConfig, phases: dict[str, dict]) -> dict[str, Any]:
    """Every answered line against `translate` of that line alone."""
    translator = Translator.from_checkpoint(
        cfg.checkpoint, device=cfg.device, precision=cfg.precision, **decoding_options(cfg)
    )
    alone: dict[str, str] = {}
    checked, mismatches = 0, []
    for name, phase in phases.items():
        for lines, status, body, _ in phase["record"]:
            if status != 200:
                continue
            for line, hyps in zip(lines, body["translations"], strict=True):
                if line not in alone:
                    alone[line] = translator.translate([line])[0][0].text
                checked += 1
                if hyps[0]["text"] != alone[line]:
                    mismatches.append({"phase": name, "source": line, "served": hyps[0]["text"], "alone": alone[line]})
    return {"lines_checked": checked, "distinct_lines": len(alone), "mismatches": len(mismatches),
            "examples": mismatches[:5]}


def first_failures(phases: dict[str, dict]) -> list[str]:
    failures = []
    for name, phase in phases.items():
        for _, status, body, _ in phase["record"]:
            if status != 200:
                failures.append(f"{name}: {status}: {body.get('error') if isinstance(body, dict) else body}")
    return failures[:5]


def run(cfg: ServeBenchConfig) -> dict[str, Any]:
    try:
        import httpx  # the serve extra
    except ModuleNotFoundError:
        raise ValueError("bench serve needs the serve extra: pip install 'transformer-mt[serve]'") from None
    deadline = time.monotonic() + cfg.timeout_s
    work = plan(cfg, sentences(cfg))
    options = decoding_options(cfg)
    total = cfg.clients * cfg.requests
    phases: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(cfg, Path(tmp) / "server.log")
        try:
            server.wait_ready(httpx, min(cfg.startup_timeout_s, deadline - time.monotonic()))
            info = httpx.get(f"{server.url}/info", timeout=10).json()
            _log(f"serving {info['family']} ({info['parameters']:,} parameters) at {server.url}; "
                 f"{cfg.clients} clients x {cfg.requests} requests of {cfg.min_lines}-{cfg.max_lines} lines")
            phases["concurrent"] = asyncio.run(_phase(server.url, work, options, deadline - time.monotonic(), httpx))
            if cfg.sequential:
                one_client = [[lines for requests in work for lines in requests]]
                remaining = max(1.0, deadline - time.monotonic())
                phases["sequential"] = asyncio.run(_phase(server.url, one_client, options, remaining, httpx))
            health = httpx.get(f"{server.url}/health", timeout=10).json()
        finally:
            exit_status = server.stop()
            log_tail = server.log_tail()
    rows = [summarise(name, phase, total) for name, phase in phases.items()]
    if len(rows) == 2 and rows[0]["lines_per_second"] and rows[1]["lines_per_second"]:
        rows[0]["vs_sequential"] = rows[0]["lines_per_second"] / rows[1]["lines_per_second"]
    payload = {
        "settings": asdict(cfg),
        "model": {key: info[key] for key in ("family", "parameters", "vocab_size", "decoding", "step", "checkpoint")},
        "environment": common.environment(resolve_device(cfg.device)),
        "rows": rows,
        "server": {"batches": health["batches"], "searches": health["searches"], "exit_status": exit_status},
        "failures": first_failures(phases),
    }
    if cfg.check:
        payload["check"] = check_lines(cfg, phases)
    if exit_status != 0:
        payload["server"]["log_tail"] = log_tail
    return payload


COLUMNS = [
    ("phase", "phase"),
    ("answered", "answered"),
    ("lines", "lines"),
    ("wall_s", "wall s"),
    ("lines_per_second", "lines/s"),
    ("requests_per_second", "req/s"),
    ("latency_p50_ms", "p50 ms"),
    ("latency_p99_ms", "p99 ms"),
    ("vs_sequential", "vs seq"),
]


def table(payload: dict[str, Any]) -> str:
    rows = []
    for row in payload["rows"]:
        shown = dict(row, answered=f"{row['answered']}/{row['requests']}" + (" (timed out)" if row["timed_out"] else ""))
        if "vs_sequential" in row:
            shown["vs_sequential"] = f"{row['vs_sequential']:.2f}x"
        rows.append(shown)
    s, m, env = payload["settings"], payload["model"], payload["environment"]
    lines = [
        common.format_table(rows, COLUMNS),
        f"{s['clients']} clients x {s['requests']} requests of {s['min_lines']}-{s['max_lines']} lines, "
        f"window {s['batch_window_ms']} ms; {m['family']} {m['parameters']:,} parameters, beam "
        f"{s['beam'] or m['decoding']['beam']}, lenpen {s['lenpen'] if s['lenpen'] is not None else m['decoding']['lenpen']}; "
        f"{env['device_name']}, torch {env['torch']}; server: {payload['server']['searches']} searches, "
        f"exit status {payload['server']['exit_status']}",
    ]
    if "check" in payload:
        c = payload["check"]
        verdict = "all equal" if not c["mismatches"] else f"{c['mismatches']} DIFFER"
        lines.append(f"check against translate, one line alone: {c['lines_checked']} lines "
                     f"({c['distinct_lines']} distinct): {verdict}")
        lines += [f"  {e['phase']}: {e['source']!r}: served {e['served']!r}, alone {e['alone']!r}" for e in c["examples"]]
    lines += [f"failed: {f}" for f in payload["failures"]]
    return "\n".join(lines)


def passed(payload: dict[str, Any]) -> bool:
    complete = all(r["answered"] == r["requests"] and not r["failed"] for r in payload["rows"])
    return complete and payload["server"]["exit_status"] == 0 and not payload.get("check", {}).get("mismatches")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(overrides: list[str], show_help: bool) -> int | None:
    if show_help:
        print(common.options_help(ServeBenchConfig, "bench serve", __doc__ or ""))
        return None
    cfg = common.parse_options(ServeBenchConfig, overrides, "bench serve")
    payload = run(cfg)
    print(table(payload))
    if cfg.output:
        print(f"wrote {common.write_json(cfg.output, payload)}", file=sys.stderr)
    return 0 if passed(payload) else 1


__all__ = ["ServeBenchConfig", "main", "passed", "plan", "run", "table"]
