"""Read and write whole volumes (:func:`read_volume`, :func:`write_volume`); every write is
atomic. Re-exported by :mod:`napari_seg3d.engine.io`."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import VolumeError
from . import _hdf5, _ome_zarr, _zarr
from ._chunked import ChunkedWriter
from ._folders import new_folder
from ._memory import check_memory, out_of_memory
from ._ome_zarr_out import OME_ZARR_SUFFIX
from ._paths import (
    DEFAULT_KEY,
    HDF5_SUFFIXES,
    SUFFIXES,
    TIFF_SUFFIXES,
    ZARR_SUFFIXES,
    VoxelSize,
    format_of,
    split_path,
    voxel_tuple,
)
from ._space import cannot_write, check_free_space, expected_bytes, writing
from ._temps import atomic_temp
from ._tiff import read_tiff, write_tiff

log = logging.getLogger("napari_seg3d.engine.io")

@dataclass(eq=False)
class Volume:
    """A volume read by :func:`read_volume`; close it (or use ``with``) when read lazily.

    Attributes:
        data: ``(Z, Y, X)`` or ``(C, Z, Y, X)`` array (TIFF singleton axes are squeezed away),
            or an open ``h5py.Dataset`` / ``zarr.Array`` / ``np.memmap`` when read lazily.
        voxel_size: ``(z, y, x)`` in the file's unit (micrometres by convention), or None.
        path: The file read.
        key: The HDF5 dataset path, or None for other formats.
    """

    data: np.ndarray | h5py.Dataset | np.memmap
    voxel_size: VoxelSize | None
    path: Path
    key: str | None = None
    _file: h5py.File | None = field(default=None, repr=False)

    def close(self) -> None:
        """Close the HDF5 file behind lazily read data; ``data`` cannot be read afterwards."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> Volume:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def read_volume(spec: str | os.PathLike, *, lazy: bool = False) -> Volume:
    """Read a TIFF, HDF5 (``file.h5`` or ``file.h5:/key``), zarr or ``.npy`` volume.

    Args:
        spec: The file, with ``:/dataset`` after an HDF5 file or zarr store name to pick a
            dataset. Without a key, it must hold exactly one dataset with 3 or more dimensions.
        lazy: Leave the data on disk: an open ``h5py.Dataset`` (close the volume when done), a
            ``zarr.Array``, or an ``np.memmap`` for ``.npy`` and uncompressed TIFF. Compressed
            TIFF is always read.

    Returns:
        The :class:`Volume`.

    Raises:
        VolumeError: The file is missing, damaged, of an unknown format, or ambiguous.

    Example:
        >>> volume = read_volume("image.tif")  # doctest: +SKIP
        >>> volume.data.shape, volume.voxel_size  # doctest: +SKIP
        ((31, 61, 57), (2.0, 1.0, 1.0))
        >>> with read_volume("big.h5:/raw", lazy=True) as big:  # doctest: +SKIP
        ...     first_slab = big.data[:16]
    """
    path, key = split_path(spec)
    suffix = format_of(path)
    if suffix in ZARR_SUFFIXES:
        return _read_zarr(path, key, lazy)
    if not path.is_file():
        raise VolumeError(f"Cannot find the file {path}. Check the path and try again.")
    if suffix in HDF5_SUFFIXES:
        return _read_hdf5(path, key, lazy)
    with _unreadable(path):
        if suffix in TIFF_SUFFIXES:
            data, voxel_size = read_tiff(path, lazy)
        else:
            data, voxel_size = np.load(path, mmap_mode="r" if lazy else None), None
    if not isinstance(data, np.ndarray):  # a .npz archive (or any zip) named .npy
        data.close()
        raise VolumeError(f"Cannot read {path}: it is a zip archive, not a .npy array. Save the "
                          "volume with numpy.save, or choose another file.")
    data = one_slice(data)
    log.debug("Read %s: shape %s, %s, voxel size %s", path, data.shape, data.dtype, voxel_size)
    return Volume(data, voxel_size, path)


