"""A background thread that samples and augments the next batches while the network trains."""

from __future__ import annotations

import queue
import threading
from typing import Callable

import torch


class Prefetcher:
    """Runs ``make_batch(iteration)`` for ``iterations`` in order in a daemon thread, keeping up to
    ``depth`` batches ready. Errors in the thread are re-raised by :meth:`get`.

    Use as a context manager so the thread ends when training ends or is stopped.
    """

    def __init__(self, make_batch: Callable[[int], tuple], iterations: range, depth: int = 3) -> None:
        self._make = make_batch
        self._depth = depth
        self._setup(iterations)

    def _setup(self, iterations: range) -> None:
        self._iterations = iterations
        self._queue: queue.Queue = queue.Queue(maxsize=self._depth)
        self._done = threading.Event()
        self._limited = threading.Event()
        self._thread = threading.Thread(target=self._work, name="seg3d-prefetch", daemon=True)

    def restart(self, iterations: range, between: Callable[[], object] | None = None):
        """Drop the batches made so far, call ``between()`` with the thread stopped (to change
        what batches are made from), then make ``iterations``; returns what ``between`` returned."""
        self.__exit__(None, None, None)
        result = between() if between is not None else None
        self._setup(iterations)
        self.__enter__()
        return result

    def __enter__(self) -> Prefetcher:
        threads = torch.get_num_threads()  # fixes this (training) thread's count before...
        self._thread.start()
        self._limited.wait()  # ...the worker limits itself to one, which torch also makes the
        torch.set_num_threads(threads)  # default of threads started later: restore that
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        while self._thread.is_alive():
            try:
                self._queue.get_nowait()
            except queue.Empty:
                self._thread.join(timeout=0.05)

    def _put(self, item) -> bool:
        while not self._done.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self) -> None:
        try:
            torch.get_num_threads()  # torch sets a thread's count on its first use: do that now,
            torch.set_num_threads(1)  # so this limit is not undone by the restore in __enter__
        finally:
            self._limited.set()
        for it in self._iterations:
            try:
                item = (it, self._make(it), None)
            except BaseException as e:  # handed to the consumer, which raises it
                self._put((it, None, e))
                return
            if not self._put(item):
                return

    def get(self, iteration: int):
        """The batch of ``iteration`` (batches come in order)."""
        it, batch, error = self._queue.get()
        if error is not None:
            raise error
        assert it == iteration, (it, iteration)
        return batch
