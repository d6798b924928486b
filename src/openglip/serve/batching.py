"""Dynamic batching: requests from many connections, one model, one ``Detector.predict`` call per batch.

One worker thread owns the detector (PyTorch modules and the detector's text-feature cache are not meant to
be shared between threads). Requests wait in a queue; the worker takes the oldest one, then keeps taking
requests until the batch is full (``max_batch``) or the oldest request has waited ``max_wait_ms``, and runs
them as one batch; prompts may differ per image. Each job carries a ``group`` (the server's: the padded input
size); a batch holding several groups becomes one ``predict`` call per group.

A request whose client gave up (the server's per-request timeout) is *cancelled*: while it is still queued
the worker drops it; once its batch runs, its result is discarded. Neither changes the answers of the other
requests of the batch. If a batched call fails, each request of the batch is retried alone, so one bad input
fails only its own request.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field

from ..prompts import Prompt
from ..structures import Detections

log = logging.getLogger("openglip.serve")


@dataclass
class Job:
    """One image + prompt waiting for the model.

    Attributes:
        image: anything ``Detector.predict`` reads (the server passes a decoded RGB PIL image).
        prompt: the parsed prompt.
        threshold: minimum score of a returned box.
        group: jobs share a model call only when their groups are equal (the server uses the padded input
            size, so that a request's boxes never depend on the other requests of its batch).
        future: receives a :class:`Finished` (or the exception that made the prediction fail).
        enqueued: ``time.perf_counter()`` when the job entered the queue.
    """

    image: object
    prompt: Prompt
    threshold: float
    group: Hashable | None = None
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class Finished:
    """A job's answer with its timing.

    Attributes:
        detections: the boxes scoring at least the job's threshold.
        queue_s: seconds from entering the queue to the start of its batch.
        inference_s: seconds the batch's ``predict`` call took.
        batch_size: number of requests in that batch.
    """

    detections: Detections
    queue_s: float
    inference_s: float
    batch_size: int


class BatchWorker:
    """Runs queued :class:`Job` s in batches on one thread.

    Args:
        detector: an object with ``predict(images, prompts=[...], box_threshold=..., batch_size=...)``
            returning one :class:`Detections` per image (e.g. :class:`openglip.Detector`).
        max_batch: most requests per ``predict`` call (1 turns batching off).
        max_wait_ms: how long the oldest queued request may wait for others to join its batch.
        on_batch: called with ``(batch_size, inference_seconds)`` after every batch (metrics).
    """

    def __init__(
        self,
        detector,
        *,
        max_batch: int = 8,
        max_wait_ms: float = 10.0,
        on_batch: Callable[[int, float], None] | None = None,
    ):
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if max_wait_ms < 0:
            raise ValueError("max_wait_ms must be >= 0")
        self.detector = detector
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.on_batch = on_batch
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopping = False

    # -- life cycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker thread (a second call does nothing)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="openglip-batch-worker", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the batch in progress, fail the requests still queued, and end the thread."""
        with self._lock:
            thread, self._thread = self._thread, None
            self._stopping = True
        if thread is None:
            return
        self._queue.put(None)
        thread.join(timeout)
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None and job.future.set_running_or_notify_cancel():
                _settle(job.future, error=RuntimeError("the server is shutting down"))

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a batch (not counting the batch being run)."""
        return self._queue.qsize()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, job: Job) -> Future:
        """Queue a job; its future gets a :class:`Finished`. Starts the worker if needed."""
        if self._stopping:
            raise RuntimeError("the server is shutting down")
        if not self.running:
            self.start()
        self._queue.put(job)
        return job.future

    # -- the worker ---------------------------------------------------------------------------------------
    def _collect(self, first: Job) -> tuple[list[Job], bool]:
        """The batch that starts with ``first``; True as second item when the stop signal was seen."""
        batch = [first]
        # the oldest request's wait is what is bounded: under load the queue already holds a full batch
        deadline = first.enqueued + self.max_wait_s
        while len(batch) < self.max_batch:
            remaining = deadline - time.perf_counter()
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return batch, True
            batch.append(job)
        return batch, False

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, stop = self._collect(first)
            # a cancelled (timed-out) request is dropped here, before it costs any compute
            live = [job for job in batch if job.future.set_running_or_notify_cancel()]
            groups: dict = {}
            for job in live:
                groups.setdefault(job.group, []).append(job)
            for jobs in groups.values():  # one model call per group, the oldest request's group first
                self._run_batch(jobs)
            if stop:
                return

    def _run_batch(self, jobs: list[Job]) -> None:
        start = time.perf_counter()
        try:
            outputs: list = self._predict(jobs)
        except Exception as batch_error:  # retry one by one so that one bad request fails alone
            log.warning("a batch of %d failed (%s); retrying its requests one by one", len(jobs), batch_error)
            outputs = []
            for job in jobs:
                try:
                    outputs.append(self._predict([job])[0])
                except Exception as err:
                    outputs.append(err)
        elapsed = time.perf_counter() - start
        if self.on_batch is not None:
            try:
                self.on_batch(len(jobs), elapsed)
            except Exception:  # metrics must never take the worker down
                log.exception("batch metrics callback failed")
        for job, out in zip(jobs, outputs):
            if isinstance(out, Exception):
                _settle(job.future, error=out)
                continue
            keep = out[out.scores >= job.threshold]
            _settle(job.future, result=Finished(keep, start - job.enqueued, elapsed, len(jobs)))

    def _predict(self, jobs: list[Job]) -> list[Detections]:
        # one call for the whole batch; each request's own threshold is applied afterwards (the threshold
        # only filters boxes, so the lowest one gives every request all the boxes it asked for)
        return self.detector.predict(
            [job.image for job in jobs],
            prompts=[job.prompt for job in jobs],
            box_threshold=min(job.threshold for job in jobs),
            batch_size=len(jobs),
        )


def _settle(future: Future, *, result=None, error: BaseException | None = None) -> None:
    """Set a future's outcome; a future nobody waits for any more (closed event loop) is left alone."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass
    except RuntimeError:  # the waiting event loop was closed (server stopped mid-request)
        log.debug("dropped the answer of a request whose server is gone")
