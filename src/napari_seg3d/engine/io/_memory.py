"""Memory for a volume read whole, checked before it is allocated: a TIFF page that declares
10^6 x 10^6 pixels is one sentence (the same from ``train`` and ``predict``), not a MemoryError."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import VolumeError
from ._space import format_bytes

FIX = ("Crop the volume, or save it as HDF5, zarr or uncompressed TIFF, which are read piece by "
       "piece.")


def available_memory() -> int | None:
    """Bytes this process may still allocate: the system's available memory and free swap
    (Linux ``/proc/meminfo``), else the physical memory; None when unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in fh
                    if line.split(":")[0] in ("MemAvailable", "SwapFree")}
        if "MemAvailable" in info:
            return info["MemAvailable"] + info.get("SwapFree", 0)
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def check_memory(path: Path, shape: Sequence[int], dtype: Any) -> None:
    """Raise a :class:`.VolumeError` when a ``shape`` ``dtype`` array (of the file ``path``)
    cannot fit in the memory left."""
    needed = math.prod(int(n) for n in shape) * np.dtype(dtype).itemsize
    free = available_memory()
    if free is not None and needed > free:
        raise VolumeError(f"Cannot read {path}: its image of shape {tuple(shape)} "
                          f"{np.dtype(dtype)} needs {format_bytes(needed)} of memory and "
                          f"{format_bytes(free)} is available. {FIX}")


def out_of_memory(path: Path) -> VolumeError:
    """The error for a read that ran out of memory anyway."""
    return VolumeError(f"Cannot read {path}: there is not enough memory to hold it. {FIX}")
