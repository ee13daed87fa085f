"""The model side: token-level scoring (and its torchrun followers), and the batcher that feeds it.

The batcher's ``run`` is the model loop and runs in the thread that owns the model (NeMo's CPU stand-ins for CUDA,
like CUDA's current device, are per thread), normally the main thread; HTTP handlers only ``submit``.

Scheduling: a batch takes rows from the queued requests in arrival order, at most ``max_batch_rows`` in all; a
request with rows left over goes to the back of the queue, so one large request is split into batches and
interleaved with the others instead of blocking them. (The HTTP layer bounds how many requests wait.)
``busy_since`` tells a watchdog how long the current model call has run.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
import time
from collections.abc import Sequence

import numpy as np

log = logging.getLogger(__name__)


class ShuttingDown(RuntimeError):
    pass


class ModelLoopFailed(RuntimeError):
    """The model loop is stalled or dead: nothing queued will ever be scored."""


class TokenScorer:
    """Token-level scoring with a ``RewardScorer``'s model, collate, weights and limits."""

    def __init__(self, scorer, distributed: bool = False):
        self.scorer = scorer
        self.attributes = tuple(scorer.attributes)
        self.weights = np.asarray(scorer.weights, dtype=np.float64)
        self.max_length = int(scorer.max_length)
        self.eos_id = int(scorer.model.tokenizer.eos_id)
        self.vocab_size = int(scorer.model.tokenizer.vocab_size)
        self.distributed = distributed

    def conversation_tokens(self, conversation) -> np.ndarray:
        return self.scorer.tokenize(conversation, truncate=False)  # over-length rows are detected, not cut

    def sentence_tokens(self, text: str, add_eos: bool = False) -> np.ndarray:
        """A fully formatted text, tokenized as training tokenizes it: whole (as NeMo-Aligner does)."""
        ids = self.scorer.renderer.encode(text)
        if add_eos:
            ids.append(self.eos_id)
        return np.asarray(ids, dtype=np.int64)

    def predict(self, rows: Sequence[np.ndarray]) -> np.ndarray:
        """``[rows, attributes]`` predictions (float64). On rank 0 of a multi-rank launch the rows are broadcast
        first, so the followers run the same forward."""
        if self.distributed:
            import torch

            torch.distributed.broadcast_object_list([list(rows)], src=0)
        return self.scorer.predict_tokens(rows)

    def follow(self) -> None:
        """Ranks > 0: run every batch rank 0 broadcasts, until it broadcasts None."""
        import torch

        while True:
            box = [None]
            torch.distributed.broadcast_object_list(box, src=0)
            if box[0] is None:
                return
            self.scorer.predict_tokens(box[0])

    def release_followers(self) -> None:
        if self.distributed:
            import torch

            try:
                torch.distributed.broadcast_object_list([None], src=0)
            except RuntimeError as e:  # a follower already gone: nothing left to release
                log.warning(f"could not release the other ranks: {e}")


