"""Stopping cleanly when asked: SIGTERM or SIGINT finish the current update, save, and exit.

Schedulers send SIGTERM before they pre-empt a job (Slurm, Kubernetes), people press Ctrl-C
(SIGINT). The first such signal only raises a flag. Each update carries every rank's vote (`votes`)
in the all_reduce of its scalars (`training/step.py`), so that all ranks agree on it without a
collective of its own, stop after the same update, and the checkpoint they write is consistent. The trainer then writes
checkpoint_last.pt and exits with status 128 + the signal's number (143 for SIGTERM, 130 for
SIGINT); running the same command again resumes exactly where it stopped.

A second signal ends the process at once with the signal's default action (no checkpoint; the
previous one is intact, since checkpoints are written atomically). A repeat that arrives within
`REPEAT_WINDOW_S` of the first counts as the same request: torchrun forwards the signal it receives
to its workers, which the terminal or the scheduler may already have signalled themselves.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
REPEAT_WINDOW_S = 2.0


def exit_status(signum: int) -> int:
    """The status a run stopped by `signum` exits with (the shell's 128 + N convention)."""
    return 128 + signum


class StopRequest:
    """A context that turns SIGTERM / SIGINT into a flag (`signum`) for the duration of training.

    Signal handlers can only be installed from the main thread; elsewhere (a notebook's worker
    thread) the context does nothing and signals keep their usual effect.
    """

    def __init__(self) -> None:
        self.signum = 0  # the first stop signal received, 0 while none
        self._first_at: float | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        # After a stop request the checkpoint is written and the process is on its way out with
        # 128 + N: ignore further stop signals from here, so that a repeat of the request (torchrun
        # forwarding it) arriving during interpreter shutdown, when Python has put the default
        # actions back, does not turn a clean stop into a death by signal.
        for sig, handler in self._previous.items():
            signal.signal(sig, signal.SIG_IGN if self._first_at is not None else handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        now = time.monotonic()
        if self._first_at is None:
            self.signum, self._first_at = signum, now
            _say(f"{name} received: stopping after the current update and saving checkpoint_last.pt")
        elif now - self._first_at >= REPEAT_WINDOW_S:
            _say(f"{name} received again: exiting at once, without a checkpoint")
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    def votes(self) -> list[float]:
        """This rank's vote for each of `STOP_SIGNALS` (1.0 for the one received, if any)."""
        return [float(self.signum == sig) for sig in STOP_SIGNALS]


def agreed_signal(votes: list[float]) -> int:
    """The signal that the ranks' summed `votes` stop them all for (0: go on)."""
    return next((int(sig) for sig, vote in zip(STOP_SIGNALS, votes, strict=True) if vote > 0), 0)


def _say(message: str) -> None:
    """Write to stderr from a signal handler (a raw write: no buffered stream is re-entered)."""
    try:
        os.write(2, f"transformer-mt: {message}\n".encode())
    except OSError:
        pass
