"""Dynamic batching: concurrent requests' rows coalesced into one model call, on one thread.

The model call is CPU/GPU-bound and blocking, so it never runs on the event loop: one worker
thread takes the oldest queued job, waits at most ``max_wait`` (counted from when that job was
queued, so a busy server adds no wait) for more jobs until ``max_batch`` rows are gathered, and
encodes them in one call. It waits only while requests are on their way (parsed, being
decoded: ``arrive``/``leave``); a lone request runs at once, so concurrency 1 pays no wait, and
under load the rows that arrive while the model runs form the next batch by themselves. ``Embedder.encode`` then sends the batch's text-only rows to the text
graph and the rows with an image to the full graph (``lame_runtime.inputs.routing``), one call
each. Jobs are never split: a request with more rows than ``max_batch`` runs alone.

The queue is bounded in rows: a job that does not fit is refused at once (``Overloaded``: 503
with Retry-After) rather than queued without limit. A job whose client went away or timed out
is dropped from the queue (``cancel``) and its rows are never computed. If a batch fails, each
of its jobs is retried alone, so one bad row fails only its own request.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from typing import Any, Callable, Sequence

import numpy as np

from lame_runtime.serve.errors import Overloaded, ShuttingDown

log = logging.getLogger("lame_runtime.serve")


class Job:
    __slots__ = ("texts", "images", "future", "loop", "queued_at", "done")

    def __init__(self, texts: list[Any], images: list[Any], loop: asyncio.AbstractEventLoop):
        self.texts, self.images, self.loop = texts, images, loop
        self.future: asyncio.Future[np.ndarray] = loop.create_future()
        self.queued_at = time.monotonic()
        self.done = False

    def __len__(self) -> int:
        return len(self.texts)


# A job and what it gets: its vectors, or the error that failed it.
Outcome = tuple[Job, np.ndarray | None, BaseException | None]


class Batcher:
    """``await submit(texts, images)`` -> unit vectors [n, dim], computed with other requests'."""

    def __init__(
        self,
        encode: Callable[[list[Any], list[Any]], np.ndarray],
        max_batch: int = 32,
        max_wait_s: float = 0.005,
        max_queue: int = 1024,
        batching: bool = True,
        retry_after_s: int = 1,
        observe: Callable[[list[Job], float], None] | None = None,
        on_depth: Callable[[int], None] | None = None,
    ):
        self._encode = encode
        self.max_batch, self.max_wait_s, self.max_queue = max_batch, max_wait_s, max_queue
        self.batching, self.retry_after_s = batching, retry_after_s
        self._observe = observe or (lambda jobs, seconds: None)
        self._on_depth = on_depth or (lambda depth: None)
        self._queue: deque[Job] = deque()
        self._rows = 0  # rows queued (not yet taken by the worker)
        self._arriving = 0  # requests being prepared that will submit soon
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ event-loop side
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="lame-serve-model", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        return self._rows

    def arrive(self) -> None:
        """A request is being prepared: a batch being gathered may wait for it."""
        with self._cond:
            self._arriving += 1

    def leave(self) -> None:
        """A request that ``arrive``d will not submit (it failed, or it submitted)."""
        with self._cond:
            self._arriving -= 1
            self._cond.notify()

    def submit(self, texts: Sequence[Any], images: Sequence[Any]) -> Job:
        """Queue a job (call on the event loop); its ``future`` gets the vectors."""
        job = Job(list(texts), list(images), asyncio.get_running_loop())
        with self._cond:
            if self._stopping:
                raise ShuttingDown(
                    "the server is shutting down; retry on another instance",
                    headers={"Retry-After": str(self.retry_after_s)},
                )
            if self._rows + len(job) > self.max_queue:
                raise Overloaded(
                    f"the request queue is full ({self._rows} of {self.max_queue} "
                    "rows queued); retry shortly",
                    headers={"Retry-After": str(self.retry_after_s)},
                )
            self._queue.append(job)
            self._rows += len(job)
            self._on_depth(self._rows)
            self._cond.notify()
        return job

    def cancel(self, job: Job) -> None:
        """The client went away or timed out: drop the job if it is still queued."""
        with self._cond:
            try:
                self._queue.remove(job)
            except ValueError:
                return  # already taken by the worker: its result will be dropped
            self._rows -= len(job)
            self._on_depth(self._rows)
        job.done = True

    def stop(self, timeout: float | None = None) -> None:
        """Finish every queued job, then end the worker (graceful shutdown)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    # ------------------------------------------------------------------ worker side
    def _run(self) -> None:
        while True:
            jobs = self._take()
            if jobs is None:
                return
            self._process(jobs)

    def _take(self) -> list[Job] | None:
        with self._cond:
            while not self._queue:
                if self._stopping:
                    return None
                self._cond.wait()
            jobs = [self._queue.popleft()]
            rows = len(jobs[0])
            if self.batching:
                deadline = jobs[0].queued_at + self.max_wait_s
                while rows < self.max_batch:
                    if self._queue:
                        if rows + len(self._queue[0]) > self.max_batch:
                            break
                        job = self._queue.popleft()
                        jobs.append(job)
                        rows += len(job)
                        continue
                    left = deadline - time.monotonic()
                    if left <= 0 or self._stopping or not self._arriving:
                        break
                    self._cond.wait(left)
            self._rows -= rows
            self._on_depth(self._rows)
            return jobs

    def _process(self, jobs: list[Job]) -> None:
        texts = [t for job in jobs for t in job.texts]
        images = [i for job in jobs for i in job.images]
        started = time.perf_counter()
        try:
            vectors = self._encode(texts, images)
        except BaseException as err:  # noqa: BLE001  (delivered to the requests, never lost)
            if len(jobs) > 1:  # find the job at fault; the others still get their vectors
                for job in jobs:
                    self._process([job])
                return
            self._deliver([(jobs[0], None, err)])
            return
        self._observe(jobs, time.perf_counter() - started)
        outcomes: list[Outcome] = []
        start = 0
        for job in jobs:
            outcomes.append((job, vectors[start : start + len(job)], None))
            start += len(job)
        self._deliver(outcomes)

    @staticmethod
    def _deliver(outcomes: list[Outcome]) -> None:
        """Hand each job its vectors (or error) on its event loop: one wake-up per loop for a
        whole batch, not one per request."""
        by_loop: dict[asyncio.AbstractEventLoop, list[Any]] = {}
        for job, value, err in outcomes:
            job.done = True
            by_loop.setdefault(job.loop, []).append((job, value, err))
        for loop, settled in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, settled)
            except RuntimeError:  # the loop is closed (shutdown): nobody is waiting any more
                log.debug("result dropped: event loop closed")


def _settle(outcomes: list[Outcome]) -> None:
    for job, value, err in outcomes:
        if job.future.done():  # cancelled: the client left or timed out
            continue
        if err is not None or value is None:
            job.future.set_exception(err or RuntimeError("no vectors"))
        else:
            job.future.set_result(value)
