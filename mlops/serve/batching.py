"""Server-side dynamic batching on a worker's event loop: requests decoded in the same loop turn share a pass.

Each worker serves its connections on one asyncio loop (uvicorn), so no lock and no hand-off thread is needed:
a request that has been decoded queues its pixels and gets a future; the first one of a loop turn schedules a
flush with ``call_soon``, which runs after every request the loop is already handling has queued. The flush
runs the queued images (up to ``max_batch`` per forward pass) and answers each request with its own rows.
A lone request therefore runs at once, and requests that arrived while the model was busy run together.
``max_delay`` (default 0) makes the flush wait that long for more requests instead, unless ``max_batch``
images are already queued: more batching under load, at that cost in latency when alone.

The forward pass runs on the loop itself: the model costs well under a millisecond per image here, far less
than handing it to a thread and back; a hung model stops the worker's heartbeat and gunicorn replaces it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np

MAX_BATCH_LIMIT = 1024  # inference.MAX_BATCH: one request may already hold this many images
MAX_DELAY_LIMIT_S = 0.05  # waiting longer than 50 ms for company is never worth it for a 1 ms model


def check_bounds(max_batch: int, max_delay: float) -> None:
    """Refuse settings that would let one pass grow without bound or a request wait for long."""
    if not 1 <= max_batch <= MAX_BATCH_LIMIT:
        raise ValueError(f"max_batch={max_batch}: expected 1..{MAX_BATCH_LIMIT} images")
    if not 0 <= max_delay <= MAX_DELAY_LIMIT_S:
        raise ValueError(f"max_delay={max_delay}: expected 0..{MAX_DELAY_LIMIT_S} seconds")


class Batcher:
    """Runs ``predict(pixels (N, ...)) -> (N, classes)`` for the loop's concurrent requests, batching them."""

    def __init__(self, predict: Callable[[np.ndarray], np.ndarray], max_batch: int = 32,
                 max_delay: float = 0.0) -> None:
        check_bounds(max_batch, max_delay)
        self.predict = predict
        self.max_batch = max_batch
        self.max_delay = max_delay
        self._pending: list[tuple[np.ndarray, asyncio.Future]] = []
        self._queued_images = 0
        self._flush_handle: asyncio.Handle | asyncio.TimerHandle | None = None
        self.batches = 0  # forward passes run, for tests and metrics
        self.requests = 0

    def submit(self, pixels: np.ndarray) -> asyncio.Future:
        """Queue one request's images; the future resolves to its (N, classes) rows or the model's error."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((pixels, future))
        self._queued_images += len(pixels)
        if self.max_delay > 0 and self._queued_images >= self.max_batch:
            if self._flush_handle is not None:
                self._flush_handle.cancel()
            self._flush_handle = loop.call_soon(self._flush)
        elif self._flush_handle is None:
            self._flush_handle = (loop.call_later(self.max_delay, self._flush) if self.max_delay > 0
                                  else loop.call_soon(self._flush))
        return future

    def _take(self) -> list[tuple[np.ndarray, asyncio.Future]]:
        """The oldest queued requests, up to max_batch images (a larger single request runs alone)."""
        taken, images = 0, 0
        while taken < len(self._pending) and (not taken or images + len(self._pending[taken][0]) <= self.max_batch):
            images += len(self._pending[taken][0])
            taken += 1
        batch, self._pending = self._pending[:taken], self._pending[taken:]
        self._queued_images -= images
        return batch

    def _flush(self) -> None:
        self._flush_handle = None
        while self._pending:
            self._run(self._take())

    def _run(self, batch: list[tuple[np.ndarray, asyncio.Future]]) -> None:
        try:
            pixels = batch[0][0] if len(batch) == 1 else np.concatenate([p for p, _ in batch])
            probs = self.predict(pixels)
        except Exception as exc:  # noqa: BLE001 - every caller in the batch gets the error, none hangs
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        else:
            start = 0
            for part, future in batch:
                if not future.done():  # a client that went away cancelled its future
                    future.set_result(probs[start: start + len(part)])
                start += len(part)
        self.batches += 1
        self.requests += len(batch)
