"""A plausibility check of annotations before training: labels that look like an image or an
instance segmentation (one value per object) instead of a few painted classes.

Such labels train without error, but into a model with one class per grey value or per object
(the nuclei sample's image as labels made 250 classes, its instance image 51). The check only
warns: the CLI refuses until ``--allow-many-classes`` is given, the Train widget asks first.

The thresholds leave real annotations alone: brush strokes of up to 10 classes (sparse, thin),
and dense ground truths of a few classes (the sample's truth: values 1 and 2 everywhere).
"""

from __future__ import annotations

import numpy as np

from ..errors import AnnotationError

MANY_VALUES = 16  # more distinct values than this look like an image or instances
DENSE_VALUES = 10  # more than this with dense coverage or solid objects also do
DENSE_COVERAGE = 0.5  # fraction of voxels labelled that counts as dense
SOLID_FRACTION = 0.3  # fraction of labelled voxels whose 6 neighbours share their value
_SAMPLE = 100_000  # labelled voxels looked at for the solid fraction
_SLAB = 1 << 22  # voxels counted at a time


def labels_look_wrong(labels: np.ndarray) -> str | None:
    """Why ``labels`` look like an image or an instance segmentation rather than annotations.

    Args:
        labels: ``(Z, Y, X)`` annotations, 0 = not annotated, 1, 2, ... = classes.

    Returns:
        One sentence that names the number of values and the likely cause, or None when the
        labels look like annotations.
    """
    labels = np.asarray(labels)
    if labels.dtype.kind in "fc":
        finite = labels[np.isfinite(labels)]
        if finite.size and not np.array_equal(finite, np.round(finite)):
            return (f"The labels hold decimal values (dtype {labels.dtype}): they look like an "
                    "image, not annotations (0 = not annotated, 1, 2, ... = classes).")
        labels = np.nan_to_num(labels).astype(np.int64)
    count = distinct_nonzero(labels)
    if count <= DENSE_VALUES:
        return None
    coverage = float(np.count_nonzero(labels)) / max(labels.size, 1)
    solid = solid_fraction(labels)
    if count <= MANY_VALUES and coverage < DENSE_COVERAGE and solid < SOLID_FRACTION:
        return None
    cause = ("an instance segmentation (one value per object)" if solid >= SOLID_FRACTION
             else "an image")
    return (f"The labels hold {count} different values over {coverage:.0%} of the volume: they "
            f"look like {cause}, not annotations of a few classes, and would train a "
            f"{count}-class model.")


def refuse_implausible_labels(labels: np.ndarray, how_to_go_on: str) -> None:
    """Raise an :class:`AnnotationError` with :func:`labels_look_wrong`'s sentence and
    ``how_to_go_on`` (e.g. the option that trains anyway) if the labels look wrong; labels with
    decimals cannot be trained on at all, so their sentence says to save integers instead."""
    problem = labels_look_wrong(labels)
    if problem is not None:
        floats = np.asarray(labels).dtype.kind in "fc"
        raise AnnotationError(f"{problem} "
                              f"{'Save the annotations as integers.' if floats else how_to_go_on}")


def distinct_nonzero(labels: np.ndarray) -> int:
    """The number of distinct values other than 0 in integer (or bool) ``labels``, counted slab
    by slab along the first axis (memory stays small for large volumes)."""
    if labels.size == 0:
        return 0
    if labels.dtype == bool:
        labels = labels.view(np.uint8)
    small = labels.dtype.kind in "bu" and labels.dtype.itemsize <= 2
    seen = np.zeros(1 << (8 * labels.dtype.itemsize) if small else 0, bool)
    values: set[int] = set()
    step = max(1, _SLAB // max(labels[0].size, 1))
    for start in range(0, labels.shape[0], step):
        slab = labels[start:start + step].ravel()
        if not slab.any():  # most slabs of brush strokes: no value to look up
            continue
        painted = slab[slab != 0]  # few for strokes: a lookup of every voxel took 0.4 s at 10^8
        if small:
            seen[painted] = True
        else:
            values.update(np.unique(painted).tolist())
    return int(np.count_nonzero(seen[1:])) if small else len(values)


def solid_fraction(labels: np.ndarray, seed: int = 0) -> float:
    """The fraction of labelled voxels (up to ``_SAMPLE`` of them, drawn at random) whose six
    neighbours all hold the same value: near 0 for thin brush strokes and for the noisy grey
    values of an image, high for filled objects and dense regions."""
    rng = np.random.default_rng(seed)
    n_labelled = int(np.count_nonzero(labels))
    if n_labelled == 0 or labels.ndim == 0:
        return 0.0
    if n_labelled <= 10 * _SAMPLE:
        labelled = np.flatnonzero(labels)
    else:  # dense: draw voxels at random and keep the labelled ones
        drawn = rng.integers(0, labels.size, int(2 * _SAMPLE * labels.size / n_labelled))
        labelled = drawn[labels.flat[drawn] != 0]
    if labelled.size > _SAMPLE:
        labelled = rng.choice(labelled, _SAMPLE, replace=False)
    where = np.unravel_index(labelled, labels.shape)
    value = labels[where]
    same = np.ones(labelled.size, bool)
    for axis, n in enumerate(labels.shape):
        for step in (-1, 1):
            moved = where[axis] + step
            neighbour = list(where)
            neighbour[axis] = np.clip(moved, 0, n - 1)
            same &= (moved >= 0) & (moved < n) & (labels[tuple(neighbour)] == value)
    return float(same.mean())
