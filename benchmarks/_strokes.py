"""Simulated strokes for the active-learning rounds of ``bench_quality.py``: where a simulated
user starts them (the most uncertain voxels, or random ones) and how they are painted (short
brush walks inside the true class on a z, y or x slice, as ``engine.training.scribbles`` paints)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from napari_seg3d.engine.training.scribbles import stroke


def candidates(labels: np.ndarray, margin: int = 0) -> np.ndarray:
    """Bool ``(Z, Y, X)``: voxels a simulated stroke may start at: not annotated in ``labels``
    and at least ``margin`` voxels inside the volume's faces."""
    free = labels == 0
    if margin > 0:
        inner = np.zeros_like(free)
        inner[tuple(slice(margin, max(n - margin, margin)) for n in labels.shape)] = True
        free &= inner
    return free


def uncertain_starts(unsure: np.ndarray, allowed: np.ndarray, count: int,
                     spread: int = 5, sigma: float = 1.0) -> list[tuple[int, int, int]]:
    """Up to ``count`` voxels ``(z, y, x)`` at the maxima of the smoothed ``(Z, Y, X)`` uncertainty
    ``unsure`` where ``allowed`` (bool ``(Z, Y, X)``), each more than ``spread`` voxels
    (Chebyshev) from the ones picked before (greedy non-maximum suppression)."""
    score = ndi.gaussian_filter(unsure.astype(np.float32), sigma)
    score[~allowed] = -np.inf
    starts = []
    for _ in range(count):
        flat = int(np.argmax(score))
        if not np.isfinite(score.flat[flat]):
            break
        z, y, x = np.unravel_index(flat, score.shape)
        starts.append((int(z), int(y), int(x)))
        score[max(z - spread, 0):z + spread + 1, max(y - spread, 0):y + spread + 1,
              max(x - spread, 0):x + spread + 1] = -np.inf
    return starts


def random_starts(allowed: np.ndarray, count: int,
                  rng: np.random.Generator) -> list[tuple[int, int, int]]:
    """``count`` distinct random voxels ``(z, y, x)`` where ``allowed`` (bool ``(Z, Y, X)``)."""
    free = np.flatnonzero(allowed.ravel())
    picks = rng.choice(free, size=min(count, len(free)), replace=False)
    return [tuple(int(v) for v in np.unravel_index(i, allowed.shape)) for i in picks]


def add_strokes(labels: np.ndarray, truth: np.ndarray, starts, rng: np.random.Generator,
                length: int = 9, radius: int = 1) -> np.ndarray:
    """A copy of ``labels`` ``(Z, Y, X)`` with one stroke per start voxel: on a z, y or x slice
    through it (drawn at random), painted with the true class of the start voxel and kept inside
    that class on the slice; voxels already annotated keep their label."""
    out = labels.copy()
    for start in starts:
        axis = int(rng.integers(3))
        index = [slice(None)] * 3
        index[axis] = start[axis]
        value = truth[start]
        plane_start = tuple(s for a, s in enumerate(start) if a != axis)
        painted = stroke(truth[tuple(index)] == value, rng, length, radius, start=plane_start)
        target = out[tuple(index)]  # a view into out
        target[painted & (target == 0)] = value
    return out
