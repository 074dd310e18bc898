"""The sample volume: a small real 3D nuclei stack with a few simulated brush strokes.

The image and its ground truth are StarDist's 3D test images (BSD 3-Clause, Schmidt, Weigert et
al.; see ``_sample/LICENSE-stardist.txt`` and ``_sample/SOURCE.md``). Nothing here imports napari:
:func:`load_nuclei` also serves the demo, the tests and the benchmarks.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from .engine.errors import OutputError, writable_folder
from .engine.io import read_volume, write_volume
from .engine.training.scribbles import simulate_scribbles

SAMPLE_DIR = Path(__file__).parent / "_sample"
SAMPLE_FILES = ("image.tif", "scribbles.tif", "truth.tif", "LICENSE-stardist.txt")
CLASS_NAMES = {1: "background", 2: "nucleus"}
# The files carry no voxel size; the StarDist authors do not state one either.
_DEFAULT_SCALE = (1.0, 1.0, 1.0)


def load_nuclei() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The nuclei sample as arrays.

    Returns:
        ``(image, truth, scribbles)``, each ``(Z, Y, X)`` = ``(31, 61, 57)``: the uint16
        fluorescence image, the dense truth as class values (1 background, 2 nucleus, uint8), and
        sparse simulated brush strokes with the same values (0 = not annotated, uint8).
    """
    image = np.asarray(read_volume(SAMPLE_DIR / "image.tif").data)
    instances = np.asarray(read_volume(SAMPLE_DIR / "instances.tif").data)
    nucleus = (instances > 0).astype(np.uint8)
    scribbles = simulate_scribbles(nucleus, slices_per_axis=3, strokes_per_class=1, length=9,
                                   seed=0)
    return image, nucleus + 1, scribbles


def nuclei_scale() -> tuple[float, float, float]:
    """The ``(z, y, x)`` voxel size of the sample (from the file, else 1, 1, 1)."""
    voxel = read_volume(SAMPLE_DIR / "image.tif").voxel_size
    return tuple(voxel) if voxel is not None else _DEFAULT_SCALE  # type: ignore[return-value]


def nuclei3d_sample() -> list[tuple[np.ndarray, dict[str, Any], str]]:
    """napari sample data: the image ``nuclei`` and the Labels layer ``nuclei annotations``."""
    image, _, scribbles = load_nuclei()
    scale = nuclei_scale()
    return [
        (image, {"name": "nuclei", "scale": scale}, "image"),
        (scribbles, {"name": "nuclei annotations", "scale": scale,
                     "metadata": {"class_names": dict(CLASS_NAMES)}}, "labels"),
    ]


def write_sample(folder: str | os.PathLike) -> list[Path]:
    """Write the nuclei sample as files for the command line (``demo --write-sample``).

    Args:
        folder: Where to write; created if needed. None of :data:`SAMPLE_FILES` may exist there.

    Returns:
        The paths of ``image.tif`` (uint16), ``scribbles.tif`` (the strokes the napari sample
        shows: 0 = not annotated, 1 background, 2 nucleus), ``truth.tif`` (1, 2 everywhere), each
        with the sample's voxel size, and ``LICENSE-stardist.txt``, the notice that must travel
        with the image.
    """
    folder = writable_folder(folder)
    taken = [name for name in SAMPLE_FILES if (folder / name).exists()]
    if taken:
        raise OutputError(f"{folder / taken[0]} already exists; choose an empty folder for the "
                          "sample, or delete its files first.")
    image, truth, scribbles = load_nuclei()
    scale = nuclei_scale()
    paths = [write_volume(folder / name, data, voxel_size=scale)
             for name, data in zip(SAMPLE_FILES, (image, scribbles, truth))]
    paths.append(Path(shutil.copyfile(SAMPLE_DIR / "LICENSE-stardist.txt",
                                      folder / "LICENSE-stardist.txt")))
    return paths
