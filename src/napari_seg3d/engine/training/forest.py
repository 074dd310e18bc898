"""A fast classical pixel classifier, ilastik-style: multiscale filter features and a random forest.

It fits in about a second on a small volume, so it gives the first segmentation right after
*Train* is pressed while the network is still learning. Features are computed block by block
with a halo, so memory follows the block, not the volume. Sigmas are in units of the smallest
voxel edge and shrink along coarse axes, so anisotropic stacks get physically round filters.
The forest lives only in memory: model files hold the network alone.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from ..normalization import Normalization

SIGMAS = (0.7, 1.0, 1.6, 3.5, 5.0)  # ilastik's scales up to 5 (0.80 on the sample; 4 scales: 0.77)
_MAX_PER_CLASS = 20_000  # training voxels per class; more adds time, not accuracy
_BLOCK = (64, 128, 128)


def _axis_sigmas(sigma: float, spacing) -> tuple[float, ...]:
    unit = min(spacing)
    return tuple(sigma * unit / s for s in spacing)


def _hessian_eigenvalues(x: np.ndarray, sigmas: tuple[float, ...]) -> list[np.ndarray]:
    """The three eigenvalues (descending) of the Gaussian Hessian of ``(Z, Y, X)`` ``x``."""
    h = {}
    for i, j in itertools.combinations_with_replacement(range(3), 2):
        order = [0, 0, 0]
        order[i] += 1
        order[j] += 1
        h[i, j] = ndi.gaussian_filter(x, sigmas, order=order)
    return symmetric_eigenvalues(h)


def symmetric_eigenvalues(h: dict) -> list[np.ndarray]:
    """Closed-form eigenvalues (descending) of symmetric 3x3 matrices given as ``h[i, j]``
    arrays (``i <= j``), about 10x faster than ``np.linalg.eigvalsh`` on stacked matrices."""
    q = (h[0, 0] + h[1, 1] + h[2, 2]) / 3
    d0, d1, d2 = h[0, 0] - q, h[1, 1] - q, h[2, 2] - q
    off = h[0, 1] ** 2 + h[0, 2] ** 2 + h[1, 2] ** 2
    p = np.sqrt((d0**2 + d1**2 + d2**2 + 2 * off) / 6)
    safe = np.where(p > 0, p, 1)
    det = (d0 * (d1 * d2 - h[1, 2] ** 2) - h[0, 1] * (h[0, 1] * d2 - h[1, 2] * h[0, 2])
           + h[0, 2] * (h[0, 1] * h[1, 2] - d1 * h[0, 2]))
    r = np.clip(det / (2 * safe**3), -1, 1)
    phi = np.arccos(r) / 3
    e1 = q + 2 * p * np.cos(phi)
    e3 = q + 2 * p * np.cos(phi + 2 * np.pi / 3)
    return [e1, 3 * q - e1 - e3, e3]


def image_features(image: np.ndarray, spacing=(1.0, 1.0, 1.0), sigmas=SIGMAS) -> np.ndarray:
    """Per-voxel features of a normalised ``(C, Z, Y, X)`` image.

    For each channel: the intensity, and per sigma the smoothed intensity, the gradient
    magnitude and the three Hessian eigenvalues (edges, blobs, tubes and sheets).

    Returns:
        ``(F, Z, Y, X)`` float32 with ``F = C * (1 + 5 * len(sigmas))``.
    """
    out = []
    for channel in np.asarray(image, np.float32):
        out.append(channel)
        for sigma in sigmas:
            s = _axis_sigmas(sigma, spacing)
            out.append(ndi.gaussian_filter(channel, s))
            out.append(ndi.gaussian_gradient_magnitude(channel, s))
            out.extend(_hessian_eigenvalues(channel, s))
    return np.stack(out).astype(np.float32, copy=False)


def halo_of(spacing=(1.0, 1.0, 1.0), sigmas=SIGMAS) -> tuple[int, int, int]:
    """Voxels of context each feature needs along ``(z, y, x)``."""
    return tuple(math.ceil(4 * s) for s in _axis_sigmas(max(sigmas), spacing))


@dataclass
class Forest:
    """A fitted forest with what it needs to segment any region of the image it was fit on.

    ``trees`` are scikit-learn decision trees fit on bootstrap samples (a random forest, as
    ``RandomForestClassifier`` builds it). They are fit and applied in our own threads rather
    than through scikit-learn's ``n_jobs``: its worker threads reset Python's warning filters
    while other threads read them (Python 3.11's ``warnings`` is not thread-safe), which raised
    "sklearn.utils.parallel.delayed should be used with ..." at random and could leave a
    process with no warning filters at all.
    """

    trees: list
    normalization: Normalization
    spacing: tuple[float, float, float]
    n_classes: int

    def probabilities(self, features: np.ndarray, threads: int | None = None) -> np.ndarray:
        """``(K, ...)`` float32 class probabilities from ``(F, ...)`` features."""
        f = np.ascontiguousarray(features.reshape(features.shape[0], -1).T, dtype=np.float32)
        parts = _in_threads(lambda group: sum(t.predict_proba(f, check_input=False)
                                               for t in group), self.trees, threads)
        p = (sum(parts) / len(self.trees)).astype(np.float32)
        return p.T.reshape((p.shape[1],) + features.shape[1:])


def _in_threads(fn, items: list, threads: int | None) -> list:
    """``fn`` applied to ``threads`` interleaved groups of ``items`` in a thread pool (the
    tree code releases the GIL); ``threads`` None: torch's current count."""
    import torch

    n = max(1, min(len(items), threads or torch.get_num_threads()))
    groups = [items[i::n] for i in range(n)]
    if n == 1:
        return [fn(groups[0])]
    with ThreadPoolExecutor(n, thread_name_prefix="seg3d-forest") as pool:
        return list(pool.map(fn, groups))


def _region_features(image, region, spacing, normalization) -> tuple[np.ndarray, tuple]:
    """Features of ``region`` (three slices) of a ``(C, Z, Y, X)`` source, computed with a halo."""
    shape = image.shape[-3:]
    halo = halo_of(spacing)
    outer = tuple(slice(max(r.start - h, 0), min(r.stop + h, n)) for r, h, n in zip(region, halo, shape))
    block = normalization.apply(np.asarray(image[(slice(None),) + outer]))
    inner = tuple(slice(r.start - o.start, r.stop - o.start) for r, o in zip(region, outer))
    return image_features(block, spacing)[(slice(None),) + inner], inner


def blocks(shape, block=_BLOCK) -> list[tuple[slice, slice, slice]]:
    """Regions tiling a ``(Z, Y, X)`` volume, z-major so they stream slab by slab."""
    ranges = [range(0, n, b) for n, b in zip(shape, block)]
    return [tuple(slice(s, min(s + b, n)) for s, b, n in zip(start, block, shape))
            for start in itertools.product(*ranges)]


def fit_forest(image, index: np.ndarray, normalization: Normalization, *, spacing=None,
               n_trees: int = 100, seed: int = 0, n_jobs: int = -1) -> Forest:
    """Fit a random forest on the annotated voxels.

    Args:
        image: ``(C, Z, Y, X)`` array or lazy source (only blocks with annotations are read).
        index: ``(Z, Y, X)`` class index + 1 where annotated, 0 elsewhere (negative values,
            held-out voxels, count as annotated).
        normalization: the intensity normalisation the network uses.
        spacing: ``(z, y, x)`` voxel size, or None for isotropic.
        n_trees: trees in the forest.
        seed: fixes the subsampling and the forest.
    """
    spacing = tuple(float(s) for s in (spacing or (1.0, 1.0, 1.0)))
    classes = np.abs(np.asarray(index))
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for region in blocks(classes.shape):
        labels = classes[region]
        if not labels.any():
            continue
        feats, _ = _region_features(image, region, spacing, normalization)
        where = labels > 0
        xs.append(feats[:, where].T)
        ys.append(labels[where] - 1)
    x, y = np.concatenate(xs), np.concatenate(ys)
    keep = np.concatenate([_subsample(np.flatnonzero(y == k), rng) for k in np.unique(y)])
    x, y = np.ascontiguousarray(x[keep], dtype=np.float32), y[keep]
    seeds = rng.integers(2**31 - 1, size=(n_trees, 2))
    trees = _in_threads(lambda group: [_fit_tree(x, y, s) for s in group], list(seeds),
                        None if n_jobs in (None, -1) else n_jobs)
    return Forest([t for part in trees for t in part], normalization, spacing, len(np.unique(y)))


def _fit_tree(x: np.ndarray, y: np.ndarray, seeds: np.ndarray):
    """One tree of a random forest: a bootstrap sample (as weights, the way scikit-learn's
    forest draws it) and a random subset of sqrt(F) features at every split."""
    from sklearn.tree import DecisionTreeClassifier

    counts = np.bincount(np.random.default_rng(seeds[0]).integers(0, len(y), len(y)),
                         minlength=len(y))
    tree = DecisionTreeClassifier(max_features="sqrt", random_state=int(seeds[1]))
    return tree.fit(x, y, sample_weight=counts.astype(np.float64), check_input=True)


def _subsample(indices: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if len(indices) <= _MAX_PER_CLASS:
        return indices
    return rng.choice(indices, _MAX_PER_CLASS, replace=False)


@dataclass(frozen=True)
class ForestRegion:
    """Probabilities ``(K, z, y, x)`` of one region of the volume."""

    slices: tuple[slice, slice, slice]
    probabilities: np.ndarray
    regions_done: int
    regions_total: int


def iter_forest_predict(forest: Forest, image, block=_BLOCK) -> Iterator[ForestRegion]:
    """Segment a ``(C, Z, Y, X)`` source block by block, yielding each block as it is done."""
    regions = blocks(image.shape[-3:], block)
    for i, region in enumerate(regions):
        feats, _ = _region_features(image, region, forest.spacing, forest.normalization)
        yield ForestRegion(region, forest.probabilities(feats), i + 1, len(regions))


def predict_region(forest: Forest, image, region: tuple[slice, slice, slice]) -> np.ndarray:
    """``(K, z, y, x)`` float32 probabilities of ``region`` of a ``(C, Z, Y, X)`` source, its
    features computed with the context they need read from around the region."""
    feats, _ = _region_features(image, region, forest.spacing, forest.normalization)
    return forest.probabilities(feats)


def forest_predict(forest: Forest, image) -> np.ndarray:
    """``(K, Z, Y, X)`` float32 probabilities of a whole ``(C, Z, Y, X)`` source."""
    out = np.empty((forest.n_classes,) + tuple(image.shape[-3:]), np.float32)
    for r in iter_forest_predict(forest, image):
        out[(slice(None),) + r.slices] = r.probabilities
    return out
