"""The file under an HDF5 output: the HDF5 library never sees a failed write.

HDF5 does not recover from a write that fails (a full disk, an exceeded quota, a failing
device): closing such a file crashes the process with a segmentation fault (h5py 3.x, measured on
a full tmpfs), and so does the interpreter's exit while it is open. napari-seg3d therefore
writes HDF5 through h5py's ``fileobj`` driver into a :class:`GuardedFile`: the first ``OSError``
of a write is kept in :attr:`GuardedFile.error`, and what the library writes after it goes to
memory (a few chunks and the metadata, written when the file closes), so the library stays
consistent and its file closes. The writer then raises that error as one sentence and deletes the
file. Reads, writes and the end of file are served by the same object, so HDF5 reads back what
it wrote either way.
"""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path


class GuardedFile(io.RawIOBase):
    """A binary file for ``h5py.File(fileobj)`` that records the first failed write instead of
    raising it.

    Args:
        path: an existing file, opened for reading and writing.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__()
        self.path = Path(path)
        self._fh = open(self.path, "r+b", buffering=0)  # noqa: SIM115 - closed in close()
        self.error: OSError | None = None
        self._pos = 0
        self._overlay: list[tuple[int, bytes]] = []  # (offset, data) written after the error
        self._end: int | None = None  # the end of file once writes go to memory

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size()}[whence]
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        n = len(view)
        self._fh.seek(self._pos)
        got = self._fh.readinto(view) or 0
        view[got:] = bytes(n - got)
        for offset, data in self._overlay:  # later writes win
            lo, hi = max(offset, self._pos), min(offset + len(data), self._pos + n)
            if lo < hi:
                view[lo - self._pos:hi - self._pos] = data[lo - offset:hi - offset]
        self._pos += n
        return n

    def write(self, buffer) -> int:
        data = memoryview(buffer).cast("B")
        if self.error is None:
            try:
                self._write_all(data)
            except OSError as exc:
                self._fail(exc)
        if self.error is not None:
            self._overlay.append((self._pos, bytes(data)))
            self._end = max(self._size(), self._pos + len(data))
        self._pos += len(data)
        return len(data)

    def truncate(self, size: int | None = None) -> int:
        size = self._pos if size is None else size
        if self.error is None:
            try:
                self._fh.truncate(size)
            except OSError as exc:
                self._fail(exc)
        if self.error is not None:
            self._end = size
        return size

    def flush(self) -> None:
        """Nothing to do: writes are unbuffered."""

    def close(self) -> None:
        if not self.closed:
            self._fh.close()
            self._overlay = []
        super().close()

    def _write_all(self, data: memoryview) -> None:
        self._fh.seek(self._pos)
        done = 0
        while done < len(data):
            wrote = self._fh.write(data[done:])
            if not wrote:  # a regular file that takes nothing: as good as full
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            done += wrote

    def _fail(self, exc: OSError) -> None:
        self.error = exc
        self._end = os.fstat(self._fh.fileno()).st_size

    def _size(self) -> int:
        return os.fstat(self._fh.fileno()).st_size if self._end is None else self._end
