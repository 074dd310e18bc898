"""zarr stores for :mod:`napari_seg3d.engine.io`: find the volume in a store, read its voxel size,
and create a chunked array in a temporary store that is moved onto the final name when complete.

A store is a folder ``volume.zarr`` holding one array, or a group; arrays inside a group are named
like HDF5 datasets, ``volume.zarr:/raw``.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from ._hdf5 import Entry, missing_key, pick_volume
from ._temps import exchange, temp_path

if TYPE_CHECKING:
    from ._paths import VoxelSize

VOXEL_ATTR = "element_size_um"
log = logging.getLogger(__name__)


def open_array(path: Path, key: str | None) -> Any:
    """The array ``key`` of the store (None: the store itself, or its only 3D+ array)."""
    node = zarr.open(str(path), mode="r")
    if key not in (None, "/"):
        found = node.get(key.strip("/")) if isinstance(node, zarr.Group) else None
        if not isinstance(found, zarr.Array):
            raise missing_key(path, key, _entries(_arrays(node)), noun="array", limit=None)
        return found
    if isinstance(node, zarr.Array):
        return node
    arrays = _arrays(node)
    return arrays[pick_volume(path, _entries(arrays), noun="array", container="store",
                              hint="/name", limit=None, list_all=True)][1]


def _arrays(node: Any) -> list[tuple[str, Any]]:
    if isinstance(node, zarr.Array):
        return [("", node)]
    return sorted((name, a) for name, a in node.arrays())


def _entries(arrays: list[tuple[str, Any]]) -> list[Entry]:
    return [(f"/{name}", a.shape, a.dtype) for name, a in arrays]


def voxel_size(array: Any) -> VoxelSize | None:
    """The last three values of the ``element_size_um`` attribute, if it holds three numbers."""
    try:
        values = np.ravel(np.asarray(array.attrs.get(VOXEL_ATTR, ()), dtype=float))
    except (TypeError, ValueError):
        return None
    return tuple(float(v) for v in values[-3:]) if values.size >= 3 else None  # type: ignore


def create(tmp: Path, shape: tuple[int, ...], dtype: Any, voxel: VoxelSize | None, *,
           chunks: tuple[int, ...] | None = None) -> Any:
    """A new, empty array store at ``tmp``, chunked (default 64 on the spatial axes)."""
    chunks = chunks or tuple(64 if i >= len(shape) - 3 else 1 for i in range(len(shape)))
    chunks = tuple(max(1, min(c, n)) for c, n in zip(chunks, shape))
    array = zarr.create_array(str(tmp), shape=shape, dtype=dtype, chunks=chunks, fill_value=0)
    if voxel is not None:
        array.attrs[VOXEL_ATTR] = list(voxel)
    return array


def replace(tmp: Path, path: Path, *, delete_old: bool = True) -> Path | None:
    """Move the finished store ``tmp`` onto ``path``; an older store there is deleted after,
    or, with ``delete_old=False``, left under a hidden ``.part`` name that is returned (None when
    there was none) for the caller to delete where it is not in the way (a GUI's worker thread).

    On Linux the two folders swap in one atomic step (see :func:`._temps.exchange`) and the old
    store, now under the temporary's name, is deleted: a process killed in between leaves it
    under that hidden ``.part`` name, which the next write of ``path`` removes. Elsewhere the old
    store moves aside to such a name first (for an instant there is no store under ``path``,
    but never a partial one) and moves back if the new one cannot take its place.
    """
    if not path.exists():
        os.replace(tmp, path)
        return None
    if exchange(tmp, path):
        old = tmp
    else:
        old = temp_path(path)
        os.replace(path, old)
        try:
            os.replace(tmp, path)
        except BaseException:
            os.replace(old, path)
            raise
    if not delete_old:
        return old
    try:
        shutil.rmtree(old)
    except OSError as e:  # left for the next write of path to remove (see remove_stale_temps)
        log.warning("Could not delete the older store %s: %s", old, e)
    return None


def remove(tmp: Path) -> None:
    shutil.rmtree(tmp, ignore_errors=True)
