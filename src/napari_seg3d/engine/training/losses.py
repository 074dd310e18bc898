"""Masked losses: voxels with ``mask == False`` (label 0, *not annotated*) touch neither the loss
nor its gradient. Masking happens after the activation (softmax / sigmoid), as in nnU-Net."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..config import LOSSES

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

_SMOOTH = 1.0


def _zero(logits: torch.Tensor) -> torch.Tensor:
    """A zero that keeps the graph, for batches without one annotated voxel."""
    return logits.sum() * 0.0


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over annotated voxels.

    Args:
        logits: ``(B, K, *spatial)`` raw network output.
        target: ``(B, *spatial)`` class indices in ``[0, K)`` (any value where ``mask`` is False).
        mask: ``(B, *spatial)`` bool, True where annotated.
    """
    n = mask.sum()
    if n == 0:
        return _zero(logits)
    ce = F.cross_entropy(logits.float(), target.long() * mask, reduction="none")
    return torch.where(mask, ce, torch.zeros_like(ce)).sum() / n


def masked_focal(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                 gamma: float = 2.0) -> torch.Tensor:
    """Focal loss (Lin et al. 2017) averaged over annotated voxels: cross-entropy scaled by
    ``(1 - p_true) ** gamma``, so voxels already right count little and hard ones (thin
    structures, borders) count more."""
    n = mask.sum()
    if n == 0:
        return _zero(logits)
    logp = torch.log_softmax(logits.float(), dim=1)
    logp_true = logp.gather(1, (target.long() * mask).unsqueeze(1)).squeeze(1)
    focal = -((1 - logp_true.exp()) ** gamma) * logp_true
    return torch.where(mask, focal, torch.zeros_like(focal)).sum() / n


def masked_soft_dice(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One minus the soft Dice averaged over classes, computed on annotated voxels only.

    The softmax is taken first and the mask applied to probabilities and one-hot targets after it,
    so unannotated voxels enter neither numerator nor denominator.
    """
    if mask.sum() == 0:
        return _zero(logits)
    k = logits.shape[1]
    probs = torch.softmax(logits.float(), dim=1)
    m = mask.unsqueeze(1).to(probs.dtype)
    onehot = F.one_hot(target.long() * mask, k).movedim(-1, 1).to(probs.dtype)
    dims = (0,) + tuple(range(2, logits.ndim))
    probs = probs * m
    onehot = onehot * m
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    return 1.0 - ((2.0 * inter + _SMOOTH) / (denom + _SMOOTH)).mean()


def masked_bce(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy on annotated voxels; ``logits`` is ``(B, 1, *spatial)``, target in {0, 1}."""
    n = mask.sum()
    if n == 0:
        return _zero(logits)
    bce = F.binary_cross_entropy_with_logits(
        logits[:, 0].float(), target.float(), reduction="none"
    )
    return torch.where(mask, bce, torch.zeros_like(bce)).sum() / n


def masked_binary_dice(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One minus the soft Dice of the foreground (sigmoid), on annotated voxels only."""
    if mask.sum() == 0:
        return _zero(logits)
    m = mask.float()
    p = torch.sigmoid(logits[:, 0].float()) * m
    g = target.float() * m
    return 1.0 - (2.0 * (p * g).sum() + _SMOOTH) / (p.sum() + g.sum() + _SMOOTH)


def _ce_dice(logits, target, mask):
    return masked_cross_entropy(logits, target, mask) + masked_soft_dice(logits, target, mask)


def _focal_dice(logits, target, mask):
    return masked_focal(logits, target, mask) + masked_soft_dice(logits, target, mask)


def _bce_dice(logits, target, mask):
    return masked_bce(logits, target, mask) + masked_binary_dice(logits, target, mask)


_LOSS_FNS: dict[str, LossFn] = {
    "ce_dice": _ce_dice,
    "ce": masked_cross_entropy,
    "dice": masked_soft_dice,
    "focal": masked_focal,
    "focal_dice": _focal_dice,
    "bce": masked_bce,
    "bce_dice": _bce_dice,
}


def is_binary_loss(name: str) -> bool:
    """True for losses on one sigmoid output channel (BCE family)."""
    return name.startswith("bce")


def make_loss(name: str) -> LossFn:
    """The masked loss called ``name`` (one of :data:`LOSSES`)."""
    if name not in _LOSS_FNS:
        raise ValueError(f"Unknown loss {name!r}; choose one of {', '.join(LOSSES)}.")
    return _LOSS_FNS[name]


def dice_per_class(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, k: int) -> list[float]:
    """Hard Dice of each class over annotated voxels; NaN for a class absent from both.

    Args:
        pred: ``(...)`` predicted class indices.
        target: ``(...)`` true class indices.
        mask: ``(...)`` bool, True where annotated.
        k: number of classes.
    """
    pred = pred[mask]
    target = target[mask]
    out = []
    for c in range(k):
        p, g = pred == c, target == c
        denom = int(p.sum() + g.sum())
        out.append(float("nan") if denom == 0 else 2.0 * float((p & g).sum()) / denom)
    return out
