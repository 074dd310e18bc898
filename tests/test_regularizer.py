"""The edge-aware smoothness loss: cheap where labels follow edges, costly where they cut regions."""

import numpy as np
import pytest
import torch

from napari_seg3d.engine.training.regularizer import edge_aware_smoothness, neighbour_offsets


def _two_halves(axis: int, shape=(8, 10, 12)) -> torch.Tensor:
    """``(1, 1, *shape)``: 0 in the first half along ``axis``, 1 in the second."""
    x = np.zeros(shape, np.float32)
    index = [slice(None)] * 3
    index[axis] = slice(shape[axis] // 2, None)
    x[tuple(index)] = 1
    return torch.from_numpy(x)[None, None]


def _probs(labels: torch.Tensor) -> torch.Tensor:
    """Hard two-class probabilities ``(1, 2, ...)`` from a ``(1, 1, ...)`` 0/1 map."""
    return torch.cat([1 - labels, labels], 1)


@pytest.mark.parametrize("radius, count", [(1, 13), (2, 62)])
def test_half_of_the_neighbourhood(radius, count):
    offsets = neighbour_offsets(radius)
    assert len(offsets) == count and (0, 0, 0) not in offsets
    assert not any(tuple(-o for o in off) in offsets for off in offsets)


def test_labels_that_follow_edges_cost_little_and_cutting_a_region_costs_more():
    edge_image = _two_halves(2)
    flat_image = torch.full_like(edge_image, 0.5)
    labels = _probs(_two_halves(2))
    along_edge = float(edge_aware_smoothness(labels, edge_image, presmooth=0))
    across_flat = float(edge_aware_smoothness(labels, flat_image, presmooth=0))
    assert along_edge < 0.01 < across_flat
    uniform = torch.cat([torch.ones_like(edge_image), torch.zeros_like(edge_image)], 1)
    assert float(edge_aware_smoothness(uniform, flat_image)) == pytest.approx(0, abs=1e-6)


def test_spacing_weighs_neighbours_by_physical_distance():
    flat = torch.full((1, 1, 8, 10, 12), 0.5)
    cut_z = _probs(_two_halves(0, (8, 10, 12)))
    iso = float(edge_aware_smoothness(cut_z, flat))
    aniso = float(edge_aware_smoothness(cut_z, flat, spacing=(3.0, 1.0, 1.0)))
    assert aniso < iso  # z neighbours are 3x farther: a cut between slices costs less


def test_gradient_reaches_the_logits():
    logits = torch.randn(2, 3, 6, 8, 8, requires_grad=True)
    image = torch.rand(2, 1, 6, 8, 8)
    loss = edge_aware_smoothness(torch.softmax(logits, 1), image)
    loss.backward()
    assert 0 <= loss.item() <= 1 and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
