from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time

import numpy as np
import pytest

from service.batching import BatchConfig, Batcher
from service.errors import DeadlineExceeded, InferenceFailed, Overloaded, PayloadTooLarge

pytestmark = pytest.mark.anyio


class CountingModel:
    """Doubles its input and records every batch it was called with."""

    def __init__(self, delay_s: float = 0.0, fail_when=None) -> None:
        self.calls: list[np.ndarray] = []
        self.delay_s = delay_s
        self.fail_when = fail_when
        self.release = threading.Event()
        self.release.set()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.release.wait(5)
        time.sleep(self.delay_s)
        self.calls.append(batch.copy())
        if self.fail_when is not None and self.fail_when(batch):
            raise RuntimeError("model exploded")
        return batch * 2

    @property
    def sizes(self) -> list[int]:
        return [len(batch) for batch in self.calls]


@pytest.fixture
async def make_batcher():
    executor = concurrent.futures.ThreadPoolExecutor(1)
    batchers = []

    def make(model, **knobs) -> Batcher:
        batcher = Batcher(model, BatchConfig(**knobs), executor)
        batcher.start()
        batchers.append(batcher)
        return batcher

    yield make
    for batcher in batchers:
        await batcher.close()
    executor.shutdown()


def samples(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32).reshape(-1, 1)


async def test_batch_closes_when_full(make_batcher):
    model = CountingModel()
    batcher = make_batcher(model, max_batch_size=4, max_delay_ms=10_000)
    started = time.perf_counter()
    results = await asyncio.gather(*(batcher.submit(samples(i)) for i in range(4)))
    assert time.perf_counter() - started < 5  # did not wait for the 10 s delay
    assert model.sizes == [4]
    assert [r[0, 0] for r in results] == [0, 2, 4, 6]


async def test_batch_closes_after_max_delay(make_batcher):
    model = CountingModel()
    batcher = make_batcher(model, max_batch_size=32, max_delay_ms=100)
    started = time.perf_counter()
    results = await asyncio.gather(*(batcher.submit(samples(i)) for i in range(3)))
    elapsed = time.perf_counter() - started
    assert 0.09 <= elapsed < 2
    # Three samples share one call, padded up to the allowed size 4.
    assert model.sizes == [4]
    assert [r[0, 0] for r in results] == [0, 2, 4]


async def test_concurrent_requests_share_one_model_call(make_batcher):
    model = CountingModel()
    batcher = make_batcher(model, max_batch_size=64, max_delay_ms=50)
    results = await asyncio.gather(*(batcher.submit(samples(i, i)) for i in range(20)))
    assert len(model.calls) == 1
    assert model.sizes == [64]  # 40 samples padded to 64
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result, samples(2 * i, 2 * i))


async def test_large_request_is_split_across_batches_in_order(make_batcher):
    model = CountingModel()
    batcher = make_batcher(model, max_batch_size=4, max_delay_ms=1)
    result = await batcher.submit(samples(*range(10)))
    np.testing.assert_array_equal(result, samples(*range(0, 20, 2)))
    assert model.sizes == [4, 4, 2]


async def test_padding_never_reaches_the_caller(make_batcher):
    model = CountingModel()
    batcher = make_batcher(model, max_batch_size=8, max_delay_ms=1)
    result = await batcher.submit(samples(1, 2, 3))
    assert model.sizes == [4]
    np.testing.assert_array_equal(model.calls[0][3], [0])  # zero padding
    np.testing.assert_array_equal(result, samples(2, 4, 6))


def test_batch_sizes_are_powers_of_two_and_the_maximum():
    assert BatchConfig(max_batch_size=1).batch_sizes == (1,)
    assert BatchConfig(max_batch_size=32).batch_sizes == (1, 2, 4, 8, 16, 32)
    assert BatchConfig(max_batch_size=24).batch_sizes == (1, 2, 4, 8, 16, 24)
    assert BatchConfig(max_batch_size=24).padded_size(17) == 24


