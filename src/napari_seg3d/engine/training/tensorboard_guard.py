"""A full disk under a TensorBoard log: one sentence, and the training goes on.

TensorBoard writes its event file from a thread of its own; a write that fails there (a full
disk, an exceeded quota) ends that thread with a traceback on stderr and surfaces later, in
another form, from a later call. :func:`guard_event_file` puts a :class:`WriteGuard` under the
event file: the first failed write is kept (what follows is dropped, the log being lost anyway)
and :meth:`WriteGuard.check` raises it as an :class:`.OutputError` from the training thread,
where :class:`.TensorBoardLogger` is dropped with that sentence as a warning.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ..io._space import cannot_write, check_free_space, write_error

log = logging.getLogger(__name__)
KEPT = "Free some space to log the next run; the log up to here is kept, and the training goes on."


class WriteGuard:
    """Wraps the file object of a TensorBoard ``RecordWriter``: ``write``, ``flush`` and
    ``close`` never raise ``OSError``; the first is kept in :attr:`error`."""

    def __init__(self, file: Any) -> None:
        self._file = file
        self.error: OSError | None = None

    def _call(self, name: str, *args: Any) -> None:
        if self.error is not None and name != "close":
            return
        try:
            getattr(self._file, name)(*args)
        except OSError as e:
            self.error = self.error or e

    def write(self, data: bytes) -> None:
        self._call("write", data)

    def flush(self) -> None:
        self._call("flush")

    def close(self) -> None:
        self._call("close")

    @property
    def closed(self) -> bool:
        return bool(getattr(self._file, "closed", False))

    def check(self, log_dir: str | os.PathLike, needed: int = 0) -> None:
        """Raise the first failed write as an :class:`.OutputError`; with ``needed``, also
        when the log's folder has less free space than that (checked before writing it)."""
        lead = cannot_write("the TensorBoard log", log_dir)
        if self.error is not None:
            raise write_error(self.error, lead, tail=KEPT)
        if needed:
            check_free_space(log_dir, needed, lead, tail=KEPT)


def guard_event_file(summary_writer: Any) -> WriteGuard | None:
    """Put a :class:`WriteGuard` under the event file of a ``SummaryWriter`` (None, with a
    debug message, where its internals differ from tensorboard 2.x's)."""
    try:
        record_writer = summary_writer._get_file_writer().event_writer._async_writer._writer
        guard = WriteGuard(record_writer._writer)
        record_writer._writer = guard
    except AttributeError as e:
        log.debug("TensorBoard's event file is not guarded: %s", e)
        return None
    return guard
