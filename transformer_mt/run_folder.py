"""One process owns a run folder: `train` and `prepare` hold an OS lock on `<output_dir>/run.lock`.

Two writers in one output_dir destroy each other's work: a `prepare` rewrites the binarized data
under a running trainer (which then dies of SIGBUS), and a second `train` resumes from the first
one's in-progress checkpoint while both write the same files. Whatever writes a run's data or
checkpoints takes the folder first with `own_run_folder`; a second writer gets one line naming the
holder's pid and command. Readers (`translate`, `evaluate`, `average` of finished checkpoints) take
nothing and keep working while training runs.

The lock is `flock(2)` on an open file: the kernel releases it when its process ends, however it ends,
so `kill -9` leaves no stale lock behind (the file stays, with the last holder's pid, as a note).
Under torchrun only rank 0 takes it (`take=False` on the other ranks): the ranks of one job share
the folder, and a second job's rank 0 fails before any collective, so no rank waits on it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

LOCK_FILE = "run.lock"


class RunFolderBusy(OSError):
    """Another process holds the run folder; the message names it."""


@contextlib.contextmanager
def own_run_folder(output_dir: str | Path, command: str, *, take: bool = True) -> Iterator[None]:
    """Hold `output_dir` (created if absent) for the duration of the block, or raise `RunFolderBusy`."""
    if not take:
        yield
        return
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", errors="replace").strip() or "unknown"
            raise RunFolderBusy(
                f"output_dir {folder} is in use by another transformer-mt process ({holder}); "
                "wait for it to finish, stop it, or choose another output_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, {command}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock (so does the end of the process, however it ends)