async def test_full_queue_rejects_with_503(make_batcher):
    model = CountingModel()
    model.release.clear()  # the model is busy: the queue fills up
    batcher = make_batcher(model, max_batch_size=2, max_delay_ms=0, max_queue=4)
    first = asyncio.create_task(batcher.submit(samples(0, 0)))  # taken into the stuck batch
    await asyncio.sleep(0.05)
    queued = [asyncio.create_task(batcher.submit(samples(i, i))) for i in range(2)]
    await asyncio.sleep(0.05)
    with pytest.raises(Overloaded) as rejected:
        await batcher.submit(samples(9))
    assert rejected.value.status_code == 503
    assert rejected.value.headers["Retry-After"] == "1"
    model.release.set()
    await asyncio.gather(first, *queued)  # the queued requests are still served


async def test_request_larger_than_the_queue_is_413(make_batcher):
    batcher = make_batcher(CountingModel(), max_queue=4)
    with pytest.raises(PayloadTooLarge):
        await batcher.submit(samples(*range(5)))


async def test_deadline_answers_504_and_the_request_is_dropped(make_batcher):
    model = CountingModel()
    model.release.clear()
    batcher = make_batcher(model, max_batch_size=1, max_delay_ms=0, timeout_ms=100)
    busy = asyncio.create_task(batcher.submit(samples(1)))
    await asyncio.sleep(0.02)
    with pytest.raises(DeadlineExceeded) as late:
        await batcher.submit(samples(2))
    assert late.value.status_code == 504
    assert batcher.queued_samples == 0
    model.release.set()
    with pytest.raises(DeadlineExceeded):
        await busy  # its own deadline passed while the model was stuck
    await batcher.submit(samples(3))
    assert [c[0, 0] for c in model.calls] == [1, 3]  # sample 2 never ran


async def test_cancelled_request_is_dropped(make_batcher):
    model = CountingModel()
    model.release.clear()
    batcher = make_batcher(model, max_batch_size=1, max_delay_ms=0)
    busy = asyncio.create_task(batcher.submit(samples(1)))
    await asyncio.sleep(0.02)
    gone = asyncio.create_task(batcher.submit(samples(2)))  # the client will hang up
    kept = asyncio.create_task(batcher.submit(samples(3)))
    await asyncio.sleep(0.02)
    gone.cancel()
    await asyncio.sleep(0.02)
    assert batcher.queued_samples == 1
    model.release.set()
    await asyncio.gather(busy, kept)
    assert gone.cancelled()
    assert [c[0, 0] for c in model.calls] == [1, 3]


async def test_raising_request_fails_alone_and_its_batch_mates_are_answered(make_batcher):
    model = CountingModel(fail_when=lambda batch: (batch == 13).any())
    batcher = make_batcher(model, max_batch_size=2, max_delay_ms=20)
    results = await asyncio.gather(
        batcher.submit(samples(13)), batcher.submit(samples(1)), return_exceptions=True
    )
    assert isinstance(results[0], InferenceFailed) and results[0].status_code == 500
    assert "RuntimeError" in results[0].message
    assert results[1][0, 0] == 2  # shared the failed batch, then ran on its own
    assert model.sizes == [2, 1, 1]
    alone = await asyncio.gather(batcher.submit(samples(13, 13)), return_exceptions=True)
    assert isinstance(alone[0], InferenceFailed) and model.sizes[-1] == 2  # no retry alone
    after = await asyncio.gather(batcher.submit(samples(4)), batcher.submit(samples(5)))
    assert [r[0, 0] for r in after] == [8, 10]


async def test_wrong_output_length_fails_loudly(make_batcher):
    batcher = make_batcher(lambda batch: batch[:1], max_batch_size=4, max_delay_ms=1)
    with pytest.raises(InferenceFailed):
        await batcher.submit(samples(1, 2))


