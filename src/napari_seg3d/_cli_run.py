"""How every ``napari-seg3d`` command runs: SIGTERM stops it as Ctrl-C does (its temporaries
removed, exit 130), and warnings are one line each, ``napari-seg3d <command>: warning: ...``."""

from __future__ import annotations

import contextlib
import signal
import sys
import warnings
from collections.abc import Iterator


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM (what ``kill`` and cluster schedulers send) raises
    KeyboardInterrupt, so the command stops as after Ctrl-C: writers delete their temporaries
    on the way out (``train`` handles it itself while it trains: it saves the models first).
    Does nothing outside the main thread."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def one_line_warnings(command: str) -> Iterator[None]:
    """Within the block, a warning prints as one line on stderr (above a progress bar)."""
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        from tqdm import tqdm

        text = " ".join(str(message).split())
        tqdm.write(f"napari-seg3d {command}: warning: {text}", file=sys.stderr)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous


class SignalCount:
    """Counts every signal delivered while it is active, also those that arrive together.

    Python runs a signal's handler once the main thread is back in Python; two Ctrl-C that
    arrive while it computes (inside one long layer) set one flag and call the handler once.
    The C-level handler also writes each signal's number to the wakeup file descriptor
    (:func:`signal.set_wakeup_fd`): :meth:`count` reads them, so a handler can tell the second
    Ctrl-C from the first. Use in the main thread: :meth:`start`, then :meth:`stop`."""

    def __init__(self) -> None:
        self._seen: dict[int, int] = {}
        self._reader = self._writer = None
        self._previous = -1

    @classmethod
    def start(cls) -> SignalCount:
        """A count that runs from now."""
        import socket

        self = cls()
        try:
            self._reader, self._writer = socket.socketpair()
            for sock in (self._reader, self._writer):
                sock.setblocking(False)
            self._previous = signal.set_wakeup_fd(self._writer.fileno(),
                                                  warn_on_full_buffer=False)
        except (ValueError, OSError):  # not the main thread: count what the handler sees
            self._close()
        return self

    def count(self, signum: int) -> int:
        """How many ``signum`` signals arrived since the block began (at least 1 when called
        from its handler)."""
        if self._reader is not None:
            with contextlib.suppress(BlockingIOError, InterruptedError):
                while chunk := self._reader.recv(4096):
                    for number in chunk:
                        self._seen[number] = self._seen.get(number, 0) + 1
        else:
            self._seen[signum] = self._seen.get(signum, 0) + 1
        return max(self._seen.get(signum, 0), 1)

    def stop(self) -> None:
        """Stop counting (the earlier wakeup file descriptor is back)."""
        if self._reader is not None:
            signal.set_wakeup_fd(self._previous)
        self._close()

    def _close(self) -> None:
        for sock in (self._reader, self._writer):
            if sock is not None:
                sock.close()
        self._reader = self._writer = None


def stop_between(items: Iterator, message: str) -> Iterator:
    """Yield from the generator ``items``; the first Ctrl-C or SIGTERM stops before its next
    item (KeyboardInterrupt is raised there, and ``items`` closed, so its writers delete their
    temporaries): a write under way, which a KeyboardInterrupt could cut inside a library's own
    threads (zarr's), ends first. ``message`` is printed then; a second Ctrl-C stops at once."""
    requested: list[int] = []
    signals = SignalCount.start()

    def stop(signum, frame):
        if requested or (signum == signal.SIGINT and signals.count(signum) > 1):
            raise KeyboardInterrupt
        requested.append(signum)
        from tqdm import tqdm

        tqdm.write(message, file=sys.stderr)

    try:
        previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread
        previous = {}
    try:
        while not requested:
            try:
                item = next(items)
            except StopIteration:
                return
            yield item
        raise KeyboardInterrupt
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        signals.stop()
        if hasattr(items, "close"):
            items.close()
