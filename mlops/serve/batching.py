"""Server-side dynamic batching: requests that arrive while the model is busy run as one forward pass.

Leader/follower, no extra thread: the first request to find the model idle runs it itself (so a lone request
at concurrency 1 pays no hand-off and no waiting), and every request arriving meanwhile queues. When the
leader's batch is done it answers everyone in it and hands the lead to the oldest queued request, which runs
all that queued (up to ``max_batch`` images) as one batch. ``max_delay`` (default 0) lets a leader wait that
long for more requests before running: more batching under load, at that cost in latency when alone.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np

MAX_BATCH_LIMIT = 1024  # inference.MAX_BATCH: one request may already hold this many images
MAX_DELAY_LIMIT_S = 0.05  # waiting longer than 50 ms for company is never worth it for a 1 ms model


class _Item:
    __slots__ = ("done", "error", "lead", "pixels", "result")

    def __init__(self, pixels: np.ndarray) -> None:
        self.pixels = pixels
        self.done = threading.Event()
        self.lead = False
        self.result: np.ndarray | None = None
        self.error: BaseException | None = None


class Batcher:
    """Runs ``predict(pixels (N, H, W)) -> (N, classes)`` for concurrent callers, batching those that overlap."""

    def __init__(self, predict: Callable[[np.ndarray], np.ndarray], max_batch: int = 32,
                 max_delay: float = 0.0) -> None:
        if not 1 <= max_batch <= MAX_BATCH_LIMIT:
            raise ValueError(f"max_batch={max_batch}: expected 1..{MAX_BATCH_LIMIT} images")
        if not 0 <= max_delay <= MAX_DELAY_LIMIT_S:
            raise ValueError(f"max_delay={max_delay}: expected 0..{MAX_DELAY_LIMIT_S} seconds")
        self.predict = predict
        self.max_batch = max_batch
        self.max_delay = max_delay
        self._lock = threading.Lock()
        self._pending: list[_Item] = []
        self._running = False
        self.batches = 0  # forward passes run, for tests and metrics
        self.requests = 0

    def submit(self, pixels: np.ndarray) -> np.ndarray:
        item = _Item(pixels)
        with self._lock:
            self._pending.append(item)
            lead = not self._running
            self._running = True
        if not lead:
            item.done.wait()
            if not item.lead:
                return self._outcome(item)
        self._lead(item)
        return self._outcome(item)

    @staticmethod
    def _outcome(item: _Item) -> np.ndarray:
        if item.error is not None:
            raise item.error
        assert item.result is not None
        return item.result

    def _take(self) -> list[_Item]:
        """The oldest queued requests, up to max_batch images (a larger single request runs alone)."""
        taken, images = [], 0
        while self._pending and (not taken or images + len(self._pending[0].pixels) <= self.max_batch):
            item = self._pending.pop(0)
            taken.append(item)
            images += len(item.pixels)
        return taken

    def _queued_images(self) -> int:
        return sum(len(i.pixels) for i in self._pending)

    def _lead(self, own: _Item) -> None:
        """Run batches until our own request is answered, then hand the lead on (or release the model)."""
        own.lead = False
        own.done.clear()
        while not own.done.is_set():
            if self.max_delay > 0:
                deadline = time.perf_counter() + self.max_delay
                while time.perf_counter() < deadline:
                    with self._lock:
                        if self._queued_images() >= self.max_batch:
                            break
                    time.sleep(min(0.0002, self.max_delay))
            with self._lock:
                batch = self._take()
            self._run(batch)
        with self._lock:
            if self._pending:
                successor = self._pending[0]
                successor.lead = True
                successor.done.set()
            else:
                self._running = False

    def _run(self, batch: list[_Item]) -> None:
        try:
            pixels = batch[0].pixels if len(batch) == 1 else np.concatenate([i.pixels for i in batch])
            probs = self.predict(pixels)
            start = 0
            for item in batch:
                item.result = probs[start: start + len(item.pixels)]
                start += len(item.pixels)
        except BaseException as exc:  # noqa: BLE001 - every caller in the batch gets the error, none hangs
            for item in batch:
                item.error = exc
        self.batches += 1
        self.requests += len(batch)
        for item in batch:
            item.done.set()
