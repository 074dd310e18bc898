"""Segmentation quality against a dense ground truth."""

from __future__ import annotations

import numpy as np


def dice_scores(prediction: np.ndarray, truth: np.ndarray, class_values) -> list[float]:
    """Dice of each class value between two ``(Z, Y, X)`` label volumes (NaN if absent in both)."""
    out = []
    for v in class_values:
        p, t = prediction == v, truth == v
        denom = int(p.sum()) + int(t.sum())
        out.append(float("nan") if denom == 0 else 2.0 * int((p & t).sum()) / denom)
    return out
