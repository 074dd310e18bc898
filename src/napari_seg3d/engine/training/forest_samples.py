"""The training voxels of the random forest: a subsample of the stroke voxels, and their features
computed on small tiles around them, so a fit reads only the image near the strokes it uses.

A voxel's features need only its halo (see :func:`.features.fast_halo`): the volume is cut into
tiles (:data:`TILE`), each tile holding samples computes the features of the bounding box of its
samples (one plane for strokes painted on a slice), and the tiles of one z-row are read
together, so a fit on strokes of a few slices reads a few slabs of the volume, not every block
that holds a stroke.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..normalization import Normalization
from .features import fast_features, fast_halo, n_features, pad_to_halo
from .views import as_array

TILE = (8, 64, 64)  # voxels of a tile: the unit of the features of the training voxels
ROW_READ_RATIO = 2.0  # a z-row of tiles is read whole unless that reads this much more


@dataclass(frozen=True)
class StrokeSamples:
    """Stroke voxels for the forest: ``coords`` ``(N, 3)`` int64 ``(z, y, x)`` and ``classes``
    ``(N,)`` int64 class indices (0-based), grouped by class."""

    coords: np.ndarray
    classes: np.ndarray

    def __len__(self) -> int:
        return len(self.classes)

    def take(self, keep: np.ndarray) -> StrokeSamples:
        return StrokeSamples(self.coords[keep], self.classes[keep])


def coords_samples(coords, per_class: int, seed: int = 0) -> StrokeSamples:
    """At most ``per_class`` voxels of each class drawn at random from ``coords`` (one
    ``(N_k, 3)`` array of stroke voxels a class): the forest's samples without a pass over a
    volume-sized array (:func:`stroke_samples` reads the labels slice by slice)."""
    rng = np.random.default_rng([seed, 7])
    kept = [c if len(c) <= per_class else c[np.sort(rng.choice(len(c), per_class, replace=False))]
            for c in coords]
    return StrokeSamples(
        np.concatenate([np.zeros((0, 3), np.int64)] + [np.asarray(c, np.int64) for c in kept]),
        np.concatenate([np.zeros(0, np.int64)]
                       + [np.full(len(c), k, np.int64) for k, c in enumerate(kept)]))


def _scan_order(painted_z: np.ndarray, near_z: int | None) -> list[int]:
    """The painted z slices, nearest to ``near_z`` first (all in order when None)."""
    zs = np.flatnonzero(painted_z)
    if near_z is None:
        return zs.tolist()
    return zs[np.argsort(np.abs(zs - near_z), kind="stable")].tolist()


def stroke_samples(labels, class_values, per_class: int, *, near_z: int | None = None,
                   seed: int = 0) -> StrokeSamples:
    """At most ``per_class`` stroke voxels of each class, drawn at random; with ``near_z``, the
    strokes nearest to that z slice first (slices further away are read only while a class
    still lacks voxels).

    Args:
        labels: ``(Z, Y, X)`` integer annotations (numpy or any array-like), 0 = none.
        class_values: the label value of each class (sorted); other values are left out.
        per_class: voxels kept per class.
        near_z: the slice whose strokes come first; None: a uniform draw over all strokes.
        seed: fixes the draw.
    """
    rng = np.random.default_rng(seed)
    values = np.asarray(class_values)
    n_classes = len(values)
    painted_z = labels.any(axis=(1, 2)) if isinstance(labels, np.ndarray) \
        else np.array([np.asarray(labels[z]).any() for z in range(labels.shape[0])])
    kept = [np.zeros((0, 4), np.float64) for _ in range(n_classes)]  # (key, z, y, x)
    for z in _scan_order(painted_z, near_z):
        if near_z is not None and kept and all(len(k) >= per_class for k in kept) and \
                abs(z - near_z) > max(k[:, 0].max() for k in kept):
            break  # every class is full and this slice is further than all kept voxels
        _add_plane(kept, np.asarray(labels[z]), z, values, near_z, per_class, rng)
    coords = np.concatenate([np.zeros((0, 4))] + kept)[:, 1:].astype(np.int64)
    classes = np.concatenate([np.zeros(0, np.int64)]
                             + [np.full(len(k), c, np.int64) for c, k in enumerate(kept)])
    return StrokeSamples(coords, classes)


def _add_plane(kept: list, plane: np.ndarray, z: int, values: np.ndarray, near_z,
               per_class: int, rng: np.random.Generator) -> None:
    """Merge the stroke voxels of the z ``plane`` into ``kept``, keeping per class the
    ``per_class`` smallest keys (distance to ``near_z`` plus a uniform draw below 1)."""
    ys, xs = np.nonzero(plane)
    if len(ys) == 0:
        return
    painted = plane[ys, xs]
    classes = np.searchsorted(values, painted)
    classes[(classes >= len(values)) | (values[np.minimum(classes, len(values) - 1)] != painted)] = -1
    distance = 0 if near_z is None else abs(z - near_z)
    for c in np.unique(classes[classes >= 0]):
        mine = classes == c
        key = distance + rng.random(int(mine.sum()))
        rows = np.column_stack([key, np.full(len(key), z), ys[mine], xs[mine]])
        both = np.concatenate([kept[c], rows])
        if len(both) > per_class:
            both = both[np.argpartition(both[:, 0], per_class - 1)[:per_class]]
        kept[c] = both


def limit_tiles(samples: StrokeSamples, max_tiles: int, tile=TILE) -> StrokeSamples:
    """The samples of at most ``max_tiles`` tiles: each class in turn gives its next tile, in
    the order of its samples (nearest first when drawn with ``near_z``), so every class keeps
    samples."""
    cells = samples.coords // np.asarray(tile)
    chosen: dict[tuple, None] = {}
    per_class = []
    for c in np.unique(samples.classes):
        rows = cells[samples.classes == c]
        _, first = np.unique(rows, axis=0, return_index=True)
        per_class.append([tuple(rows[i]) for i in np.sort(first)])
    for rank in range(max(map(len, per_class), default=0)):
        for cells_of_class in per_class:
            if rank < len(cells_of_class) and len(chosen) < max_tiles:
                chosen.setdefault(cells_of_class[rank])
    keep = np.array([tuple(c) in chosen for c in cells], bool)
    return samples.take(keep)


def sample_features(image, samples: StrokeSamples, normalization: Normalization, spacing,
                    tile=TILE) -> np.ndarray:
    """``(N, F)`` float32 features of the samples of a ``(C, Z, Y, X)`` source: per tile the
    features of its samples' bounding box, the tiles of one z-row read together, unless that
    row's box (with the halo) holds over :data:`ROW_READ_RATIO` times the voxels of its tiles'
    own boxes: then each tile reads its own (strokes far apart on a large slice: at 794^3 the
    rows of the quick preview's 16 tiles read 870 chunks of the file)."""
    shape = tuple(image.shape[-3:])
    halo = fast_halo(spacing)
    out = np.empty((len(samples), n_features(image.shape[0])), np.float32)
    cells = samples.coords // np.asarray(tile)
    for zc in np.unique(cells[:, 0]):
        row = np.flatnonzero(cells[:, 0] == zc)
        groups = [row[np.all(cells[row] == cell, axis=1)]
                  for cell in np.unique(cells[row], axis=0)]
        apart = sum(_read_voxels(_box(samples.coords[g]), halo) for g in groups)
        together = _read_voxels(_box(samples.coords[row]), halo) <= ROW_READ_RATIO * apart
        for read in [groups] if together else [[g] for g in groups]:
            box = _box(samples.coords[np.concatenate(read)])
            block = read_block(image, box, halo, shape, normalization)
            origin = np.array([b.start for b in box]) - np.array([h for h in halo])
            for mine in read:
                local = samples.coords[mine] - origin
                core = tuple(slice(int(lo), int(hi) + 1)
                             for lo, hi in zip(local.min(0), local.max(0)))
                feats = fast_features(block, core, spacing)
                at = local - np.array([c.start for c in core])
                out[mine] = feats[:, at[:, 0], at[:, 1], at[:, 2]].T
    return out


def _read_voxels(box: tuple[slice, slice, slice], halo) -> int:
    """Voxels read for ``box`` with its halo."""
    return int(np.prod([b.stop - b.start + 2 * h for b, h in zip(box, halo)], dtype=np.int64))


def _box(coords: np.ndarray) -> tuple[slice, slice, slice]:
    """The bounding box of ``coords``."""
    lo, hi = coords.min(0), coords.max(0) + 1
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def read_block(image, region, halo, shape, normalization: Normalization) -> np.ndarray:
    """The normalised ``(C, z, y, x)`` image over ``region`` grown by ``halo``; where the
    volume ends, its faces are mirrored in (so the block always has the whole halo)."""
    outer = tuple(slice(max(r.start - h, 0), min(r.stop + h, n))
                  for r, h, n in zip(region, halo, shape))
    block = _normalised(as_array(image[(slice(None),) + outer]), normalization)
    missing = tuple((o.start - (r.start - h), (r.stop + h) - o.stop)
                    for r, o, h in zip(region, outer, halo))
    return pad_to_halo(block, missing)


def _normalised(block: np.ndarray, normalization: Normalization) -> np.ndarray:
    """``normalization.apply`` in place on a float32 copy (NaN and Inf voxels become 0)."""
    out = np.array(block, np.float32, copy=True)
    shape = (-1,) + (1,) * (out.ndim - 1)
    low = np.asarray(normalization.low, np.float32).reshape(shape)
    high = np.asarray(normalization.high, np.float32).reshape(shape)
    out -= low
    out /= np.maximum(high - low, 1e-6)
    with np.errstate(invalid="ignore", over="ignore"):  # +Inf and -Inf sum to NaN
        finite = np.isfinite(out.sum(dtype=np.float64))
    if not finite:
        np.nan_to_num(out, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    return out
