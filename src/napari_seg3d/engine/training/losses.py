"""Masked losses: voxels with ``mask == False`` (label 0, *not annotated*) touch neither the loss
nor its gradient. Masking happens after the activation (softmax / sigmoid), as in nnU-Net."""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..config import LOSSES
from ..metrics import dice_from_counts

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
    return _soft_dice_loss(probs * m, onehot * m, (0,) + tuple(range(2, logits.ndim)))


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
    return _soft_dice_loss(torch.sigmoid(logits[:, 0].float()) * m, target.float() * m)


def _soft_dice_loss(p: torch.Tensor, g: torch.Tensor, dims: tuple[int, ...] | None = None,
                    ) -> torch.Tensor:
    """One minus the soft Dice ``(2 sum(p g) + 1) / (sum(p) + sum(g) + 1)`` of probabilities
    ``p`` and targets ``g`` (masked already), summed over ``dims`` (None: all) and averaged over
    what is left (the classes)."""
    def total(t: torch.Tensor) -> torch.Tensor:
        return t.sum() if dims is None else t.sum(dims)

    dice = (2.0 * total(p * g) + _SMOOTH) / (total(p) + total(g) + _SMOOTH)
    return 1.0 - dice.mean()


#: The terms a loss name is made of (``"ce_dice"``: cross-entropy + soft Dice); in a binary
#: (``bce``) loss, ``dice`` is the Dice of the one sigmoid channel.
_TERMS: dict[str, LossFn] = {"ce": masked_cross_entropy, "focal": masked_focal,
                             "dice": masked_soft_dice, "bce": masked_bce}


def _compose(name: str) -> LossFn:
    """The loss ``name`` of :data:`LOSSES`: the sum of its ``_``-separated terms."""
    binary = is_binary_loss(name)
    terms = [masked_binary_dice if binary and t == "dice" else _TERMS[t] for t in name.split("_")]
    if len(terms) == 1:
        return terms[0]

    def loss(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return functools.reduce(operator.add, (term(logits, target, mask) for term in terms))

    loss.__name__ = loss.__qualname__ = f"masked_{name}"
    return loss


def is_binary_loss(name: str) -> bool:
    """True for losses on one sigmoid output channel (BCE family)."""
    return name.startswith("bce")


_LOSS_FNS: dict[str, LossFn] = {name: _compose(name) for name in LOSSES}


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
        out.append(dice_from_counts(int((p & g).sum()), int(p.sum()), int(g.sum())))
    return out
