"""HDF5 datasets for :mod:`napari_seg3d.engine.io`: find the volume in a file, read its voxel size,
and add a chunked, compressed dataset to a copy of a file without losing its other datasets."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from ..errors import VolumeError
from ._h5file import GuardedFile
from ._space import space_error

if TYPE_CHECKING:
    from ._paths import VoxelSize

VOXEL_ATTRS = ("element_size_um", "voxel_size", "resolution")


def datasets(group: h5py.Group) -> list[h5py.Dataset]:
    """Every dataset below ``group``, in visiting order."""
    names: list[str] = []
    group.visit(names.append)
    return [node for node in map(group.get, names) if isinstance(node, h5py.Dataset)]


def find_dataset(file: h5py.File, path: Path, key: str | None) -> h5py.Dataset:
    """The dataset ``key``, or without a key the only dataset with 3 or more dimensions."""
    if key is not None:
        node = file.get(key)
        if not isinstance(node, h5py.Dataset):
            raise missing_key(path, key, _entries(datasets(file)))
        return node
    found = datasets(file)
    return found[pick_volume(path, _entries(found))]


def _entries(items: list[h5py.Dataset]) -> list[Entry]:
    return [(d.name, d.shape, d.dtype) for d in items]


# --- shared with the zarr stores (._zarr), whose arrays are named like HDF5 datasets ---------------

Entry = tuple[str, Any, Any]
"""A dataset or zarr array as ``(name, shape, dtype)``, named from the root: ``"/raw"``."""


def pick_volume(path: Path, entries: Sequence[Entry], *, noun: str = "dataset",
                container: str = "file", hint: str = "/path/to/dataset",
                limit: int | None = 10, list_all: bool = False) -> int:
    """The index of the only entry with 3 or more dimensions, else a VolumeError that lists the
    entries and asks for a key (``path:hint``).

    ``noun`` names an entry and ``container`` what holds them; messages list at most ``limit``
    entries (None: all) and, for several volumes, every entry (``list_all``) or the volumes."""
    volumes = [i for i, (_, shape, _) in enumerate(entries) if len(shape or ()) >= 3]
    if len(volumes) == 1:
        return volumes[0]
    if not volumes:
        raise VolumeError(f"{path} holds no {noun} with 3 or more dimensions (its {noun}s: "
                          f"{describe(entries, limit)}). Choose a {container} that holds a volume.")
    listed = entries if list_all else [entries[i] for i in volumes]
    raise VolumeError(f"{path} holds several volumes: {describe(listed, limit)}. Name the one to "
                      f"use as {path}:{hint}, e.g. {path}:{listed[0][0]}")


def missing_key(path: Path, key: str, entries: Sequence[Entry], *, noun: str = "dataset",
                limit: int | None = 10) -> VolumeError:
    """The error for a ``key`` that names no entry: it lists the entries."""
    return VolumeError(f"{path} has no {noun} {key}. Its {noun}s: {describe(entries, limit)}.")


def describe(entries: Sequence[Entry], limit: int | None = 10) -> str:
    """``"/raw (9, 8, 7) uint8; /labels ..."``, at most ``limit`` entries (None: all)."""
    shown = entries if limit is None else entries[:limit]
    text = "; ".join(f"{name} {shape} {dtype}" for name, shape, dtype in shown) or "none"
    more = 0 if limit is None else len(entries) - limit
    return text + (f"; and {more} more" if more > 0 else "")


def voxel_size(dataset: h5py.Dataset) -> VoxelSize | None:
    """The last three values of the first of :data:`VOXEL_ATTRS` that holds three numbers."""
    for name in VOXEL_ATTRS:
        try:
            values = np.ravel(np.asarray(dataset.attrs.get(name, ()), dtype=float))
        except (TypeError, ValueError):
            continue
        if values.size >= 3:
            return tuple(float(v) for v in values[-3:])  # type: ignore[return-value]
    return None


def has_dataset(path: Path, key: str) -> bool:
    """Whether the existing file ``path`` holds ``key`` (True when it is not readable HDF5)."""
    try:
        with h5py.File(path, "r") as file:
            return key in file
    except OSError:
        return True


def open_copy(path: Path, tmp: Path) -> tuple[h5py.File, GuardedFile]:
    """Open ``tmp`` for writing, starting as a copy of ``path`` so its other datasets survive;
    the file is written through a :class:`GuardedFile` (see :mod:`._h5file`): close it with
    :func:`close_checked`."""
    if path.exists():
        shutil.copy2(path, tmp)
    else:
        open(tmp, "xb").close()  # exclusive: never another writer's file
    guard = GuardedFile(tmp)
    try:
        return h5py.File(guard, "a"), guard
    except OSError as exc:
        guard.close()
        if guard.error is not None or space_error(exc) is not None:
            raise guard.error or exc from None
        raise VolumeError(f"Cannot add a dataset to {path}: it is not a readable HDF5 file "
                          f"({exc}). Choose another output file or delete this one.") from exc


def close_checked(file: h5py.File, guard: GuardedFile) -> None:
    """Close an output opened by :func:`open_copy`; raise the first write that failed."""
    try:
        file.close()
    finally:
        guard.close()
    if guard.error is not None:
        raise guard.error


def create_dataset(file: h5py.File, key: str, shape: tuple[int, ...], dtype: Any,
                   voxel: VoxelSize | None, *, chunks: tuple[int, ...] | None = None,
                   compression: bool = True) -> h5py.Dataset:
    """Replace ``key`` in ``file`` by an empty dataset, chunked (default ``64`` on the spatial axes)
    and gzip-compressed, with ``voxel`` as its ``element_size_um`` attribute."""
    if key in file:
        del file[key]
    if 0 in shape or not shape:
        chunks = None  # HDF5 cannot chunk an empty dataset
    else:
        chunks = chunks or tuple(64 if i >= len(shape) - 3 else 1 for i in range(len(shape)))
        chunks = tuple(max(1, min(c, n)) for c, n in zip(chunks, shape))
    dataset = file.create_dataset(key, shape=shape, dtype=dtype, chunks=chunks,
                                  compression="gzip" if compression and chunks else None)
    if voxel is not None:
        dataset.attrs["element_size_um"] = np.asarray(voxel, dtype=np.float64)
    return dataset
