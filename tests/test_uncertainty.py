"""The uncertainty map: normalised entropy of the class probabilities."""

import numpy as np
import pytest

from napari_seg3d.engine import uncertainty_map


def _random_probabilities(k: int, shape=(5, 6, 7), seed=0) -> np.ndarray:
    logits = np.random.default_rng(seed).normal(0, 2, (k, *shape))
    e = np.exp(logits - logits.max(axis=0))
    return (e / e.sum(axis=0)).astype(np.float32)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_certain_is_zero_and_uniform_is_one(k):
    certain = np.zeros((k, 2, 3, 4), np.float32)
    certain[k - 1] = 1.0
    np.testing.assert_array_equal(uncertainty_map(certain), 0.0)
    uniform = np.full((k, 2, 3, 4), 1.0 / k, np.float32)
    np.testing.assert_allclose(uncertainty_map(uniform), 1.0, atol=1e-6)


def test_values_are_the_normalised_entropy():
    probs = np.array([0.7, 0.2, 0.1]).reshape(3, 1, 1, 1)
    expected = -(0.7 * np.log(0.7) + 0.2 * np.log(0.2) + 0.1 * np.log(0.1)) / np.log(3)
    np.testing.assert_allclose(uncertainty_map(probs), expected, rtol=1e-6)
    # three classes in doubt are less sure than two (the margin p1 - p2 would call them equal)
    two = np.array([0.4, 0.4, 0.2]).reshape(3, 1, 1, 1)
    three = np.array([0.4, 0.3, 0.3]).reshape(3, 1, 1, 1)
    assert uncertainty_map(three) > uncertainty_map(two)


def test_one_sigmoid_output_reads_as_two_classes():
    p = np.array([0.0, 0.1, 0.5, 0.9, 1.0], np.float32).reshape(1, 1, 1, 5)
    two = np.concatenate([1 - p, p])
    np.testing.assert_allclose(uncertainty_map(p), uncertainty_map(two), atol=1e-6)
    np.testing.assert_allclose(uncertainty_map(p)[0, 0], [0, 0.469, 1, 0.469, 0], atol=1e-3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_shape_dtype_and_range(dtype):
    probs = _random_probabilities(4).astype(dtype)
    probs[0, 0, 0, 0] += 1e-3  # a blended probability a hair above 1 stays in range
    out = uncertainty_map(probs)
    assert out.shape == (5, 6, 7) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0 and out.std() > 0.05


def test_regions_tile_the_whole_map():
    probs = _random_probabilities(3, shape=(9, 8, 10), seed=1)
    whole = uncertainty_map(probs)
    pieces = np.empty_like(whole)
    for z in range(0, 9, 4):  # z-slabs, as the sliding window streams them
        for y in range(0, 8, 5):
            region = (slice(z, z + 4), slice(y, y + 5), slice(None))
            pieces[region] = uncertainty_map(probs[(slice(None), *region)])
    np.testing.assert_array_equal(pieces, whole)


@pytest.mark.parametrize("shape", [(3, 4, 5), (0, 2, 3, 4), (2, 1, 3, 4, 5)])
def test_other_shapes_are_refused(shape):
    with pytest.raises(ValueError, match=r"\(K, Z, Y, X\)"):
        uncertainty_map(np.zeros(shape, np.float32))
