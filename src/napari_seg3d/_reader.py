"""napari reader for HDF5 files and OME-Zarr images.

OME-Zarr (a ``.zarr`` folder with NGFF multiscales metadata) opens as a multiscale Image layer
(its pyramid, read lazily) scaled by its voxel size, with its NGFF labels as Labels layers.
In HDF5 files every dataset of 3 or more dimensions becomes a layer.

Integer datasets whose path names labels (``label``, ``annotation``, ``seg``, ``mask``,
``prediction``) open as Labels layers, the others as Image layers; the scale comes from the
dataset's voxel-size attribute (``element_size_um``, ``voxel_size`` or ``resolution``). Datasets up
to :data:`LAZY_BYTES` are read into memory; larger ones stay on disk behind a dask array.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .engine.io import is_ome_zarr, list_datasets, pyramid_layers, read_volume

log = logging.getLogger(__name__)

SUFFIXES = (".h5", ".hdf5")
LABEL_WORDS = ("label", "annotation", "seg", "mask", "prediction")
LAZY_BYTES = 1 << 30  # read datasets up to 1 GiB into memory, keep larger ones on disk

LayerData = tuple[Any, dict[str, Any], str]
PathLike = str | os.PathLike


def get_reader(path: PathLike | Sequence[PathLike]) -> Callable[..., list[LayerData]] | None:
    """Return :func:`read_h5` if every path is an HDF5 file, :func:`read_ome_zarr` if every
    path is an OME-Zarr image, else None (napari tries others)."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if paths and all(_is_ome_zarr(p) for p in paths):
        return read_ome_zarr
    if not paths or not all(_is_hdf5(p) for p in paths):
        return None
    return read_h5


def read_h5(path: PathLike | Sequence[PathLike]) -> list[LayerData]:
    """Read every dataset with 3 or more dimensions of one or more HDF5 files.

    Returns:
        napari layer data tuples ``(data, kwargs, "image" | "labels")``, one per dataset, named by
        the dataset path (``"group/raw"``); the file and key are kept in ``metadata``.
    """
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    layers: list[LayerData] = []
    for file in paths:
        for key, shape, dtype in list_datasets(file):
            if len(shape) >= 3:
                layers.append(_read_dataset(Path(file), key, shape, np.dtype(dtype)))
    return layers


def read_ome_zarr(path: PathLike | Sequence[PathLike]) -> list[LayerData]:
    """Read one or more OME-Zarr images: each image as a multiscale layer (lazy, scaled by its
    voxel size), each of its NGFF labels as a Labels layer (class names in ``metadata``)."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    return [layer for p in paths for layer in pyramid_layers(Path(p))]


def _is_ome_zarr(path: PathLike) -> bool:
    path = Path(path)
    return path.suffix.lower() == ".zarr" and is_ome_zarr(path)


def is_labels(key: str, dtype: np.dtype) -> bool:
    """Whether a dataset holds labels: an integer (or bool) type and a name that says so."""
    name = key.lower()
    return dtype.kind in "iub" and any(word in name for word in LABEL_WORDS)


def _read_dataset(file: Path, key: str, shape: tuple[int, ...], dtype: np.dtype) -> LayerData:
    volume = read_volume(f"{file}:{key}", lazy=True)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes > LAZY_BYTES:
        import dask.array as da

        # The file stays open while the layer lives; napari reads only what it shows.
        data: Any = da.from_array(volume.data, chunks=volume.data.chunks or "auto")
        log.info("Opened %s:%s (%.1f GiB) lazily", file, key, nbytes / 2**30)
    else:
        with volume:
            data = volume.data[()]
    labels = is_labels(key, dtype)
    if labels and dtype.kind == "b":
        data = data.astype(np.uint8)
    kwargs: dict[str, Any] = {"name": key.strip("/"), "metadata": {"path": str(file), "key": key}}
    if volume.voxel_size is not None:
        kwargs["scale"] = (1.0,) * (len(shape) - 3) + tuple(volume.voxel_size)
    return data, kwargs, "labels" if labels else "image"


def _is_hdf5(path: PathLike) -> bool:
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES or not path.is_file():
        return False
    try:
        return bool(h5py.is_hdf5(path))
    except OSError:
        return False
