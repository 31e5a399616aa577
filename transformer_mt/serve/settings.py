"""The `server:` node of `transformer-mt serve`: batching, limits, shutdown.

A plain dataclass without web imports, so that `config.py` registers it even where the optional
`serve` extra (Starlette, uvicorn, pydantic) is not installed.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServerConfig:
    """How the service batches and what it accepts. Every limit bounds the work one request can
    cause, so that no client can hold up the others for longer than the limits allow."""

    batch_window_ms: float = 5.0  # requests arriving this soon after the first are decoded together
    max_batch_lines: int = 256  # a batch stops collecting at this many lines
    max_queue: int = 64  # requests waiting for the model; beyond this, 503 with Retry-After
    max_lines: int = 64  # lines per request (413 beyond)
    max_chars: int = 1000  # characters per line (413 beyond)
    max_beam: int = 16  # the largest beam (and n-best) a request may ask for
    retry_after_s: int = 1  # the Retry-After of a 503
    shutdown_timeout_s: float = 30.0  # after SIGTERM, how long requests in flight get to finish
    access_log: bool = True  # uvicorn's one line per request

    def __post_init__(self) -> None:
        problems = []
        if not 0.0 <= self.batch_window_ms <= 1000.0:
            problems.append(f"batch_window_ms={self.batch_window_ms} must be between 0 and 1000")
        for name in ("max_batch_lines", "max_queue", "max_lines", "max_chars", "max_beam", "retry_after_s"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} must be at least 1")
        if self.shutdown_timeout_s <= 0:
            problems.append(f"shutdown_timeout_s={self.shutdown_timeout_s} must be positive")
        if problems:
            raise ValueError("server: " + "; ".join(problems))

    @property
    def max_body_bytes(self) -> int:
        """The largest request body read: `max_lines` lines of `max_chars` characters, each written
        as the longest JSON escape (12 bytes for a character outside the BMP), and room for options."""
        return self.max_lines * (12 * self.max_chars + 8) + 64 * 1024


__all__ = ["ServerConfig"]
