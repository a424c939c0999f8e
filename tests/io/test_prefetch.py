"""prefetched(): order, exceptions, early stop without leaked threads, real overlap, bounded read-ahead.

No timing assertions: overlap and read-ahead are shown with a barrier and wait-until conditions whose
timeouts (seconds) only turn a hang into a failure.
"""
import gc
import threading

import numpy as np
import pytest

from lensing_ssc.io.prefetch import prefetched

TIMEOUT = 10.0


def _prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "lensing_ssc-prefetch"]


@pytest.fixture(autouse=True)
def no_reader_left_behind():
    before = set(_prefetch_threads())
    yield
    gc.collect()
    assert set(_prefetch_threads()) <= before, "a prefetch reader thread outlived its generator"


@pytest.mark.parametrize("depth", [1, 2, 5])
def test_items_arrive_in_order_and_complete(depth):
    source = [np.full(3, k) for k in range(50)]
    received = list(prefetched(iter(source), depth=depth))
    assert len(received) == len(source)
    assert all(a is b for a, b in zip(received, source))


def test_empty_source():
    assert list(prefetched([])) == []


def test_source_exception_reaches_consumer_after_earlier_items():
    class ReadError(OSError):
        pass

    def source():
        yield 0
        yield 1
        raise ReadError("chunk 2 unreadable")

    received = []
    with pytest.raises(ReadError, match="chunk 2 unreadable"):
        for item in prefetched(source(), depth=3):
            received.append(item)
    assert received == [0, 1]


def test_early_close_stops_and_joins_reader_and_closes_source():
    closed = threading.Event()

    def endless():
        try:
            k = 0
            while True:
                yield k
                k += 1
        finally:
            closed.set()

    source = endless()  # still referenced here: only an explicit close() runs its finally block
    stream = prefetched(source, depth=2)
    assert [next(stream) for _ in range(3)] == [0, 1, 2]
    assert len(_prefetch_threads()) == 1
    stream.close()
    assert _prefetch_threads() == []  # joined inside close(), not merely asked to stop
    assert closed.is_set()  # the source generator was closed, as it would be without prefetch


def test_break_and_consumer_exception_release_reader():
    for _ in prefetched(range(1000), depth=1):
        break
    gc.collect()
    assert _prefetch_threads() == []
    with pytest.raises(ZeroDivisionError):
        for item in prefetched(range(1000), depth=2):
            1 / (item - 5)
    gc.collect()
    assert _prefetch_threads() == []


def test_reading_next_item_overlaps_processing_current_one():
    """Reading item k+1 and processing item k must be in progress at the same time: both sides wait
    at a two-party barrier (reader while producing k+1, consumer while processing k). Without overlap
    the barrier would never fill and would break after TIMEOUT."""
    meeting = threading.Barrier(2, timeout=TIMEOUT)
    n = 10

    def reads():
        yield 0
        for k in range(1, n):
            meeting.wait()  # "reading" item k ...
            yield k

    processed = []
    for item in prefetched(reads(), depth=1):
        if item < n - 1:
            meeting.wait()  # ... while "processing" item k - 1
        processed.append(item)
    assert processed == list(range(n))


@pytest.mark.parametrize("depth", [1, 3])
def test_reader_never_more_than_depth_plus_one_ahead(depth):
    produced = [0]
    lock = threading.Condition()

    def counting():
        for k in range(20):
            with lock:
                produced[0] += 1
                lock.notify_all()
            yield k

    received = 0
    for _ in prefetched(counting(), depth=depth):
        received += 1
        expected_ahead = min(20, received + depth + 1)
        with lock:
            # The reader fills the queue up to the bound while we hold this item ...
            assert lock.wait_for(lambda: produced[0] >= expected_ahead, timeout=TIMEOUT)
        # ... and goes no further: give it a chance to overrun (it would, without the bound).
        threading.Event().wait(0.01)
        with lock:
            assert produced[0] == expected_ahead


@pytest.mark.parametrize("depth", [0, -1, 1.5, True, "2", None])
def test_bad_depth(depth):
    with pytest.raises(ValueError, match="depth"):
        prefetched([1, 2], depth=depth)
