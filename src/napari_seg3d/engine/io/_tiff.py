"""TIFF volumes for :mod:`napari_seg3d.engine.io`: read as ``(Z, Y, X)`` or ``(C, Z, Y, X)`` with
the voxel size, refuse truncated files (see :mod:`._tiff_check`), write ImageJ hyperstacks where the dtype allows."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import tifffile

from ..errors import VolumeError
from ._memory import check_memory
from ._tiff_check import AGAIN, check_tiff_series, check_tiff_structure

if TYPE_CHECKING:
    from ._paths import VoxelSize

_IMAGEJ_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))
# micrometres per TIFF ResolutionUnit: NONE (ImageJ, unit in its metadata), CM, MM, UM; not INCH.
_UM_PER_UNIT = {1: 1.0, 3: 1e4, 4: 1e3, 5: 1.0}


def read_tiff(path: Path, lazy: bool) -> tuple[np.ndarray, VoxelSize | None]:
    """The first series of ``path`` as ``(Z, Y, X)`` or ``(C, Z, Y, X)`` (an ``np.memmap`` when
    ``lazy`` and uncompressed) and its voxel size."""
    check_tiff_structure(path)
    with tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise VolumeError(f"{path} holds no image tifffile can read. {AGAIN}")
        series = tif.series[0]
        check_tiff_series(tif, series, path)
        if lazy and series.dataoffset is not None:
            dtype = np.dtype(series.dtype).newbyteorder(tif.byteorder)
            data = np.memmap(path, dtype, "r", series.dataoffset, series.shape)
        else:
            check_memory(path, series.shape, series.dtype)
            data = series.asarray()
        return _to_zyx(data, series.axes, path), _tiff_voxel_size(tif)


def _to_zyx(data: np.ndarray, axes: str, path: Path) -> np.ndarray:
    """Squeeze singleton axes; return ``(Z, Y, X)`` or ``(C, Z, Y, X)`` with the channel first."""
    keep = [i for i, (ax, n) in enumerate(zip(axes, data.shape)) if n > 1 or ax in "YX"]
    kept = "".join(axes[i] for i in keep)
    channel = [i for i, ax in enumerate(kept) if ax in "CS"]
    spatial = [i for i, ax in enumerate(kept) if ax not in "CS"]
    if len(channel) > 1 or len(spatial) > 3:
        raise VolumeError(f"{path} has axes {axes} of shape {data.shape}; only (Z, Y, X) volumes "
                          "with at most one channel axis can be used. Save one time point or "
                          "channel group and try again.")
    data = np.squeeze(data, axis=tuple(i for i in range(data.ndim) if i not in keep))
    data = np.transpose(data, channel + spatial)
    for _ in range(3 - len(spatial)):
        data = np.expand_dims(data, len(channel))
    return data


def _tiff_voxel_size(tif: tifffile.TiffFile) -> VoxelSize | None:
    meta = tif.imagej_metadata or next(iter(tif.shaped_metadata or ()), {})
    page = tif.pages[0]
    scale = _UM_PER_UNIT.get(int(page.tags.valueof("ResolutionUnit", 1)))
    y, x = (_pixel_size(page.tags.valueof(name), scale) for name in ("YResolution", "XResolution"))
    z = meta.get("spacing")
    if z is None and y is None and x is None:
        return None
    return float(z or 1.0), y or 1.0, x or 1.0


def _pixel_size(resolution: tuple[int, int] | None, scale: float | None) -> float | None:
    """Pixel size from a TIFF rational resolution (pixels per unit); None if unset or (1, 1)."""
    if resolution is None or scale is None or resolution[0] in (0, resolution[1]):
        return None
    return scale * resolution[1] / resolution[0]


def write_tiff(tmp: Path, data: np.ndarray, voxel: VoxelSize | None, compression: bool) -> None:
    """Write ``data`` to ``tmp``: an ImageJ hyperstack for uint8, uint16 and float32, else a plain
    TIFF; ``voxel`` in micrometres becomes the spacing and the resolution."""
    axes = {2: "YX", 3: "ZYX", 4: "CZYX"}.get(data.ndim)
    if axes is None:
        raise VolumeError(f"Cannot write an array of shape {data.shape} as TIFF. Give (Z, Y, X) "
                          "or (C, Z, Y, X) data, or write HDF5 or .npy.")
    imagej = data.dtype in _IMAGEJ_DTYPES
    if imagej and data.ndim == 4:  # ImageJ hyperstacks are stored in TZCYXS order
        data, axes = np.moveaxis(data, 0, 1), "ZCYX"
    metadata: dict[str, Any] = {"axes": axes}
    resolution, unit = None, None
    if voxel is not None:
        metadata.update(spacing=voxel[0], unit="um")
        per_unit = 1.0 if imagej else 1e4  # ImageJ: pixels per micrometre; plain: per centimetre
        resolution = (per_unit / voxel[2], per_unit / voxel[1])
        unit = "NONE" if imagej else "CENTIMETER"
    tifffile.imwrite(tmp, data, imagej=imagej, metadata=metadata, photometric="minisblack",
                     resolution=resolution, resolutionunit=unit,
                     compression="zlib" if compression else None,
                     bigtiff=not imagej and data.nbytes > 2**31)
