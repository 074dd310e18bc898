"""Masked losses: unannotated voxels touch neither the loss nor its gradient; known answers."""

from __future__ import annotations

import math

import pytest
import torch

from napari_seg3d.engine.config import LOSSES
from napari_seg3d.engine.training.losses import dice_per_class, is_binary_loss, make_loss

SHAPE = (2, 3, 5, 4)  # (B, z, y, x), odd on purpose
K = 3  # classes of the softmax losses


def _case(name: str, seed: int = 0):
    """Logits, target and mask for ``name``: one sigmoid channel for the binary losses.

    The target holds out-of-range garbage where the mask is False, which the loss must ignore.
    """
    g = torch.Generator().manual_seed(seed)
    k = 2 if is_binary_loss(name) else K
    channels = 1 if is_binary_loss(name) else K
    logits = torch.randn((SHAPE[0], channels) + SHAPE[1:], generator=g)
    target = torch.randint(0, k, SHAPE, generator=g)
    mask = torch.rand(SHAPE, generator=g) < 0.4
    target = torch.where(mask, target, torch.full_like(target, 99))
    return logits, target, mask, k


def _loss_and_grad(name, logits, target, mask):
    logits = logits.clone().requires_grad_(True)
    loss = make_loss(name)(logits, target, mask)
    loss.backward()
    return loss.detach(), logits.grad


def _toward_target(target: torch.Tensor, k: int, binary: bool, strength: float) -> torch.Tensor:
    """Logits that favour the target class more as ``strength`` grows (0: no preference)."""
    t = target.clamp(0, k - 1)
    if binary:
        return (strength * (2.0 * t - 1.0)).unsqueeze(1).float()
    onehot = torch.nn.functional.one_hot(t, k).movedim(-1, 1).float()
    return strength * (2.0 * onehot - 1.0)


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("fill", ["random", "huge", "zero"])
def test_unannotated_voxels_change_neither_loss_nor_gradient(name, fill):
    logits, target, mask, _ = _case(name)
    loss, grad = _loss_and_grad(name, logits, target, mask)
    noise = {"random": 5.0 * torch.randn(logits.shape, generator=torch.Generator().manual_seed(1)),
             "huge": torch.full(logits.shape, -1e4),
             "zero": torch.zeros(logits.shape)}[fill]
    changed = torch.where(mask.unsqueeze(1), logits, noise)
    assert not torch.equal(changed, logits)
    loss2, grad2 = _loss_and_grad(name, changed, target, mask)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss2, loss, rtol=0, atol=1e-6)
    torch.testing.assert_close(grad2, grad, rtol=0, atol=1e-7)
    assert torch.count_nonzero(grad * ~mask.unsqueeze(1)) == 0
    assert torch.count_nonzero(grad * mask.unsqueeze(1)) > 0


@pytest.mark.parametrize("name", LOSSES)
def test_batch_without_annotations_gives_a_finite_zero_with_a_graph(name):
    logits, target, _, _ = _case(name)
    logits.requires_grad_(True)
    loss = make_loss(name)(logits, target, torch.zeros(SHAPE, dtype=torch.bool))
    assert loss.requires_grad and loss.ndim == 0
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert logits.grad is not None and torch.count_nonzero(logits.grad) == 0


@pytest.mark.parametrize("name", LOSSES)
def test_loss_decreases_as_logits_move_toward_the_target(name):
    _, target, mask, k = _case(name)
    binary = is_binary_loss(name)
    values = [float(make_loss(name)(_toward_target(target, k, binary, s), target, mask))
              for s in (0.0, 0.5, 1.0, 2.0, 4.0, 30.0)]
    assert all(a > b for a, b in zip(values, values[1:])), values
    assert values[-1] == pytest.approx(0.0, abs=1e-4)  # a confident, correct prediction


@pytest.mark.parametrize(("name", "expected"), [
    ("ce", math.log(K)),  # uniform softmax: -log(1/K) per voxel
    ("bce", math.log(2)),  # sigmoid(0) = 0.5
    ("focal", (1 - 1 / K) ** 2 * math.log(K)),  # cross-entropy scaled by (1 - p)^2
])
def test_cross_entropy_of_zero_logits(name, expected):
    logits, target, mask, _ = _case(name)
    assert float(make_loss(name)(torch.zeros_like(logits), target, mask)) == pytest.approx(expected)


def test_dice_per_class_known_answers():
    pred = torch.tensor([0, 0, 1, 1, 2, 2, 0])
    target = torch.tensor([0, 1, 1, 1, 2, 0, 2])
    mask = torch.tensor([True, True, True, True, True, False, False])
    # class 0: pred 2, true 1, both 1 -> 2/3; class 1: pred 2, true 3, both 2 -> 4/5;
    # class 2: 1, 1, 1 -> 1; class 3: absent from both -> NaN.
    d = dice_per_class(pred, target, mask, 4)
    assert d[:3] == pytest.approx([2 / 3, 4 / 5, 1.0])
    assert math.isnan(d[3])
    assert dice_per_class(pred, target, torch.ones_like(mask), 3)[2] == pytest.approx(2 / 4)


def test_make_loss_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="Unknown loss 'lovasz'") as info:
        make_loss("lovasz")
    for name in LOSSES:
        assert name in str(info.value)


@pytest.mark.parametrize("name", LOSSES)
def test_every_listed_loss_is_made(name):
    assert callable(make_loss(name))
    assert is_binary_loss(name) == name.startswith("bce")
