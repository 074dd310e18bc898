"""A fast classical pixel classifier, ilastik-style: multiscale filter features and a random forest.

It fits in about a second, so it gives the first segmentation right after *Train* is pressed
while the network is still learning. The fit reads only tiles around the stroke voxels it uses
(see :mod:`.forest_samples`); prediction computes features block by block with a halo, so
memory follows the block, not the volume. The features are :func:`.features.fast_features`.
The forest lives only in memory: model files hold the network alone.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..normalization import Normalization
from .features import (  # noqa: F401 - the features' names, where they always were
    SIGMAS,
    fast_features,
    fast_halo,
    halo_of,
    image_features,
    symmetric_eigenvalues,
)
from .forest_samples import StrokeSamples, read_block, sample_features, stroke_samples

_MAX_PER_CLASS = 20_000  # training voxels per class; more adds time, not accuracy
_BLOCK = (64, 128, 128)
_CHUNK = 1 << 17  # voxels the trees see at a time: arrays stay small (fresh large ones fault)


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
    n_classes: int  # classes the strokes it was fit on hold (the rows of its probabilities)
    classes: tuple[int, ...] = ()  # their class indices (default ``0 .. n_classes - 1``)

    def __post_init__(self) -> None:
        if not self.classes:
            self.classes = tuple(range(self.n_classes))

    def probabilities(self, features: np.ndarray, threads: int | None = None) -> np.ndarray:
        """``(K, ...)`` float32 class probabilities from ``(F, ...)`` features."""
        flat = features.reshape(features.shape[0], -1)
        out = np.empty((self.n_classes, flat.shape[1]), np.float32)
        for start in range(0, flat.shape[1], _CHUNK):
            f = np.ascontiguousarray(flat[:, start:start + _CHUNK].T, dtype=np.float32)
            parts = _in_threads(lambda group, f=f: sum(t.predict_proba(f, check_input=False)
                                                        for t in group), self.trees, threads)
            out[:, start:start + len(f)] = (sum(parts) / len(self.trees)).T
        return out.reshape((self.n_classes,) + features.shape[1:])


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


def region_features(image, region, spacing, normalization) -> np.ndarray:
    """``(F, z, y, x)`` features of ``region`` (three slices) of a ``(C, Z, Y, X)`` source,
    read with the halo they need (the volume's faces mirrored)."""
    halo = fast_halo(spacing)
    block = read_block(image, region, halo, image.shape[-3:], normalization)
    core = tuple(slice(h, h + r.stop - r.start) for r, h in zip(region, halo))
    return fast_features(block, core, spacing)


def blocks(shape, block=_BLOCK) -> list[tuple[slice, slice, slice]]:
    """Regions tiling a ``(Z, Y, X)`` volume, z-major so they stream slab by slab."""
    ranges = [range(0, n, b) for n, b in zip(shape, block)]
    return [tuple(slice(s, min(s + b, n)) for s, b, n in zip(start, block, shape))
            for start in itertools.product(*ranges)]


def fit_forest(image, index: np.ndarray, normalization: Normalization, *, spacing=None,
               n_trees: int = 100, seed: int = 0, n_jobs: int = -1) -> Forest:
    """Fit a random forest on the annotated voxels (at most ``_MAX_PER_CLASS`` of each class,
    drawn at random; only the image around them is read).

    Args:
        image: ``(C, Z, Y, X)`` array or lazy source.
        index: ``(Z, Y, X)`` class index + 1 where annotated, 0 elsewhere (negative values,
            held-out voxels, count as annotated).
        normalization: the intensity normalisation the network uses.
        spacing: ``(z, y, x)`` voxel size, or None for isotropic.
        n_trees: trees in the forest.
        seed: fixes the subsampling and the forest.
    """
    classes = np.abs(np.asarray(index))
    values = tuple(range(1, int(classes.max()) + 1))
    samples = stroke_samples(classes, values, _MAX_PER_CLASS, seed=seed)
    return fit_samples(image, samples, normalization, spacing=spacing, n_trees=n_trees,
                       seed=seed, threads=None if n_jobs in (None, -1) else n_jobs)


def fit_samples(image, samples: StrokeSamples, normalization: Normalization, *, spacing=None,
                n_trees: int = 100, seed: int = 0, threads: int | None = None) -> Forest:
    """Fit a random forest on the features of ``samples`` (see :mod:`.forest_samples`).

    Args:
        image: ``(C, Z, Y, X)`` array or lazy source (only tiles around the samples are read).
        samples: the stroke voxels and their class indices.
        normalization: the intensity normalisation applied before the features.
        spacing: ``(z, y, x)`` voxel size, or None for isotropic.
        n_trees: trees in the forest.
        seed: fixes the forest.
        threads: threads fitting trees (None: torch's current count).
    """
    spacing = tuple(float(s) for s in (spacing or (1.0, 1.0, 1.0)))
    present = np.unique(samples.classes)
    if len(present) < 2:
        raise ValueError("The random forest needs strokes of at least two classes.")
    x = np.ascontiguousarray(sample_features(image, samples, normalization, spacing))
    y = samples.classes
    seeds = np.random.default_rng(seed).integers(2**31 - 1, size=(n_trees, 2))
    trees = _in_threads(lambda group: [_fit_tree(x, y, s) for s in group], list(seeds), threads)
    return Forest([t for part in trees for t in part], normalization, spacing, len(present),
                  tuple(int(c) for c in present))


def _fit_tree(x: np.ndarray, y: np.ndarray, seeds: np.ndarray):
    """One tree of a random forest: a bootstrap sample (as weights, the way scikit-learn's
    forest draws it) and a random subset of sqrt(F) features at every split."""
    from sklearn.tree import DecisionTreeClassifier

    counts = np.bincount(np.random.default_rng(seeds[0]).integers(0, len(y), len(y)),
                         minlength=len(y))
    tree = DecisionTreeClassifier(max_features="sqrt", random_state=int(seeds[1]))
    return tree.fit(x, y, sample_weight=counts.astype(np.float64), check_input=False)


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
        feats = region_features(image, region, forest.spacing, forest.normalization)
        yield ForestRegion(region, forest.probabilities(feats), i + 1, len(regions))


def predict_region(forest: Forest, image, region: tuple[slice, slice, slice]) -> np.ndarray:
    """``(K, z, y, x)`` float32 probabilities of ``region`` of a ``(C, Z, Y, X)`` source, its
    features computed with the context they need read from around the region."""
    feats = region_features(image, region, forest.spacing, forest.normalization)
    return forest.probabilities(feats)


def forest_predict(forest: Forest, image) -> np.ndarray:
    """``(K, Z, Y, X)`` float32 probabilities of a whole ``(C, Z, Y, X)`` source."""
    out = np.empty((forest.n_classes,) + tuple(image.shape[-3:]), np.float32)
    for r in iter_forest_predict(forest, image):
        out[(slice(None),) + r.slices] = r.probabilities
    return out
