"""How unsure a prediction is, voxel by voxel: where the next strokes help most.

The map is the normalised entropy of the class probabilities, ``H(p) / log K``: 0 where one
class has probability 1, 1 where all K classes are equally likely. Entropy rather than the margin
between the two most likely classes (``1 - (p1 - p2)``) because it reads every class: with three or
more classes, a voxel torn between three is less sure than one torn between two, which the margin
does not see. Dividing by ``log K`` puts models with any number of classes on the same 0 to 1
scale. For two classes both measures rank voxels alike.

Each voxel depends only on its own probabilities, so any region can be computed on its own (a
z-slab as it streams out of the sliding window, a chunk of a file) and the pieces tile the map of
the whole volume exactly.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

__all__ = ["uncertainty_map"]

_TINY = np.finfo(np.float32).tiny


def uncertainty_map(probabilities: np.ndarray) -> np.ndarray:
    """Normalised entropy of class probabilities: 0 = sure, 1 = all classes equally likely.

    Args:
        probabilities: ``(K, Z, Y, X)`` probabilities summing to 1 over K (K >= 2), or
            ``(1, Z, Y, X)``: the foreground probability p of a one-output (sigmoid) model, read
            as the two classes ``1 - p`` and ``p``. Any region of a volume works alike.

    Returns:
        ``(Z, Y, X)`` float32 in ``[0, 1]``; 1 = least sure.

    Raises:
        ValueError: ``probabilities`` is not 4D or has no class axis.
    """
    probs = np.asarray(probabilities)
    if probs.ndim != 4 or probs.shape[0] < 1:
        raise ValueError("Expected class probabilities (K, Z, Y, X) with K >= 1, got shape "
                         f"{probs.shape}.")
    entropy = np.zeros(probs.shape[1:], np.float32)
    for pk in _classes(probs):  # one class at a time: no (K, Z, Y, X) temporary
        entropy -= pk * np.log(np.maximum(pk, _TINY))  # p log p -> 0 as p -> 0
    n_classes = max(probs.shape[0], 2)
    entropy /= np.float32(np.log(n_classes))
    return np.clip(entropy, 0.0, 1.0, out=entropy)


def _classes(probs: np.ndarray) -> Iterator[np.ndarray]:
    """The probability of each class ``(Z, Y, X)`` float32 in ``[0, 1]``, one at a time; a single
    sigmoid output p gives ``p`` and ``1 - p``."""
    if probs.shape[0] == 1:
        p = np.clip(np.asarray(probs[0], np.float32), 0.0, 1.0)
        yield p
        yield 1.0 - p
        return
    for pk in probs:
        yield np.clip(np.asarray(pk, np.float32), 0.0, 1.0)