def _resolve(future, result=None, error: BaseException | None = None) -> None:
    """Settle a future unless the client already gave up on it (a cancelled future refuses a result)."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except concurrent.futures.InvalidStateError:
        pass


class _Job:
    __slots__ = ("rows", "future", "next", "parts")

    def __init__(self, rows):
        self.rows = list(rows)
        self.future: concurrent.futures.Future = concurrent.futures.Future()
        self.next = 0  # first row not yet scheduled
        self.parts: list[np.ndarray] = []


class Batcher:
    def __init__(self, predict, max_batch_rows: int, max_delay_s: float, fatal_errors: bool = False):
        self.predict = predict
        self.max_batch_rows = int(max_batch_rows)
        self.max_delay_s = float(max_delay_s)
        self.fatal_errors = fatal_errors  # under torchrun a failed collective leaves the ranks out of step
        self._cv = threading.Condition()
        self._queue: collections.deque[_Job] = collections.deque()
        self._queued_rows = 0
        self._running: list[_Job] = []
        self._closed: BaseException | None = None
        self.busy_since: float | None = None
        self.stats = {"requests": 0, "rows": 0, "batches": 0, "largest_batch_rows": 0, "failed_batches": 0}

    def submit(self, rows) -> concurrent.futures.Future:
        job = _Job(rows)
        with self._cv:  # the closed check and the enqueue are one step: nothing slips past a drain
            if self._closed is not None:
                _resolve(job.future, error=self._closed)
            elif not job.rows:
                _resolve(job.future, np.zeros((0, 0)))
            else:
                self._queue.append(job)
                self._queued_rows += len(job.rows)
                self._cv.notify()
        return job.future

    def close(self, error: BaseException | None = None) -> None:
        """Refuse new work and fail everything queued (and, with ``error``, what is running) with it."""
        error = error or ShuttingDown("the server is shutting down")
        with self._cv:
            if self._closed is None:
                self._closed = error
            jobs = list(self._queue) + (self._running if not isinstance(error, ShuttingDown) else [])
            self._queue.clear()
            self._queued_rows = 0
            self._cv.notify_all()
        for job in jobs:
            _resolve(job.future, error=error)

    def _take_batch(self, stop: threading.Event) -> list[tuple[_Job, int, int]] | None:
        with self._cv:
            while not self._queue:
                if self._closed is not None or stop.is_set():
                    return None
                self._cv.wait(timeout=0.2)  # wakes up to notice ``stop``
            deadline = time.monotonic() + self.max_delay_s
            while self._queued_rows < self.max_batch_rows and self._closed is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cv.wait(timeout=left)
            if not self._queue:
                return None
            batch, room = [], self.max_batch_rows
            while self._queue and room > 0:
                job = self._queue.popleft()
                if job.future.done():  # the client gave up (deadline): skip its rows
                    self._queued_rows -= len(job.rows) - job.next
                    continue
                n = min(room, len(job.rows) - job.next)
                batch.append((job, job.next, job.next + n))
                job.next += n
                room -= n
                self._queued_rows -= n
                if job.next < len(job.rows):
                    self._queue.append(job)  # the rest waits its turn behind the others
                    break
            self._running = [j for j, _, _ in batch]
            return batch

    def run(self, stop: threading.Event | None = None) -> None:
        """Score batches until ``close()`` (or ``stop`` is set); then fail whatever is still queued. Nothing queued
        is left waiting however the loop ends: an exception out of it fails every request, running or queued."""
        stop = stop or threading.Event()
        ending: BaseException = ShuttingDown("the server is shutting down")
        try:
            while True:
                batch = self._take_batch(stop)
                if batch is None:
                    if self._closed is not None or stop.is_set():
                        return
                    continue
                self._run(batch)
        except BaseException as e:
            ending = e if isinstance(e, ModelLoopFailed) else ModelLoopFailed(
                f"the model loop died: {type(e).__name__}: {e}")
            raise
        finally:
            self.close(ending)

    def _run(self, batch):
        rows = [r for job, a, b in batch for r in job.rows[a:b]]
        self.busy_since = time.monotonic()
        try:
            pred = self.predict(rows)
            if not isinstance(pred, np.ndarray) or pred.ndim != 2 or len(pred) != len(rows):
                raise RuntimeError(f"the model returned {type(pred).__name__} {getattr(pred, 'shape', '')} for "
                                   f"{len(rows)} rows")
        except Exception as e:
            log.exception("scoring a batch failed")
            self.stats["failed_batches"] += 1
            if self.fatal_errors:
                raise ModelLoopFailed(f"the model loop failed: {type(e).__name__}: {e}") from e
            for job, _, _ in batch:  # the requests fail, the server does not
                _resolve(job.future, error=e)
            return
        finally:
            self.busy_since = None
        self.stats["batches"] += 1
        self.stats["rows"] += len(rows)
        self.stats["largest_batch_rows"] = max(self.stats["largest_batch_rows"], len(rows))
        start = 0
        for job, a, b in batch:
            job.parts.append(pred[start:start + b - a])
            start += b - a
            if b == len(job.rows):
                self.stats["requests"] += 1
                _resolve(job.future, np.concatenate(job.parts))
        self._running = []
