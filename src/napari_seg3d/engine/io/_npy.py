"""``.npy`` outputs written through a memory map whose every block is allocated first.

A store into a memory-mapped page that the file system cannot back (a full disk, an exceeded
quota) is not an error Python can catch: the kernel kills the process with SIGBUS. So the file is
allocated whole before it is mapped (``posix_fallocate``; elsewhere by writing zeros), and a
full disk is then an ``OSError`` from the allocation, before any page is touched.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

_PIECE = 16 << 20  # bytes of zeros written at a time where the system cannot allocate
_UNSUPPORTED = (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS)


def open_allocated(path: Path, dtype: Any, shape: Sequence[int]) -> np.memmap:
    """A new ``.npy`` file at ``path`` (which must not exist), memory-mapped for writing, with
    all of its blocks allocated. Raises ``OSError`` (ENOSPC, EDQUOT, ...) when they cannot be."""
    header = np.lib.format.open_memmap(path, "w+", np.dtype(dtype), tuple(shape))
    offset, size = header.offset, header.offset + header.nbytes
    del header  # unmapped untouched: only the header was written
    allocate(path, offset, size)
    return np.lib.format.open_memmap(path, "r+")


def allocate(path: Path, start: int, size: int) -> None:
    """Allocate the blocks of ``path`` from ``start`` to ``size`` (its length), keeping what
    lies before ``start``."""
    with open(path, "r+b") as fh:
        if hasattr(os, "posix_fallocate"):
            try:
                os.posix_fallocate(fh.fileno(), 0, size)
                return
            except OSError as e:
                if e.errno not in _UNSUPPORTED:
                    raise
        fh.seek(start)
        zeros = bytes(min(_PIECE, max(size - start, 0)))
        fh.writelines(zeros[:min(_PIECE, size - at)] for at in range(start, size, _PIECE))
        fh.flush()
        os.fsync(fh.fileno())
