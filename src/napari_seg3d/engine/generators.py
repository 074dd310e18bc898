"""Driving the engine's generators: a training run, a batch of files, a prediction.

Long work in the engine is a generator that yields progress records and returns its result
(``Trainer.run()`` returns a :class:`.TrainResult`, ``iter_predict_files`` the list of
:class:`.FileResult`). These two helpers are the only places that catch its ``StopIteration``.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, TypeVar

R = TypeVar("R")
Y = TypeVar("Y")


def run_to_end(gen: Generator[Y, Any, R], each: Callable[[Y], object] | None = None) -> R:
    """Run ``gen`` to its end, calling ``each`` on every item it yields; return its return value.

    Example:
        >>> def count():
        ...     yield 1
        ...     yield 2
        ...     return "done"
        >>> seen = []
        >>> run_to_end(count(), seen.append), seen
        ('done', [1, 2])
    """
    while True:
        try:
            item = next(gen)
        except StopIteration as stop:
            return stop.value
        if each is not None:
            each(item)


def tapped(gen: Generator[Y, Any, R], each: Callable[[Y], object]) -> Generator[Y, None, R]:
    """Yield what ``gen`` yields, calling ``each`` on each item first; return what it returns
    (values sent in are not passed on).

    Example:
        >>> def work():
        ...     yield "a"
        ...     return 3
        >>> def outer(log):
        ...     result = yield from tapped(work(), log.append)
        ...     yield result
        >>> log = []
        >>> list(outer(log)), log
        (['a', 3], ['a'])
    """
    while True:
        try:
            item = next(gen)
        except StopIteration as stop:
            return stop.value
        each(item)
        yield item
