"""Segmentation quality: the hard Dice of each class.

:func:`dice_from_counts` is the one formula; :func:`dice_scores` applies it to two label volumes
(numpy), :func:`.training.losses.dice_per_class` to the held-out annotations (torch).
"""

from __future__ import annotations

import numpy as np


def dice_from_counts(overlap: int, predicted: int, true: int) -> float:
    """``2 |P & T| / (|P| + |T|)`` from the voxel counts; NaN when both sets are empty."""
    denom = predicted + true
    return float("nan") if denom == 0 else 2.0 * overlap / denom


def dice_scores(prediction: np.ndarray, truth: np.ndarray, class_values) -> list[float]:
    """Dice of each class value between two ``(Z, Y, X)`` label volumes (NaN if absent in both)."""
    out = []
    for v in class_values:
        p, t = prediction == v, truth == v
        out.append(dice_from_counts(int((p & t).sum()), int(p.sum()), int(t.sum())))
    return out
