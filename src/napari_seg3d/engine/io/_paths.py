"""Volume names and formats: suffixes, ``file.h5:/key`` specs, voxel sizes."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from ..errors import VolumeError

TIFF_SUFFIXES = (".tif", ".tiff")
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")
ZARR_SUFFIXES = (".zarr",)
SUFFIXES = (*TIFF_SUFFIXES, *HDF5_SUFFIXES, *ZARR_SUFFIXES, ".npy")
DEFAULT_KEY = "/labels"
_H5_SPEC = re.compile(r"^(.+?\.(?:h5|hdf5|hdf|zarr)):(.*)$", re.IGNORECASE | re.DOTALL)

VoxelSize = tuple[float, float, float]


def split_path(spec: str | os.PathLike) -> tuple[Path, str | None]:
    """Split ``"file.h5:/group/data"`` into ``(Path("file.h5"), "/group/data")``.

    Other paths (``"C:\\data\\a.tif"``, ``"a.h5"``, an existing file with a colon in its name)
    come back unchanged with key None.
    """
    text = os.fspath(spec)
    match = _H5_SPEC.match(text)
    if match is None or Path(text).exists():
        return Path(text), None
    file, key = match.groups()
    return Path(file), ("/" + key.lstrip("/")) if key else None


def format_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise VolumeError(f"Cannot tell the format of {path} from its suffix "
                          f"{suffix or '(none)'}. Use one of: {', '.join(SUFFIXES)}.")
    return suffix


def voxel_tuple(voxel_size: Sequence[float] | None) -> VoxelSize | None:
    if voxel_size is None:
        return None
    values = tuple(float(v) for v in voxel_size)
    if len(values) != 3 or not all(v > 0 for v in values):
        raise VolumeError(f"The voxel size {voxel_size!r} is not three positive numbers (z, y, x).")
    return values  # type: ignore[return-value]