def one_slice(data: Any) -> Any:
    """A 2D array ``(Y, X)`` as a volume of one slice ``(1, Y, X)`` (a view), as 2D TIFF files
    are read: one-slice volumes train and predict like any other. Other arrays unchanged."""
    return data[np.newaxis] if getattr(data, "ndim", 0) == 2 else data


def list_datasets(path: str | os.PathLike) -> list[tuple[str, tuple[int, ...], str]]:
    """List the datasets of an HDF5 file as ``(name, shape, dtype)``, e.g. ``("/raw", (9, 8, 7),
    "uint8")``; a ``:/key`` after the file name is ignored."""
    file_path = split_path(path)[0]
    if not file_path.is_file():
        raise VolumeError(f"Cannot find the file {file_path}. Check the path and try again.")
    with _unreadable(file_path), h5py.File(file_path, "r") as file:
        return [(ds.name, ds.shape, str(ds.dtype)) for ds in _hdf5.datasets(file)]


def write_volume(spec: str | os.PathLike, data: Any, *, voxel_size: Sequence[float] | None = None,
                 compression: bool = True, overwrite: bool = True) -> Path:
    """Write a volume atomically as TIFF, HDF5 or ``.npy``, chosen by the suffix.

    TIFF is an ImageJ hyperstack for uint8, uint16 and float32 (compressed files open in Fiji
    through Bio-Formats), otherwise a plain TIFF. HDF5 goes to ``file.h5:/key`` (default
    ``/labels``), chunked and gzip-compressed; other datasets of an existing file are kept.

    Args:
        spec: Target file, optionally ``file.h5:/key``.
        data: ``(Z, Y, X)`` or ``(C, Z, Y, X)`` array.
        voxel_size: ``(z, y, x)`` in micrometres, stored as ImageJ spacing and resolution or as the
            HDF5 attribute ``element_size_um``; ignored for ``.npy``.
        compression: Compress TIFF (zlib) and HDF5 (gzip).
        overwrite: If False, raise when the file (HDF5: the dataset) already exists.

    Returns:
        The path written.

    Example:
        >>> write_volume("labels.tif", labels, voxel_size=(2.0, 1.0, 1.0))  # doctest: +SKIP
        PosixPath('labels.tif')
        >>> write_volume("results.h5:/labels", labels)  # doctest: +SKIP
        PosixPath('results.h5')
    """
    path, key = split_path(spec)
    suffix = format_of(path)
    data, voxel = np.asarray(data), voxel_tuple(voxel_size)
    if not overwrite and _target_exists(path, key):
        raise VolumeError(f"{os.fspath(spec)} already exists. Choose another output name or "
                          "allow overwriting.")
    if suffix in ZARR_SUFFIXES:  # written by pieces, the space checked there
        with ChunkedWriter(spec, data.shape, data.dtype, voxel_size=voxel) as writer:
            writer.write((Ellipsis,), data)
            return writer.commit()
    lead = cannot_write("the volume", path)
    check_free_space(path, expected_bytes(data.shape, data.dtype, suffix,
                                          compressed=compression), lead)
    with new_folder(path.parent), writing(lead), atomic_temp(path) as tmp:
        if suffix in TIFF_SUFFIXES:
            write_tiff(tmp, data, voxel, compression)
        elif suffix == ".npy":
            with open(tmp, "xb") as fh:
                np.save(fh, data, allow_pickle=False)
        else:
            file, guard = _hdf5.open_copy(path, tmp)
            try:
                dataset = _hdf5.create_dataset(file, key or DEFAULT_KEY, data.shape, data.dtype,
                                               voxel, compression=compression)
                dataset[...] = data
            finally:
                _hdf5.close_checked(file, guard)
    log.info("Wrote %s %s to %s", data.shape, data.dtype, os.fspath(spec))
    return path


