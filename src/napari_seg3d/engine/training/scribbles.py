"""Simulated brush strokes from a dense ground truth, for the sample data, tests and benchmarks.

A user paints a few short strokes of each class on a few slices; this imitates that: on
``slices_per_axis`` evenly spaced slices along each axis, ``strokes_per_class`` short random walks
with a small round brush, kept inside the class they belong to.
"""

from __future__ import annotations

import numpy as np


def stroke(mask2d: np.ndarray, rng: np.random.Generator, length: int, radius: int,
           start: tuple[int, int] | None = None) -> np.ndarray:
    """One random-walk stroke inside ``mask2d`` (2D bool) from ``start`` (default: a random
    voxel at least ``radius`` inside the mask); returns the painted 2D bool mask."""
    painted = np.zeros_like(mask2d)
    if start is None:
        inside = np.argwhere(_erode(mask2d, radius))
        if len(inside) == 0:
            inside = np.argwhere(mask2d)
        if len(inside) == 0:
            return painted
        start = inside[rng.integers(len(inside))]
    pos = np.asarray(start, float)
    angle = rng.uniform(0, 2 * np.pi)
    for _ in range(length):
        y, x = int(round(pos[0])), int(round(pos[1]))
        painted[max(y - radius, 0): y + radius + 1, max(x - radius, 0): x + radius + 1] = True
        angle += rng.normal(0, 0.4)
        nxt = pos + (np.sin(angle), np.cos(angle))
        ny, nx = int(round(nxt[0])), int(round(nxt[1]))
        if not (0 <= ny < mask2d.shape[0] and 0 <= nx < mask2d.shape[1]) or not mask2d[ny, nx]:
            angle += np.pi  # turn back at the class border
            continue
        pos = nxt
    return painted & mask2d


def _erode(mask: np.ndarray, r: int) -> np.ndarray:
    out = mask.copy()
    for axis in range(2):
        for shift in range(1, r + 1):
            out &= np.roll(mask, shift, axis) & np.roll(mask, -shift, axis)
    return out


def simulate_scribbles(truth: np.ndarray, *, slices_per_axis: int = 3, strokes_per_class: int = 1,
                       length: int = 12, radius: int = 1, seed: int = 0) -> np.ndarray:
    """Sparse annotations drawn from a dense class map.

    Args:
        truth: ``(Z, Y, X)`` integer class map; every value is a class (0 included), and the
            returned labels use ``value + 1`` so that 0 stays *not annotated*.
        slices_per_axis: slices painted along each of z, y and x.
        strokes_per_class: strokes per class per slice.
        length: steps of each random walk.
        radius: brush radius in voxels.
        seed: random seed.

    Returns:
        ``(Z, Y, X)`` uint8 (or uint16) labels, 0 where not painted.
    """
    truth = np.asarray(truth)
    rng = np.random.default_rng(seed)
    values = np.unique(truth)
    out = np.zeros(truth.shape, np.uint8 if values.max() < 255 else np.uint16)
    for axis in range(3):
        n = truth.shape[axis]
        for index in np.linspace(0, n - 1, slices_per_axis + 2)[1:-1].round().astype(int):
            plane = np.take(truth, index, axis=axis)
            painted = np.zeros(plane.shape, out.dtype)
            for v in values:
                for _ in range(strokes_per_class):
                    painted[stroke(plane == v, rng, length, radius)] = v + 1
            sl = [slice(None)] * 3
            sl[axis] = index
            target = out[tuple(sl)]
            target[painted > 0] = painted[painted > 0]
    return out
