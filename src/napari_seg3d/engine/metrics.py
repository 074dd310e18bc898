"""Segmentation quality: the hard Dice of each class, and the object-level F1 of instances
matched by IoU.

:func:`dice_from_counts` is the one formula; :func:`dice_scores` applies it to two label volumes
(numpy), :func:`.training.losses.dice_per_class` to the held-out annotations (torch).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def dice_from_counts(overlap: int, predicted: int, true: int) -> float:
    """``2 |P & T| / (|P| + |T|)`` from the voxel counts; NaN when both sets are empty."""
    denom = predicted + true
    return float("nan") if denom == 0 else 2.0 * overlap / denom


def dice_of_regions(regions, truth, class_values) -> list[float]:
    """Dice of each class value over a volume predicted region by region: ``regions`` yields
    ``(slices, labels)`` pairs (or records with ``.slices`` and ``.labels``) that tile the
    volume, ``truth`` is any array-like read one region at a time, so neither volume needs to
    fit in memory. The same figures as :func:`dice_scores` of the whole volumes."""
    values = list(class_values)
    counts = np.zeros((len(values), 3), np.int64)  # overlap, predicted, true
    for region in regions:
        slices, labels = (region.slices, region.labels) if hasattr(region, "slices") else region
        t = np.asarray(truth[tuple(slices)])
        for i, v in enumerate(values):
            p, q = labels == v, t == v
            counts[i] += (int((p & q).sum()), int(p.sum()), int(q.sum()))
    return [dice_from_counts(*map(int, c)) for c in counts]


def dice_scores(prediction: np.ndarray, truth: np.ndarray, class_values) -> list[float]:
    """Dice of each class value between two ``(Z, Y, X)`` label volumes (NaN if absent in both)."""
    out = []
    for v in class_values:
        p, t = prediction == v, truth == v
        out.append(dice_from_counts(int((p & t).sum()), int(p.sum()), int(t.sum())))
    return out


@dataclass(frozen=True)
class InstanceScores:
    """Object-level agreement of an instance map with the instance truth.

    Attributes:
        matched: objects of the prediction matched to a true object (true positives).
        predicted: objects in the prediction.
        true: objects in the truth.
        precision: ``matched / predicted`` (1 when both are 0).
        recall: ``matched / true`` (1 when both are 0).
        f1: ``2 matched / (predicted + true)`` (1 when both are 0).
        mean_iou: mean IoU of the matched pairs (NaN when none).
    """

    matched: int
    predicted: int
    true: int
    precision: float
    recall: float
    f1: float
    mean_iou: float


def instance_scores(prediction: np.ndarray, truth: np.ndarray,
                    iou_threshold: float = 0.5) -> InstanceScores:
    """Match predicted objects to true objects by IoU and score the matching.

    A predicted and a true object match when their IoU (intersection over union of their
    voxels) is above ``iou_threshold``; pairs are taken greedily, highest IoU first, each object
    at most once. Above 0.5 an object can overlap only one other by more than half, so the
    greedy matching is the best one.

    Args:
        prediction: ``(Z, Y, X)`` instance ids, 0 = background (any integer type, ids need not be
            consecutive).
        truth: the true instance ids, same shape.
        iou_threshold: the least IoU of a match (exclusive).

    Returns:
        The :class:`InstanceScores`.
    """
    prediction, truth = np.asarray(prediction).ravel(), np.asarray(truth).ravel()
    if prediction.shape != truth.shape:
        raise ValueError(f"The prediction {prediction.shape} and the truth {truth.shape} differ "
                         "in size.")
    pred_ids, pred = np.unique(prediction, return_inverse=True)
    true_ids, true = np.unique(truth, return_inverse=True)
    pred_zero, true_zero = pred_ids[0] == 0, true_ids[0] == 0  # index 0 is background if present
    n_pred, n_true = int(len(pred_ids) - pred_zero), int(len(true_ids) - true_zero)
    pred_size, true_size = np.bincount(pred), np.bincount(true)
    both = (prediction != 0) & (truth != 0)
    pairs, inter = np.unique(pred[both].astype(np.int64) * len(true_ids) + true[both],
                             return_counts=True)
    p, t = pairs // len(true_ids), pairs % len(true_ids)
    iou = inter / (pred_size[p] + true_size[t] - inter)
    used_p, used_t, ious = set(), set(), []
    for k in np.argsort(-iou, kind="stable"):
        if iou[k] <= iou_threshold:
            break
        if p[k] not in used_p and t[k] not in used_t:
            used_p.add(p[k])
            used_t.add(t[k])
            ious.append(float(iou[k]))
    matched = len(ious)
    return InstanceScores(
        matched=matched, predicted=n_pred, true=n_true,
        precision=matched / n_pred if n_pred else 1.0, recall=matched / n_true if n_true else 1.0,
        f1=2 * matched / (n_pred + n_true) if n_pred + n_true else 1.0,
        mean_iou=float(np.mean(ious)) if ious else float("nan"))