async def test_close_finishes_queued_requests(make_batcher):
    model = CountingModel(delay_s=0.05)
    batcher = make_batcher(model, max_batch_size=1, max_delay_ms=0)
    pending = [asyncio.create_task(batcher.submit(samples(i))) for i in range(3)]
    await asyncio.sleep(0.01)
    await batcher.close()
    results = await asyncio.wait_for(asyncio.gather(*pending), 1)
    assert [r[0, 0] for r in results] == [0, 2, 4]
    with pytest.raises(Exception, match="unloading"):
        await batcher.submit(samples(9))


async def test_batch_does_not_wait_when_nothing_is_on_its_way():
    """With ``arriving`` (requests still being preprocessed), a lone request runs at
    once instead of waiting out max_delay_ms; while others are on their way it waits."""
    executor = concurrent.futures.ThreadPoolExecutor(1)
    arriving = [0]
    model = CountingModel()
    batcher = Batcher(
        model, BatchConfig(max_batch_size=8, max_delay_ms=400), executor,
        arriving=lambda: arriving[0],
    )  # fmt: skip
    batcher.start()
    try:
        started = time.perf_counter()
        await batcher.submit(samples(1))
        assert time.perf_counter() - started < 0.2

        arriving[0] = 1  # one more request is being preprocessed
        first = asyncio.ensure_future(batcher.submit(samples(2)))
        await asyncio.sleep(0.05)
        assert not first.done()  # waiting for it
        arriving[0] = 0
        await batcher.submit(samples(3))  # it arrives: the batch runs with both
        await first
        assert model.sizes == [1, 2]
    finally:
        await batcher.close()
        executor.shutdown()


@pytest.mark.parametrize(
    ("seconds", "sizes"),
    [
        # A CPU: time grows with the padded size. 9 samples: 8 now, 1 next, no padding.
        ({1: 1.0, 2: 2.0, 4: 4.0, 8: 8.0, 16: 16.0}, [8, 1]),
        # An accelerator: 16 cost little more than 8. 9 samples: one batch, padded to 16.
        ({1: 1.0, 2: 1.0, 4: 1.0, 8: 1.1, 16: 1.3}, [16]),
        # A compiled engine cheapest per sample in small batches: pairs (the largest size
        # within 10% of the cheapest per sample), the last sample alone.
        ({1: 1.0, 2: 2.1, 4: 4.8, 8: 10.0, 16: 20.0}, [2, 2, 2, 2, 1]),
        # Not measured: pad, as before.
        ({}, [16]),
    ],
)
async def test_padding_or_splitting_follows_the_models_time_per_size(seconds, sizes):
    executor = concurrent.futures.ThreadPoolExecutor(1)
    model = CountingModel()
    model.release.clear()  # hold the first batch until all 9 requests are queued
    batcher = Batcher(
        model, BatchConfig(max_batch_size=16, max_delay_ms=0), executor, batch_seconds=seconds
    )
    batcher.start()
    try:
        blocker = asyncio.ensure_future(batcher.submit(samples(-1)))
        await asyncio.sleep(0.05)  # the blocker's batch is in the model
        waiting = [asyncio.ensure_future(batcher.submit(samples(i))) for i in range(9)]
        await asyncio.sleep(0.05)
        model.release.set()
        results = await asyncio.gather(blocker, *waiting)
        assert model.sizes == [1, *sizes]
        assert [r[0, 0] for r in results] == [-2, *range(0, 18, 2)]  # every answer, in order
    finally:
        await batcher.close()
        executor.shutdown()


def test_warm_up_times_every_allowed_batch_size(repository):
    from tests.helpers import make_settings, start_client, wait_ready

    with start_client(make_settings(repository)) as client:
        wait_ready(client)
        runtime = client.app.state.repository.get("colours")
        assert set(runtime.batch_seconds) == set(runtime.batching.batch_sizes)
        assert all(seconds > 0 for seconds in runtime.batch_seconds.values())
