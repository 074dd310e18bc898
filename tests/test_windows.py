"""Window geometry: starts, the windows of a volume, padding and blending weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_seg3d.engine.prediction.blocks import plan_blocks
from napari_seg3d.engine.prediction.windows import (
    constant_weights,
    gaussian_weights,
    pad_for_window,
    padded_shape,
    window_starts,
)


def window_positions(shape, patch, overlap):
    """All windows of a volume: those of its one block (no block shape)."""
    (block,) = plan_blocks(shape, patch, overlap, None)
    return block.windows


@pytest.mark.parametrize(
    ("size", "patch", "overlap", "expected"),
    [
        (10, 4, 0.5, [0, 2, 4, 6]),
        (10, 4, 0.0, [0, 4, 6]),
        (8, 4, 0.0, [0, 4]),
        (8, 4, 0.5, [0, 2, 4]),
        (4, 4, 0.5, [0]),
        (3, 4, 0.5, [0]),
        (1, 1, 0.0, [0]),
        (5, 1, 0.0, [0, 1, 2, 3, 4]),
        (7, 4, 0.99, [0, 1, 2, 3]),
        (35, 16, 0.25, [0, 12, 19]),
    ],
)
def test_window_starts_known_answers(size, patch, overlap, expected):
    assert window_starts(size, patch, overlap) == expected


@pytest.mark.parametrize("size", [1, 5, 16, 17, 33, 100])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.75])
def test_window_starts_cover_the_axis(size, overlap):
    patch = 16
    starts = window_starts(size, patch, overlap)
    covered = np.zeros(max(size, patch), bool)
    for s in starts:
        covered[s:s + patch] = True
    assert covered.all()
    assert starts == sorted(set(starts))
    assert starts[-1] == max(size, patch) - patch


@pytest.mark.parametrize("overlap", [-0.1, 1.0, 1.5])
def test_window_starts_rejects_bad_overlap(overlap):
    with pytest.raises(ValueError, match="overlap"):
        window_starts(10, 4, overlap)


def test_window_positions_known_answer():
    windows = window_positions((6, 3, 4), (4, 4, 4), 0.5)
    assert windows == [
        (slice(0, 4), slice(0, 4), slice(0, 4)),
        (slice(2, 6), slice(0, 4), slice(0, 4)),
    ]


def test_window_positions_are_z_major_and_cover_the_padded_volume():
    shape, patch = (9, 2, 11), (4, 3, 5)
    windows = window_positions(shape, patch, 0.5)
    starts = [tuple(s.start for s in w) for w in windows]
    assert starts == sorted(starts)
    full = padded_shape(shape, patch)
    assert full == (9, 3, 11)
    hits = np.zeros(full, int)
    for w in windows:
        assert tuple(s.stop - s.start for s in w) == patch
        hits[w] += 1
    assert hits.min() >= 1
    assert len(windows) == len(window_starts(9, 4, 0.5)) * 1 * len(window_starts(11, 5, 0.5))


def test_padded_shape_rejects_bad_patch():
    with pytest.raises(ValueError, match="patch_size"):
        padded_shape((4, 4, 4), (4, 0, 4))
    with pytest.raises(ValueError, match="patch_size"):
        padded_shape((4, 4, 4), (4, 4))


@pytest.mark.parametrize(
    "shape", [(3, 5, 6), (2, 3, 5, 6), (1, 1, 1), (1, 8, 9, 10), (2, 1, 7, 2)]
)
def test_padding_keeps_the_volume_at_the_start(shape):
    volume = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    patch = (4, 8, 4)
    padded, pad_width = pad_for_window(volume, patch)
    assert len(pad_width) == len(shape)
    assert all(before == 0 for before, _ in pad_width)
    assert tuple(padded.shape[:-3]) == shape[:-3]
    assert tuple(padded.shape[-3:]) == padded_shape(shape[-3:], patch)
    np.testing.assert_array_equal(padded[(Ellipsis, *(slice(0, n) for n in shape[-3:]))], volume)


def test_padding_mirrors_without_repeating_the_edge():
    array = np.array([[[1.0, 2.0, 3.0]]])
    reflect, _ = pad_for_window(array, (1, 1, 5))
    np.testing.assert_array_equal(reflect[0, 0], [1, 2, 3, 2, 1])
    folded, _ = pad_for_window(np.arange(3.0).reshape(1, 1, 3), (1, 1, 9))  # longer than the axis
    np.testing.assert_array_equal(folded[0, 0], [0, 1, 2, 1, 0, 1, 2, 1, 0])


def test_no_padding_returns_the_volume_itself():
    array = np.zeros((4, 4, 4), np.float32)
    padded, pad_width = pad_for_window(array, (4, 2, 3))
    assert padded is array
    assert pad_width == ((0, 0), (0, 0), (0, 0))


def test_pad_rejects_flat_arrays():
    with pytest.raises(ValueError, match=r"\(\.\.\., Z, Y, X\)"):
        pad_for_window(np.zeros((2, 2)), (4, 4, 4))


@pytest.mark.parametrize("patch", [(8, 8, 8), (5, 16, 7), (1, 4, 4), (2, 3, 1)])
def test_gaussian_weights(patch):
    weights = gaussian_weights(patch)
    assert weights.shape == patch
    assert weights.dtype == torch.float32
    assert torch.all(weights > 0)
    assert weights.min() >= 1e-3 - 1e-9
    assert weights.max().item() == pytest.approx(1.0)
    for axis in range(3):
        torch.testing.assert_close(weights, weights.flip(axis), rtol=0, atol=0)


def test_gaussian_weights_peak_at_the_centre_and_clamp_the_corners():
    weights = gaussian_weights((9, 9, 9), sigma_scale=0.125, min_weight=1e-2)
    assert weights[4, 4, 4] == 1.0
    assert weights[0, 0, 0] == pytest.approx(1e-2)
    assert weights[4, 4, 0] < weights[4, 4, 2] < weights[4, 4, 4]


def test_gaussian_weights_dtype_and_device():
    weights = gaussian_weights((4, 4, 4), dtype=torch.float64, device="cpu")
    assert weights.dtype == torch.float64
    assert weights.device.type == "cpu"


def test_constant_weights():
    weights = constant_weights((2, 3, 4))
    assert weights.shape == (2, 3, 4)
    assert torch.all(weights == 1)
