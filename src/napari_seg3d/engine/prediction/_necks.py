"""The ``"auto"`` watershed's second step: pieces of a region that no neck separates are one
object again.

The distance watershed seeds a piece at every top of the distance to the background that lies
half an object diameter from a higher one. Between two touching round objects the distance
falls at their neck: the highest crossing from one piece to the other (the *saddle*) lies well
below the lower of the two tops. Along an elongated or irregular object it hardly falls: the
tops are points of one ridge. So two adjacent pieces are merged when the saddle of every
landscape given is at least ``ratio`` x the lower top (see :data:`.instances.NECK`), the most
alike first.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def saddles(pieces: np.ndarray, landscape: np.ndarray) -> dict[tuple[int, int], float]:
    """The highest crossing between each two touching pieces.

    Args:
        pieces: int ``(z, y, x)``: 0 outside, pieces ``1..m``.
        landscape: float, the same shape.

    Returns:
        ``{(a, b): height}`` for ``a < b`` that touch by a face: the largest, over the faces
        between them, of the lower landscape value of the two voxels of the face.
    """
    keys, heights = [], []
    base = int(pieces.max()) + 1
    for axis in range(pieces.ndim):
        p, q = np.moveaxis(pieces, axis, 0), np.moveaxis(landscape, axis, 0)
        face = (p[:-1] != p[1:]) & (p[:-1] > 0) & (p[1:] > 0)
        a, b = p[:-1][face].astype(np.int64), p[1:][face].astype(np.int64)
        keys.append(np.minimum(a, b) * base + np.maximum(a, b))
        heights.append(np.minimum(q[:-1], q[1:])[face])
    keys, heights = np.concatenate(keys), np.concatenate(heights)
    if keys.size == 0:
        return {}
    order = np.lexsort((heights, keys))
    keys, heights = keys[order], heights[order]
    last = np.r_[keys[1:] != keys[:-1], True]  # the highest crossing of each pair
    return {(int(k) // base, int(k) % base): float(h) for k, h in zip(keys[last], heights[last])}


def merge_without_necks(pieces: np.ndarray, landscapes, ratio: float) -> np.ndarray:
    """Merge touching pieces that no landscape separates by a neck.

    Args:
        pieces: int ``(z, y, x)`` pieces ``1..m`` of one region (0 outside).
        landscapes: float arrays of the same shape (the distance to the background; the
            smoothed class probability); a pair is kept apart when one of them dips between
            the two pieces below ``ratio`` x the lower of their tops.
        ratio: in (0, 1]: higher keeps more pieces apart.

    Returns:
        int32 pieces ``1..n``, n <= m, the merged ones under one id.
    """
    m = int(pieces.max())
    if m < 2:
        return pieces
    index = np.arange(1, m + 1)
    found = [(saddles(pieces, land), np.r_[0.0, ndi.maximum(land, pieces, index)])
             for land in landscapes]
    parent = np.arange(m + 1)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def alike(pair, tops) -> float:  # >= 1: no neck in any landscape
        return min(s.get(pair, -np.inf) / max(ratio * min(t[root(pair[0])], t[root(pair[1])]),
                                              1e-12) for (s, _), t in zip(found, tops))

    tops = [t.copy() for _, t in found]
    pairs = sorted(set().union(*(s for s, _ in found)), key=lambda p: alike(p, tops), reverse=True)
    for pair in pairs:
        a, b = root(pair[0]), root(pair[1])
        if a != b and alike(pair, tops) >= 1:
            parent[b] = a
            for t in tops:
                t[a] = max(t[a], t[b])
    roots = np.array([root(i) for i in range(m + 1)])
    _, ids = np.unique(roots, return_inverse=True)  # 0 stays 0: it is its own root
    return ids.astype(np.int32)[pieces]
