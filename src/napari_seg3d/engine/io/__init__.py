"""Read and write volumes as TIFF, HDF5, zarr (OME-Zarr too) or ``.npy`` files; every write is
atomic.

An HDF5 dataset is named ``file.h5:/group/data``, an array in a zarr group ``store.zarr:/name``.
Writes go to a hidden ``.part`` file beside the target and are moved onto it only once
complete, so a crash never leaves half a file behind. The format details live in
:mod:`._tiff`, :mod:`._hdf5` and :mod:`._zarr`, names and formats in :mod:`._paths`,
region-by-region writing (:class:`ChunkedWriter`) in :mod:`._chunked`, temporaries in
:mod:`._temps`; this package is the public API.
"""

from ..errors import VolumeError
from ._chunked import ChunkedWriter
from ._folders import missing_folders, remove_empty
from ._hdf5 import VOXEL_ATTRS
from ._ome_zarr import is_ome_zarr, pyramid_layers
from ._paths import (
                     DEFAULT_KEY,
                     HDF5_SUFFIXES,
                     SUFFIXES,
                     TIFF_SUFFIXES,
                     ZARR_SUFFIXES,
                     VoxelSize,
                     split_path,
)
from ._volume import Volume, list_datasets, output_path, read_volume, write_volume

__all__ = [
    "DEFAULT_KEY", "HDF5_SUFFIXES", "SUFFIXES", "TIFF_SUFFIXES", "VOXEL_ATTRS", "ZARR_SUFFIXES",
    "ChunkedWriter", "Volume", "VolumeError", "VoxelSize", "list_datasets", "output_path",
    "is_ome_zarr", "missing_folders", "pyramid_layers", "read_volume", "remove_empty", "split_path", "write_volume",
]
