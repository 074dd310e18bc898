"""Region-by-region writing of volumes larger than memory: :class:`ChunkedWriter`."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from . import _hdf5, _zarr
from ._folders import missing_folders, remove_empty
from ._h5file import GuardedFile
from ._npy import open_allocated
from ._paths import (
    DEFAULT_KEY,
    HDF5_SUFFIXES,
    TIFF_SUFFIXES,
    ZARR_SUFFIXES,
    format_of,
    split_path,
    voxel_tuple,
)
from ._space import cannot_write, check_free_space, expected_bytes, writing
from ._temps import fresh_temp, sync_file, sync_folder
from ._tiff import write_tiff

log = logging.getLogger("napari_seg3d.engine.io")


@contextlib.contextmanager
def writing_or_abort(writer: Any, lead: str) -> Iterator[None]:
    """Run the block as a write (see :func:`._space.writing`: a full disk becomes one
    sentence starting with ``lead``); on any exception ``writer.abort()`` drops what it wrote
    before the exception goes on. Shared by :class:`ChunkedWriter` and :class:`.OmeZarrWriter`."""
    try:
        with writing(lead):
            yield
    except BaseException:
        writer.abort()
        raise


class ChunkedWriter:
    """Write a large volume region by region, then publish it atomically with :meth:`commit`.

    HDF5 targets fill a chunked, gzip-compressed dataset in a temporary file, zarr targets a
    temporary store and ``.npy`` targets a memory-mapped temporary file (allocated whole first,
    see :mod:`._npy`), so none holds the volume in memory. A zarr target can be read (by napari,
    say) while it is written: see :attr:`array`. TIFF cannot be filled region by region when
    compressed, so a TIFF target is collected in memory and written by one piece on commit:
    prefer HDF5 for outputs larger than memory.

    The free space is checked first (see :mod:`._space`); a write that fails on a full disk
    raises an :class:`.OutputError` with one sentence. Leaving the ``with`` block without
    ``commit()`` (for instance on an exception) deletes the temporary file, and the folders the
    writer created if they are empty, and leaves any earlier file untouched::

        with ChunkedWriter("out.h5:/labels", (64, 512, 512), np.uint8) as writer:
            for slices, block in regions:
                writer.write(slices, block)
            writer.commit()

    Args:
        spec: the target, ``file.h5:/key`` for an HDF5 dataset.
        shape, dtype: of the volume.
        voxel_size: ``(z, y, x)``, stored with the volume.
        chunks: chunk shape of HDF5 and zarr targets (default 64 on the spatial axes).
        what: what the volume is, for the sentences (``"the labels"``).
    """

    def __init__(self, spec: str | os.PathLike, shape: Sequence[int], dtype: Any, *,
                 voxel_size: Sequence[float] | None = None,
                 chunks: tuple[int, ...] | None = None, what: str = "the volume") -> None:
        self.path, key = split_path(spec)
        self._suffix = format_of(self.path)
        self.shape, self.dtype = tuple(int(n) for n in shape), np.dtype(dtype)
        self._voxel = voxel_tuple(voxel_size)
        self._lead = cannot_write(what, self.path)
        self._tmp: Path | None = None
        self._zarr = self._suffix in ZARR_SUFFIXES
        self._file: h5py.File | None = None
        self._guard: GuardedFile | None = None
        self._done = False
        self._data: Any = None
        self._created = missing_folders(self.path.parent)
        check_free_space(self.path, expected_bytes(self.shape, self.dtype, self._suffix),
                         self._lead)
        if self._suffix in TIFF_SUFFIXES:
            self._data = np.zeros(self.shape, self.dtype)
            return
        with writing_or_abort(self, self._lead):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._tmp = fresh_temp(self.path)
            self._data = self._create(key, chunks)

    def _create(self, key: str | None, chunks: tuple[int, ...] | None) -> Any:
        if self._zarr:
            return _zarr.create(self._tmp, self.shape, self.dtype, self._voxel, chunks=chunks)
        if self._suffix in HDF5_SUFFIXES:
            self._file, self._guard = _hdf5.open_copy(self.path, self._tmp)
            return _hdf5.create_dataset(self._file, key or DEFAULT_KEY, self.shape, self.dtype,
                                        self._voxel, chunks=chunks)
        return open_allocated(self._tmp, self.dtype, self.shape)

    def write(self, slices: tuple[slice, ...], block: Any) -> None:
        """Write ``block`` into the region ``slices`` of the output."""
        if self._done:
            raise RuntimeError(f"The writer for {self.path} is already committed or aborted; "
                               "create a new ChunkedWriter.")
        with writing(self._lead):
            self._data[slices] = block
            if self._guard is not None and self._guard.error is not None:
                raise self._guard.error

    @property
    def array(self) -> Any:
        """The output being written (a zarr array, h5py dataset, memmap or in-memory array)."""
        return self._data

    def commit(self) -> Path:
        """Move the finished output onto its final name and return that path."""
        self.finish()
        return self.publish()

    def finish(self) -> None:
        """Write everything to the temporary file and flush it to disk: what can fail on a full
        disk fails here. :meth:`publish` then only moves it into place."""
        if self._done:
            raise RuntimeError(f"The writer for {self.path} is already committed or aborted.")
        with writing_or_abort(self, self._lead):
            if self._tmp is None:  # TIFF, collected in memory
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._tmp = fresh_temp(self.path)
                write_tiff(self._tmp, self._data, self._voxel, True)
            self._release()
            if not self._zarr:
                sync_file(self._tmp)

    def publish(self) -> Path:
        """Move the output written by :meth:`finish` onto its final name; returns that path."""
        with writing_or_abort(self, self._lead):
            if self._zarr:
                _zarr.replace(self._tmp, self.path)
            else:
                os.replace(self._tmp, self.path)
            sync_folder(self.path.parent)
        self._done = True
        log.info("Wrote %s %s to %s", self.shape, self.dtype, self.path)
        return self.path

    def abort(self) -> None:
        """Drop everything written so far, delete the temporary file and the folders this writer
        created (if empty)."""
        if self._done:
            return
        self._done = True
        try:
            self._release()
        except Exception as e:  # noqa: BLE001 - the first error is the one to report
            log.debug("Closing %s after an error: %s", self._tmp, e)
        self._remove_tmp()
        remove_empty(self._created)

    def _remove_tmp(self) -> None:
        if self._tmp is None:
            return
        if self._zarr:
            _zarr.remove(self._tmp)
        else:
            self._tmp.unlink(missing_ok=True)

    def _release(self) -> None:
        data, self._data = self._data, None
        if isinstance(data, np.memmap):
            data.flush()
        if self._file is not None:
            file, guard, self._file, self._guard = self._file, self._guard, None, None
            _hdf5.close_checked(file, guard)

    def __enter__(self) -> ChunkedWriter:
        return self

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        if not self._done and exc_type is None:
            log.warning("Nothing written to %s: the ChunkedWriter closed without commit().",
                        self.path)
        self.abort()


#END
