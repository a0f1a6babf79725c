"""Dynamic batching on the event loop: requests of one loop turn share forward passes, each gets its own rows,
a lone one never waits, max_delay gathers more and bounds the wait."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from mlops.serve.batching import Batcher


class SlowModel:
    """Echoes each image's first pixel as its 'probability'; records the batch sizes it was called with."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = seconds
        self.sizes: list[int] = []

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        self.sizes.append(len(pixels))
        time.sleep(self.seconds)  # a forward pass blocks the loop, as the real one does
        return pixels[:, :1, 0].copy()


def images(tag: int, n: int = 1) -> np.ndarray:
    return np.full((n, 28, 28), float(tag), dtype=np.float32)


async def client(batcher: Batcher, index: int, per_client: int, sizes=(1,)) -> list[str]:
    """One connection: requests one after another, each decoded and awaited like the server's on_post."""
    failures = []
    for j in range(per_client):
        n = sizes[(index + j) % len(sizes)]
        tag = index * 1000 + j
        await asyncio.sleep(0)  # reading and decoding the next request yields to the loop
        out = await batcher.submit(images(tag, n))
        if out.shape != (n, 1) or not np.all(out == tag):
            failures.append(f"client {index} request {j}: got {out.ravel()[:3]} for {tag}")
    return failures


def concurrently(batcher: Batcher, clients: int, per_client: int, sizes=(1,)) -> list[str]:
    async def everyone() -> list[str]:
        results = await asyncio.wait_for(asyncio.gather(*(client(batcher, i, per_client, sizes)
                                                          for i in range(clients))), timeout=60)
        return [failure for result in results for failure in result]

    return asyncio.run(everyone())


def test_overlapping_requests_share_forward_passes_and_get_their_own_rows():
    model = SlowModel(0.001)
    batcher = Batcher(model, max_batch=8)
    assert concurrently(batcher, clients=8, per_client=20, sizes=(1, 2, 3)) == []
    assert batcher.requests == 160
    assert max(model.sizes) > 1 and batcher.batches < 160 * 0.6, model.sizes[:20]
    assert all(size <= 8 for size in model.sizes)


def test_a_request_larger_than_max_batch_runs_alone():
    model = SlowModel()
    batcher = Batcher(model, max_batch=4)

    async def one() -> np.ndarray:
        return await batcher.submit(images(7, 10))

    assert asyncio.run(one()).shape == (10, 1) and model.sizes == [10]


def test_a_lone_request_does_not_wait_without_max_delay():
    model = SlowModel()
    batcher = Batcher(model, max_batch=32)

    async def alone() -> float:
        began = time.perf_counter()
        for i in range(200):
            assert (await batcher.submit(images(i)))[0, 0] == i
        return (time.perf_counter() - began) / 200

    assert asyncio.run(alone()) < 0.002
    assert model.sizes == [1] * 200


def test_max_delay_gathers_requests_and_bounds_the_wait():
    model = SlowModel()
    batcher = Batcher(model, max_batch=64, max_delay=0.02)

    async def alone() -> float:
        began = time.perf_counter()
        await batcher.submit(images(1))
        return time.perf_counter() - began

    assert 0.015 <= asyncio.run(alone()) < 0.5
    assert concurrently(batcher, clients=6, per_client=5) == []
    assert max(model.sizes) == 6  # each turn of 6 clients waited for the others


def test_a_full_batch_does_not_wait_for_max_delay():
    model = SlowModel()
    batcher = Batcher(model, max_batch=4, max_delay=0.05)

    async def four() -> float:
        began = time.perf_counter()
        await asyncio.gather(*(batcher.submit(images(i)) for i in range(4)))
        return time.perf_counter() - began

    assert asyncio.run(four()) < 0.03 and model.sizes == [4]


def test_an_error_reaches_every_caller_and_the_batcher_recovers():
    calls = {"n": 0}

    def flaky(pixels: np.ndarray) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return pixels[:, :1, 0]

    batcher = Batcher(flaky, max_batch=4)

    async def run() -> None:
        first = await asyncio.gather(batcher.submit(images(1)), batcher.submit(images(3)), return_exceptions=True)
        assert all(isinstance(e, RuntimeError) and "boom" in str(e) for e in first)
        assert (await batcher.submit(images(2)))[0, 0] == 2

    asyncio.run(run())


def test_a_request_whose_client_left_does_not_break_the_batch():
    model = SlowModel()
    batcher = Batcher(model, max_batch=8)

    async def run() -> None:
        gone, kept = batcher.submit(images(1)), batcher.submit(images(2))
        gone.cancel()
        assert (await kept)[0, 0] == 2

    asyncio.run(run())


@pytest.mark.parametrize(("max_batch", "max_delay"), [(0, 0), (1025, 0), (8, -1), (8, 0.5)])
def test_bounds_are_enforced(max_batch, max_delay):
    with pytest.raises(ValueError, match="expected"):
        Batcher(SlowModel(), max_batch, max_delay)


@pytest.mark.parametrize("name, value", [("MLOPS_MAX_BATCH", "lots"), ("MLOPS_MAX_DELAY_MS", "soon")])
def test_a_batching_variable_that_is_not_a_number_is_named(monkeypatch, tmp_path, name, value):
    from mlops.serve.server import create_app
    from tests.helpers.models import write_xgboost_model_dir

    monkeypatch.setenv(name, value)
    with pytest.raises(RuntimeError, match=f"\\${name}='{value}' is not"):
        create_app(write_xgboost_model_dir(tmp_path / "model"))