def output_path(out_dir: str | os.PathLike, input_spec: str | os.PathLike, fmt: str) -> Path:
    """Return ``out_dir / "<stem>_labels.<fmt>"`` for an input (``<stem>_<key>`` for HDF5 keys);
    ``fmt`` ``"ome-zarr"`` gives ``<stem>_labels.ome.zarr``.

    The name is sanitised (no separators, ``..`` or leading dots), so it stays inside ``out_dir``.
    """
    suffix = "." + fmt.lower().lstrip(".")
    if suffix == ".ome-zarr":
        suffix = OME_ZARR_SUFFIX
    elif suffix not in SUFFIXES:
        raise VolumeError(f"Unknown output format {fmt!r}. Use one of: "
                          f"{', '.join(s[1:] for s in SUFFIXES)}, ome-zarr.")
    path, key = split_path(input_spec)
    name = _safe_name(stem_of(path))
    if key:
        name = "_".join(filter(None, (name, _safe_name(key.rstrip("/").rsplit("/", 1)[-1]))))
    return Path(out_dir) / f"{name or 'volume'}_labels{suffix}"


def stem_of(path: Path) -> str:
    """The name without its suffix, ``.ome.zarr`` counted as one: ``x.ome.zarr`` -> ``x``."""
    if path.name.lower().endswith(OME_ZARR_SUFFIX):
        return path.name[:-len(OME_ZARR_SUFFIX)]
    return path.stem


def suffix_of(path: Path) -> str:
    """The suffix, ``.ome.zarr`` counted as one."""
    return path.name[len(stem_of(path)):]


def _safe_name(text: str) -> str:
    name = re.sub(r"\.{2,}", ".", re.sub(r"[^\w.-]+", "_", text))
    return name.strip("._-")


@contextmanager
def _unreadable(path: Path) -> Iterator[None]:
    """Turn any parser failure into a VolumeError naming the file."""
    try:
        yield
    except VolumeError:
        raise
    except MemoryError:
        raise out_of_memory(path) from None
    except Exception as exc:  # parsers of damaged files raise struct, zlib, OS, Index... errors
        raise VolumeError(f"Cannot read {path}: {exc}. The file may be truncated or damaged; "
                          "export it again or choose another file.") from exc


def _read_hdf5(path: Path, key: str | None, lazy: bool) -> Volume:
    with _unreadable(path):
        file = h5py.File(path, "r")
    try:
        dataset = _hdf5.find_dataset(file, path, key)
        volume = Volume(dataset, _hdf5.voxel_size(dataset), path, dataset.name, file)
        if not lazy or dataset.ndim == 2:  # a 2D dataset (one slice) is small
            check_memory(path, dataset.shape, dataset.dtype)
            with _unreadable(path):
                volume.data = one_slice(dataset[()])
            volume.close()
        return volume
    except BaseException:
        file.close()
        raise


def _read_zarr(path: Path, key: str | None, lazy: bool) -> Volume:
    if not path.is_dir():
        raise VolumeError(f"Cannot find the zarr store {path}. Check the path and try again.")
    ome = key in (None, "/") and (path.name.lower().endswith(".ome.zarr")
                                  or _ome_zarr.is_ome_zarr(path))
    with _unreadable(path):
        if ome:  # NGFF: the full-resolution level, the voxel size from its transformations
            array, voxel = _ome_zarr.read_image(path)
        else:
            array = _zarr.open_array(path, key)
            voxel = _zarr.voxel_size(array)
        if not lazy or array.ndim == 2:
            check_memory(path, array.shape, array.dtype)
        data = array if lazy and array.ndim != 2 else one_slice(array[...])
    return Volume(data, voxel, path, key)


def _target_exists(path: Path, key: str | None) -> bool:
    if not path.exists() or path.suffix.lower() not in HDF5_SUFFIXES:
        return path.exists()
    return _hdf5.has_dataset(path, key or DEFAULT_KEY)


#END
