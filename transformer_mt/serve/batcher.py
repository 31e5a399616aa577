"""Dynamic batching: requests that arrive within a short window are decoded together.

One worker thread owns the model; the event loop only queues work and awaits its result, so no
search ever runs on the loop. The worker takes the oldest request from a bounded queue, keeps
taking requests for `window_s` more (or until `max_batch_lines` lines), then groups what it took
by decoding settings (requests with a different beam or length penalty cannot share a search) and
hands each group's lines to one `translate` call, which sorts them by length and cuts them into
the Translator's padded batches. The results go back to each request's future, in its own order.

Other work that needs the model (the page's attention maps) goes through the same queue and runs
on the same thread, alone, in arrival order.

A full queue refuses a request at once (`QueueFull`: the service answers 503 with Retry-After)
rather than letting waits grow without bound. `close()` stops taking requests, lets the worker
finish every request already queued, and joins it: the drain of a graceful shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("transformer_mt.serve")

Decode = Callable[[Any, list[str]], list[Any]]  # (settings, lines) -> one result per line


class QueueFull(Exception):
    """The queue holds `max_queue` requests already."""


class ShuttingDown(Exception):
    """The service is draining and takes no new requests."""


@dataclass
class _Job:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    key: Hashable | None = None  # decoding settings of a translation; None: a call that runs alone
    settings: Any = None
    lines: list[str] = field(default_factory=list)
    call: Callable[[], Any] | None = None

    def deliver(self, result: Any = None, error: BaseException | None = None) -> None:
        """Hand the result to the awaiting request, from the worker thread."""

        def finish() -> None:
            if self.future.done():  # the request went away (cancelled); nobody to tell
                return
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(result)

        try:
            self.loop.call_soon_threadsafe(finish)
        except RuntimeError:  # the loop has closed: the server is gone
            pass


_STOP = object()


class Batcher:
    """Queues translation requests and runs them in batches on one worker thread.

    `decode(settings, lines)` translates lines with the given settings (e.g. a `DecodingConfig`);
    `settings_key(settings)` must be equal for settings that may share one search.
    """

    def __init__(
        self,
        decode: Decode,
        settings_key: Callable[[Any], Hashable],
        *,
        window_s: float,
        max_queue: int,
        max_batch_lines: int,
    ) -> None:
        self.decode, self.settings_key = decode, settings_key
        self.window_s, self.max_batch_lines = window_s, max_batch_lines
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._accepting = False
        self._busy = 0  # jobs taken by the worker and not yet answered
        self._thread = threading.Thread(target=self._work, name="transformer-mt-decoder", daemon=True)
        self.stats = {"requests": 0, "lines": 0, "batches": 0, "searches": 0, "refused": 0}

    def start(self) -> None:
        self._accepting = True
        self._thread.start()

    @property
    def pending(self) -> int:
        """Requests queued or being decoded."""
        return self._queue.qsize() + self._busy

    @property
    def queued(self) -> int:
        """Requests waiting for the worker (at most `max_queue`)."""
        return self._queue.qsize()

    @property
    def accepting(self) -> bool:
        return self._accepting

    async def translate(self, settings: Any, lines: Sequence[str]) -> list[Any]:
        """The results of `decode(settings, lines)`, decoded together with the requests around it."""
        return await self._submit(key=self.settings_key(settings), settings=settings, lines=list(lines))

    async def run(self, call: Callable[[], Any]) -> Any:
        """`call()` on the worker thread (alone, in queue order): for anything else that needs the model."""
        return await self._submit(call=call)

    async def _submit(self, **job: Any) -> Any:
        if not self._accepting:
            raise ShuttingDown("the service is shutting down")
        loop = asyncio.get_running_loop()
        item = _Job(loop=loop, future=loop.create_future(), **job)
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.stats["refused"] += 1
            raise QueueFull(f"the queue is full ({self._queue.maxsize} requests waiting)") from None
        return await item.future

    def close(self, timeout: float | None = None) -> bool:
        """Stop taking requests, finish those queued, stop the worker. Blocks; True if it finished."""
        self._accepting = False
        if not self._thread.is_alive():
            return True
        self._queue.put(_STOP)  # after every queued job; the worker frees room as it drains
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # ------------------------------------------------------------------------------------------
    # The worker thread

    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            self._busy = 1
            jobs, stop = self._collect(first)
            self.stats["batches"] += 1
            try:
                self._run(jobs)
            finally:
                self._busy = 0
            if stop:
                return

    def _collect(self, first: _Job) -> tuple[list[_Job], bool]:
        """`first` and the requests that arrive within the window after it; True if told to stop."""
        jobs = [first]
        if first.key is None:  # a call runs alone, at once
            return jobs, False
        lines = len(first.lines)
        deadline = time.monotonic() + self.window_s
        while lines < self.max_batch_lines:
            remaining = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is _STOP:
                return jobs, True
            jobs.append(job)
            self._busy = len(jobs)
            lines += len(job.lines)
        return jobs, False

    def _run(self, jobs: list[_Job]) -> None:
        """Each group of equal settings in one `decode` call, and each call alone, in arrival order."""
        groups: dict[Hashable, list[_Job]] = {}
        for index, job in enumerate(jobs):
            groups.setdefault(job.key if job.key is not None else ("call", index), []).append(job)
        for group in groups.values():
            if group[0].key is None:
                self._run_call(group[0])
            else:
                self._run_group(group)

    def _run_call(self, job: _Job) -> None:
        try:
            result = job.call()
        except Exception as err:  # noqa: BLE001 - the request gets the error; the worker lives on
            log.exception("model call failed")
            job.deliver(error=err)
            return
        job.deliver(result)

    def _run_group(self, group: list[_Job]) -> None:
        lines = [line for job in group for line in job.lines]
        try:
            results = self.decode(group[0].settings, lines)
        except Exception as err:  # noqa: BLE001 - every request of the group gets the error
            log.exception("decoding a batch of %d lines failed", len(lines))
            for job in group:
                job.deliver(error=err)
            return
        self.stats["requests"] += len(group)
        self.stats["lines"] += len(lines)
        self.stats["searches"] += 1
        start = 0
        for job in group:
            job.deliver(results[start : start + len(job.lines)])
            start += len(job.lines)


__all__ = ["Batcher", "QueueFull", "ShuttingDown"]
