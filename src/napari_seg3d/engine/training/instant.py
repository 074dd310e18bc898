"""The instant random-forest preview after *Train*: the slice on screen first, whatever the size
of the volume, then the rest of what is on screen, then the rest of the volume nearest to the
view first.

:func:`instant_preview` is a generator of :class:`ForestPreview` records:

1. a quick forest (:data:`QUICK_TREES` trees) fit on a few stroke voxels nearest the displayed
   slice (at most :data:`QUICK_TILES` tiles of the image are read, see :mod:`.forest_samples`)
   segments the displayed slice over the view's y/x extent (``stage="slice"``), then the rest of
   the view region, in slabs nearest to the displayed slice first (``"view"``);
2. the full forest, fit on all strokes (at most 20000 voxels a class, as
   :func:`.forest.fit_forest`), segments the view region again, slice first, and then, for
   volumes up to ``volume_voxels``, the rest of the volume block by block, nearest first
   (``"volume"``).

The records of each pass tile their part exactly once. Nothing here knows about threads or the
GUI: the caller decides where it runs and how fast it consumes it (the Train widget shows the
first pass before the network starts and lets the rest run beside the training).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ..normalization import Normalization, compute_normalization
from .forest import _MAX_PER_CLASS, Forest, fit_samples, region_features
from .forest_samples import limit_tiles, stroke_samples
from .views import as_array

log = logging.getLogger(__name__)

QUICK_TREES = 32  # trees of the quick forest (the first pass)
QUICK_PER_CLASS = 1500  # stroke voxels a class it is fit on
QUICK_TILES = 16  # tiles of the image it reads at most
FULL_TREES = 32  # trees of the full forest that predicts the preview (100 fit its Dice +0.00x)
VOLUME_VOXELS = 10**8  # larger volumes get the view region only
VIEW_SLAB = 4  # slices of each record of the view region after the displayed slice
VOLUME_BLOCK = (16, 128, 128)  # the records of the rest of the volume

Region = tuple[slice, slice, slice]


@dataclass(frozen=True)
class ForestPreview:
    """One segmented region: ``labels`` ``(z, y, x)`` hold the painted label values.

    ``stage`` is ``"slice"`` (the displayed slice), ``"view"`` (the rest of the view region) or
    ``"volume"`` (the rest of the volume); ``forest`` is ``"quick"`` or ``"full"``; ``done`` of
    ``total`` records of this forest's pass."""

    slices: Region
    labels: np.ndarray
    stage: str
    forest: str
    done: int
    total: int


def view_order(view: Region, z: int, slab: int = VIEW_SLAB) -> list[Region]:
    """The view region as records: the displayed slice ``z`` first, then slabs of ``slab``
    slices alternately above and below it. They tile ``view`` exactly once."""
    z0, z1 = view[0].start, view[0].stop
    z = int(np.clip(z, z0, z1 - 1))
    out = [(slice(z, z + 1),) + tuple(view[1:])]
    above, below = z + 1, z
    while above < z1 or below > z0:
        if above < z1:
            out.append((slice(above, min(above + slab, z1)),) + tuple(view[1:]))
            above += slab
        if below > z0:
            out.append((slice(max(below - slab, z0), below),) + tuple(view[1:]))
            below -= slab
    return out


def _axis_cuts(n: int, lo: int, hi: int, block: int) -> list[tuple[int, int]]:
    """Segments of ``[0, n)`` of at most ``block``, cut at ``lo`` and ``hi``."""
    edges = sorted({0, n, lo, hi} | set(range(lo, 0, -block)) | set(range(hi, n, block))
                   | set(range(lo, hi, block)))
    return [(a, b) for a, b in itertools.pairwise(edges) if b > a]


def volume_order(shape: Sequence[int], view: Region, block=VOLUME_BLOCK) -> list[Region]:
    """The rest of a ``(Z, Y, X)`` volume outside ``view``, in blocks of at most ``block``
    aligned on the view, nearest first: the blocks on the view's slices first (nearest in y/x
    first), then slab by slab away from them. They and ``view`` tile the volume exactly once."""
    axes = [_axis_cuts(int(n), v.start, v.stop, b) for n, v, b in zip(shape, view, block)]

    def gap(region: Region, axis: int) -> int:
        r, v = region[axis], view[axis]
        return max(v.start - r.stop, r.start - v.stop, 0)

    regions = [tuple(slice(a, b) for a, b in cell) for cell in itertools.product(*axes)]
    outside = [r for r in regions if any(gap(r, a) or r[a].start < view[a].start
                                         or r[a].stop > view[a].stop for a in range(3))]
    return sorted(outside, key=lambda r: (gap(r, 0), np.hypot(gap(r, 1), gap(r, 2))))


