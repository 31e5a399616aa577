"""What a long job shows: a progress bar (step, loss, lr, tokens/s, ETA), TensorBoard scalars and a
plain text log in the output folder. Only the main rank writes; the others get a silent logger.

A full disk is an error that names the file (train.log, or the TensorBoard folder). TensorBoard
writes events in a thread of its own and hands a failed write to the next call from the training
loop, which raises it here; the thread's own traceback would only repeat it after the error line,
so it is not printed. `close()` ends the writers on every exit, errors included.
"""

from __future__ import annotations

import contextlib
import math
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

LN2 = math.log(2)


class TrainingLog:
    def __init__(self, output_dir: Path | None, *, total_steps: int, enabled: bool) -> None:
        self.enabled, self.total_steps = enabled, total_steps
        self._bar: tqdm | None = None
        self._writer: SummaryWriter | None = None
        self._file = None
        if not enabled:
            return
        assert output_dir is not None
        self.path, self.events = output_dir / "train.log", output_dir / "tensorboard"
        _quiet_tensorboard_threads()
        with self._naming(self.events):
            self._writer = SummaryWriter(log_dir=str(self.events))
        try:
            with self._naming(self.path):
                self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
        except OSError:
            self.close()
            raise

    @classmethod
    def silent(cls) -> TrainingLog:
        return cls(None, total_steps=0, enabled=False)

    def info(self, message: str) -> None:
        if not self.enabled:
            return
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        tqdm.write(message, file=sys.stderr)
        with self._naming(self.path):
            self._file.write(f"{stamp} {message}\n")
            self._file.flush()

    def scalars(self, prefix: str, values: dict[str, float], step: int) -> None:
        if not self.enabled:
            return
        with self._naming(self.events):
            for name, value in values.items():
                self._writer.add_scalar(f"{prefix}/{name}", value, step)

    def advance(self, step: int, postfix: dict[str, str]) -> None:
        """Move the progress bar to `step` (made at the first call: a resumed run starts mid-way)."""
        if not self.enabled:
            return
        if self._bar is None:
            self._bar = tqdm(
                total=self.total_steps,
                initial=step - 1,
                unit="step",
                dynamic_ncols=True,
                file=sys.stderr,
                mininterval=1.0,
                disable=None,  # no bar when stderr is not a terminal; the text log still says everything
            )
        self._bar.update(step - self._bar.n)
        self._bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        """End the bar and the writers. Also after an error: a failed flush (the disk that caused it)
        is not raised again over the error in flight."""
        if self._bar is not None:
            self._bar.close()
        if self._writer is not None:
            with contextlib.suppress(OSError):
                self._writer.close()
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
        self._bar = self._writer = self._file = None

    @staticmethod
    @contextlib.contextmanager
    def _naming(path: Path):
        """An OSError (a full disk) as one that names the file or folder written."""
        try:
            yield
        except OSError as err:
            raise OSError(err.errno, f"could not write {path}: {err.strerror or err}") from None


def _quiet_tensorboard_threads() -> None:
    """Leave out the traceback of TensorBoard's writer thread: the error it dies of is raised again
    in the training loop (TensorBoard's next call checks its worker), where it becomes the one line."""
    previous = threading.excepthook
    if getattr(previous, "quiet_tensorboard", False):
        return

    def hook(args: Any) -> None:
        if type(args.thread).__module__.startswith("tensorboard.") and issubclass(args.exc_type, OSError):
            return
        previous(args)

    hook.quiet_tensorboard = True  # type: ignore[attr-defined]
    threading.excepthook = hook


@dataclass
class MetricsWindow:
    """Sums of the updates since the last log line, and the time they took (one object per run)."""

    loss: float = 0.0  # summed over target tokens, nats
    nll: float = 0.0
    tokens: float = 0.0
    steps: int = 0
    started: float = field(default_factory=time.perf_counter)
    waited_before: float = 0.0  # the loader's wait_seconds when the window started

    def add(self, loss: float, nll: float, tokens: float) -> None:
        self.loss, self.nll, self.tokens, self.steps = self.loss + loss, self.nll + nll, self.tokens + tokens, self.steps + 1

    def summary(self, waited: float) -> dict[str, float]:
        """Per-token loss and nll in bits, perplexity, throughput, and the share of the time spent
        waiting for batches (`waited`: the loader's wait_seconds now)."""
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        tokens = max(self.tokens, 1.0)
        nll = self.nll / tokens / LN2
        return {
            "loss": self.loss / tokens / LN2,
            "nll": nll,
            "ppl": 2**nll,
            "tokens_per_second": tokens / elapsed,
            "data_wait_share": (waited - self.waited_before) / elapsed,
            "seconds_per_step": elapsed / max(self.steps, 1),
        }

    def reset(self, waited: float) -> None:
        self.loss = self.nll = self.tokens = 0.0
        self.steps, self.started, self.waited_before = 0, time.perf_counter(), waited


__all__ = ["TrainingLog", "MetricsWindow", "LN2"]
