"""napari writer: a Labels layer to an HDF5 dataset, atomically, with its voxel size."""

from __future__ import annotations

from typing import Any

import numpy as np

from .engine.io import DEFAULT_KEY, split_path, write_volume


def write_labels_h5(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write one Labels layer to ``path`` (``file.h5`` or ``file.h5:/key``).

    The dataset is ``/labels`` unless the path names one; other datasets of an existing file are
    kept. The last three entries of the layer's scale become the ``element_size_um`` attribute.

    Args:
        path: Target file chosen in napari's save dialog.
        data: The layer's ``(Z, Y, X)`` labels (the full resolution level if multiscale).
        meta: The layer's attributes (``scale``, ``multiscale``, ...).

    Returns:
        The file written, as a one-element list.
    """
    if meta.get("multiscale"):
        data = data[0]
    data = np.asarray(data)
    file, key = split_path(path)
    scale = meta.get("scale")
    voxel = None
    if data.ndim >= 3 and scale is not None and len(scale) >= 3:
        voxel = tuple(abs(float(s)) for s in scale[-3:])
    written = write_volume(f"{file}:{key or DEFAULT_KEY}", data, voxel_size=voxel)
    return [str(written)]
