"""Read ahead: produce the items of an iterable in a background thread while the caller processes them.

``for ipix, mass in prefetched(catalog.iter_slice_chunks(i, chunk_size)):`` runs the reading, slice
selection and pixelisation of chunk k+1 (the body of the source generator) in a reader thread while
the loop body bins chunk k. The two overlap because the work on both sides is done in code that
releases the GIL (numpy ufuncs and copies, bigfile/h5py/astropy file reads); pure-Python work on
either side does not overlap.

Memory: at most ``depth`` finished items wait in the queue, one more is held by the reader while it
waits for room, and the caller holds the one it is processing: ``depth + 2`` items in memory instead
of one, plus the reader's working memory for the item it is producing.

The standard library's ``concurrent.futures`` has no bounded read-ahead for a single iterator that
stops its worker when the consumer stops, hence this small hand-written version (queue + thread).
"""
from __future__ import annotations

import numbers
import os
import queue
import threading
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")

_END = object()  # the source is exhausted


class _Failure:
    """The exception raised by the source, carried through the queue to the consumer."""

    def __init__(self, exception: BaseException):
        self.exception = exception


def _produce(iterator: Iterator, items: queue.Queue, stop: threading.Event) -> None:
    """Reader thread: put the source's items (then ``_END`` or a ``_Failure``) into ``items``.

    Checks ``stop`` before asking the source for an item and after every put, so once the consumer
    has set it the reader puts at most one more item and leaves; the source is then closed here (in
    the thread that ran it), as it would be if the consumer had dropped it without prefetch.
    """
    try:
        while not stop.is_set():
            try:
                item = next(iterator)
            except StopIteration:
                items.put(_END)
                return
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer, re-raised there
                items.put(_Failure(exc))
                return
            items.put(item)
    finally:
        if stop.is_set():
            close = getattr(iterator, "close", None)
            if close is not None:
                close()


def has_spare_core() -> bool:
    """True when this process may run on more than one core, so a reader thread can overlap the main
    one. A rank pinned to one core (``srun --cpu-bind=cores``, ``mpiexec --bind-to core``) gets False,
    and read-ahead would only time-slice that core."""
    return len(os.sched_getaffinity(0)) > 1


def prefetched(iterable: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Yield the items of ``iterable`` in order, produced up to ``depth`` items ahead in a reader thread.

    ``depth``: number of finished items that may wait for the consumer (integer >= 1); the reader is
    never more than ``depth + 1`` items ahead of the consumer. An exception raised by ``iterable`` is
    re-raised to the consumer after the items produced before it. When the consumer stops early
    (``close()`` of the returned generator, a ``break`` or an exception in the loop body followed by
    the generator being released), the reader thread stops and is joined before ``close()`` returns:
    it finishes the item it is producing, then closes ``iterable``. The thread starts at the first
    ``next()``.
    """
    if isinstance(depth, bool) or not isinstance(depth, numbers.Integral) or depth < 1:
        raise ValueError(f"depth must be an integer >= 1 (items read ahead), got {depth!r}")
    return _consume(iter(iterable), int(depth))


def _consume(iterator: Iterator[T], depth: int) -> Iterator[T]:
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    reader = threading.Thread(target=_produce, args=(iterator, items, stop), name="lensing_ssc-prefetch",
                              daemon=True)
    reader.start()
    try:
        while True:
            item = items.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.exception
            yield item
    finally:
        stop.set()
        # Make room for the reader's pending put (it puts at most one more item once stop is set).
        while True:
            try:
                items.get_nowait()
            except queue.Empty:
                break
        reader.join()


__all__ = ["has_spare_core", "prefetched"]