def painted_values(labels) -> tuple[int, ...]:
    """The label values painted in ``labels`` (0 left out), reading only the painted slices."""
    painted_z = labels.any(axis=(1, 2)) if isinstance(labels, np.ndarray) else None
    seen: set[int] = set()
    for z in range(labels.shape[0]) if painted_z is None else np.flatnonzero(painted_z):
        plane = np.asarray(labels[z])
        seen.update(int(v) for v in np.unique(plane[plane != 0]))
    return tuple(sorted(seen))


def instant_preview(image, labels, view: Region, z: int, *, spacing=None,
                    class_values: Sequence[int] | None = None,
                    normalization: Normalization | None = None, seed: int = 0,
                    volume_voxels: int = VOLUME_VOXELS,
                    threads: int | Callable[[], int] | None = None,
                    ) -> Iterator[ForestPreview]:
    """The random-forest preview of ``image``, what is on screen first (see the module).

    Args:
        image: ``(C, Z, Y, X)`` array or lazy source (only what each record needs is read).
        labels: ``(Z, Y, X)`` strokes (0 = none); read slice by slice.
        view: the region on screen: the training window's depth around ``z``, the view's
            y/x extent.
        z: the displayed slice.
        spacing: ``(z, y, x)`` voxel size; None: isotropic.
        class_values: the label value of each class; None: the values painted.
        normalization: the intensity normalisation; None: robust percentiles of the displayed
            slice's view region (a forest does not depend on it beyond rounding; at 5x10^8
            voxels a slice of the whole volume, read through dask, took 0.5 s of the first
            preview's 2.7).
        seed: fixes the draws and the forests.
        volume_voxels: volumes larger than this get the view region only.
        threads: forest threads, or a function giving them before each step (None: torch's
            current count).

    Raises:
        ValueError: fewer than two classes are painted.
    """
    values = tuple(class_values if class_values is not None else painted_values(labels))
    values = np.asarray(values, np.min_scalar_type(max(values, default=0)))  # as label_lut
    if len(values) < 2:
        raise ValueError("The random-forest preview needs strokes of at least two classes.")
    shape = tuple(int(n) for n in image.shape[-3:])
    shown = int(np.clip(z, view[0].start, view[0].stop - 1))  # what the first record reads
    norm = normalization or compute_normalization(
        as_array(image[(slice(None), slice(shown, shown + 1)) + tuple(view[1:])]),
        max_voxels=1 << 18)
    count = threads if callable(threads) else lambda: threads
    fit = {"normalization": norm, "spacing": spacing, "seed": seed}
    quick = stroke_samples(labels, values, QUICK_PER_CLASS, near_z=z, seed=seed)
    forest = fit_samples(image, limit_tiles(quick, QUICK_TILES), n_trees=QUICK_TREES,
                         threads=count(), **fit)
    in_view = view_order(view, z)
    yield from _predict(forest, image, values, in_view, len(in_view), "quick", count)
    samples = stroke_samples(labels, values, _MAX_PER_CLASS, seed=seed)
    forest = fit_samples(image, samples, n_trees=FULL_TREES, threads=count(), **fit)
    rest = volume_order(shape, view) if np.prod(shape, dtype=np.int64) <= volume_voxels else []
    yield from _predict(forest, image, values, in_view + rest, len(in_view), "full", count)


def _predict(forest: Forest, image, values: np.ndarray, regions: list[Region], n_view: int,
             name: str, threads: Callable[[], int | None]) -> Iterator[ForestPreview]:
    """Segment ``regions`` one after the other (the first ``n_view`` are the view region)."""
    lut = values[np.asarray(forest.classes)]
    for i, region in enumerate(regions):
        feats = region_features(image, region, forest.spacing, forest.normalization)
        labels = lut[forest.probabilities(feats, threads()).argmax(0)]
        stage = "slice" if i == 0 else "view" if i < n_view else "volume"
        yield ForestPreview(region, labels, stage, name, i + 1, len(regions))
