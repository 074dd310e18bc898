"""Region-by-region writing of volumes larger than memory: :class:`ChunkedWriter`."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from . import _hdf5, _zarr
from ._paths import (
    DEFAULT_KEY,
    HDF5_SUFFIXES,
    TIFF_SUFFIXES,
    ZARR_SUFFIXES,
    format_of,
    split_path,
    voxel_tuple,
)
from ._temps import atomic_temp, commit_temp, fresh_temp
from ._tiff import write_tiff

log = logging.getLogger("napari_seg3d.engine.io")


class ChunkedWriter:
    """Write a large volume region by region, then publish it atomically with :meth:`commit`.

    HDF5 targets fill a chunked, gzip-compressed dataset in a temporary file, zarr targets a
    temporary store and ``.npy`` targets a memory-mapped temporary file, so none holds the volume
    in memory. A zarr target can be read (by napari, say) while it is written: see :attr:`array`. TIFF cannot be filled
    region by region when compressed, so a TIFF target is collected in memory and written by
    one piece on commit: prefer HDF5 for outputs larger than memory.

    Leaving the ``with`` block without ``commit()`` (for instance on an exception) deletes the
    temporary file and leaves any earlier file untouched::

        with ChunkedWriter("out.h5:/labels", (64, 512, 512), np.uint8) as writer:
            for slices, block in regions:
                writer.write(slices, block)
            writer.commit()
    """

    def __init__(self, spec: str | os.PathLike, shape: Sequence[int], dtype: Any, *,
                 voxel_size: Sequence[float] | None = None,
                 chunks: tuple[int, ...] | None = None) -> None:
        self.path, key = split_path(spec)
        suffix = format_of(self.path)
        self.shape, self.dtype = tuple(int(n) for n in shape), np.dtype(dtype)
        self._voxel = voxel_tuple(voxel_size)
        self._tmp: Path | None = None
        self._zarr = suffix in ZARR_SUFFIXES
        self._file: h5py.File | None = None
        self._done = False
        self._data: Any = None
        if suffix in TIFF_SUFFIXES:
            self._data = np.zeros(self.shape, self.dtype)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = fresh_temp(self.path)
        try:
            if self._zarr:
                self._data = _zarr.create(self._tmp, self.shape, self.dtype, self._voxel,
                                          chunks=chunks)
            elif suffix in HDF5_SUFFIXES:
                self._file = _hdf5.open_copy(self.path, self._tmp)
                self._data = _hdf5.create_dataset(self._file, key or DEFAULT_KEY, self.shape,
                                                  self.dtype, self._voxel, chunks=chunks)
            else:
                self._data = np.lib.format.open_memmap(self._tmp, "w+", self.dtype, self.shape)
        except BaseException:
            self.abort()
            raise

    def write(self, slices: tuple[slice, ...], block: Any) -> None:
        """Write ``block`` into the region ``slices`` of the output."""
        if self._done:
            raise RuntimeError(f"The writer for {self.path} is already committed or aborted; "
                               "create a new ChunkedWriter.")
        self._data[slices] = block

    @property
    def array(self) -> Any:
        """The output being written (a zarr array, h5py dataset, memmap or in-memory array)."""
        return self._data

    def commit(self) -> Path:
        """Move the finished output onto its final name and return that path."""
        if self._done:
            raise RuntimeError(f"The writer for {self.path} is already committed or aborted.")
        if self._tmp is None:  # TIFF, collected in memory
            with atomic_temp(self.path) as tmp:
                write_tiff(tmp, self._data, self._voxel, True)
        else:
            self._release()
            try:
                if self._zarr:
                    _zarr.replace(self._tmp, self.path)
                else:
                    commit_temp(self._tmp, self.path)
            except BaseException:
                self._remove_tmp()
                raise
        self._done = True
        log.info("Wrote %s %s to %s", self.shape, self.dtype, self.path)
        return self.path

    def abort(self) -> None:
        """Drop everything written so far and delete the temporary file."""
        if not self._done:
            self._release()
            self._remove_tmp()
            self._done = True

    def _remove_tmp(self) -> None:
        if self._tmp is None:
            return
        if self._zarr:
            _zarr.remove(self._tmp)
        else:
            self._tmp.unlink(missing_ok=True)

    def _release(self) -> None:
        if isinstance(self._data, np.memmap):
            self._data.flush()
        self._data = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> ChunkedWriter:
        return self

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        if not self._done and exc_type is None:
            log.warning("Nothing written to %s: the ChunkedWriter closed without commit().",
                        self.path)
        self.abort()


#END
