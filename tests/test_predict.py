"""Sliding-window prediction: exact stitching, streaming, fallbacks and validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from napari_seg3d.engine.prediction._buffers import drop_rows, labels_of, normalise
from napari_seg3d.engine.prediction.sliding_window import (
    RegionDone,
    iter_predict_volume,
    predict_volume,
)


class Pointwise(nn.Module):
    """Logits that depend on each voxel alone, so stitching windows must be exact.

    Class k has logit ``scale[k] * sum over channels of x``; with ``scale = (1, -1)`` class 0 wins
    where the channel sum is positive.
    """

    def __init__(self, scales=(1.0, -1.0)):
        super().__init__()
        self.register_buffer("scales", torch.tensor(scales).view(1, -1, 1, 1, 1))
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x.sum(dim=1, keepdim=True) * self.scales


def _expected_probabilities(model, volume):
    """softmax (or sigmoid) of the model over the whole volume at once: (K, Z, Y, X)."""
    x = torch.from_numpy(np.asarray(volume, np.float32))
    x = x[None, None] if x.ndim == 3 else x[None]
    with torch.no_grad():
        logits = model(x)[0]
    return (torch.sigmoid(logits) if logits.shape[0] == 1 else torch.softmax(logits, 0)).numpy()


def _volume(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@pytest.mark.parametrize(
    ("shape", "patch"),
    [
        ((13, 34, 35), (8, 16, 16)),
        ((1, 33, 34, 35), (16, 16, 16)),
        ((2, 9, 10, 11), (4, 8, 6)),
        ((3, 5, 6), (8, 8, 8)),  # smaller than the patch along every axis
        ((9, 3, 20), (4, 8, 8)),  # smaller along one axis
    ],
)
@pytest.mark.parametrize("overlap", [0.0, 0.5])
@pytest.mark.parametrize("blending", ["gaussian", "constant"])
@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize("tta", [False, True])
def test_pointwise_model_is_stitched_exactly(shape, patch, overlap, blending, batch_size, tta):
    model = Pointwise()
    volume = _volume(shape)
    kwargs = dict(patch_size=patch, overlap=overlap, blending=blending, batch_size=batch_size,
                  tta=tta)
    probs = predict_volume(model, volume, probabilities=True, **kwargs)
    expected = _expected_probabilities(model, volume)
    assert probs.shape == expected.shape == (2, *shape[-3:])
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)

    labels = predict_volume(model, volume, **kwargs)
    assert labels.shape == shape[-3:]
    assert labels.dtype == np.uint8
    channel_sum = volume.sum(axis=0) if volume.ndim == 4 else volume
    clear = np.abs(channel_sum) > 1e-4
    np.testing.assert_array_equal(labels[clear], (channel_sum < 0)[clear])


def test_three_classes_argmax():
    model = Pointwise((1.0, 0.0, -1.0))
    volume = _volume((6, 10, 12))
    labels = predict_volume(model, volume, patch_size=(4, 4, 4))
    expected = np.where(volume > 0, 0, 2)
    clear = np.abs(volume) > 1e-4
    np.testing.assert_array_equal(labels[clear], expected[clear])


def test_one_output_channel_uses_the_sigmoid():
    model = Pointwise((2.0,))
    volume = _volume((5, 9, 7))
    probs = predict_volume(model, volume, patch_size=(4, 4, 4), probabilities=True)
    assert probs.shape == (1, 5, 9, 7)
    np.testing.assert_allclose(probs, _expected_probabilities(model, volume), rtol=1e-5, atol=1e-6)
    labels = predict_volume(model, volume, patch_size=(4, 4, 4))
    np.testing.assert_array_equal(labels, (volume > 0).astype(np.uint8))


def test_many_classes_give_int16_labels():
    n_classes = 300
    model = Pointwise(tuple(float(k) for k in range(n_classes)))
    volume = np.abs(_volume((3, 4, 5))) + 0.5  # positive: the last class wins everywhere
    labels = predict_volume(model, volume, patch_size=(4, 4, 4))
    assert labels.dtype == np.int16
    assert np.all(labels == n_classes - 1)


def _regions(model, volume, **kwargs):
    return list(iter_predict_volume(model, volume, **kwargs))


@pytest.mark.parametrize("probabilities", [False, True])
def test_regions_tile_the_volume_once_in_z_order(probabilities):
    model = Pointwise()
    volume = _volume((21, 10, 11))
    kwargs = dict(patch_size=(4, 8, 8), overlap=0.5, batch_size=2)
    regions = _regions(model, volume, probabilities=probabilities, **kwargs)
    assert len(regions) > 2
    assert all(isinstance(r, RegionDone) for r in regions)
    z = 0
    for region in regions:
        zs, ys, xs = region.slices
        assert zs.start == z and zs.stop > z
        assert (ys.start, ys.stop, xs.start, xs.stop) == (0, 10, 0, 11)
        assert region.labels.shape == (zs.stop - zs.start, 10, 11)
        if probabilities:
            assert region.probabilities.shape == (2, *region.labels.shape)
        else:
            assert region.probabilities is None
        z = zs.stop
    assert z == 21
    assert regions[0].windows_done < regions[0].windows_total
    assert regions[-1].windows_done == regions[-1].windows_total
    done = [r.windows_done for r in regions]
    assert done == sorted(done)
    labels = np.concatenate([r.labels for r in regions])
    np.testing.assert_array_equal(labels, predict_volume(model, volume, **kwargs))


def test_closing_the_stream_stops_the_work():
    model = Pointwise()
    stream = iter_predict_volume(model, _volume((32, 8, 8)), patch_size=(4, 8, 8), batch_size=1)
    first = next(stream)
    calls = model.calls
    assert calls == first.windows_done < first.windows_total
    stream.close()
    assert model.calls == calls
    assert model.training  # the training flag is restored


def test_stream_leaves_no_inference_mode_to_the_consumer():
    for _ in iter_predict_volume(Pointwise(), _volume((12, 4, 4)), patch_size=(4, 4, 4)):
        assert not torch.is_inference_mode_enabled()
        assert torch.is_grad_enabled()


def test_cpu_accumulator_fallback_gives_the_same_result():
    model = Pointwise()
    volume = _volume((7, 12, 13))
    kwargs = dict(patch_size=(4, 8, 8), probabilities=True)
    fallback = predict_volume(model, volume, memory_limit_bytes=1, **kwargs)
    np.testing.assert_array_equal(fallback, predict_volume(model, volume, **kwargs))


def test_a_small_conv_net_runs_end_to_end():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 3, 1))
    model.train()
    volume = _volume((2, 11, 14, 9))
    probs = predict_volume(model, volume, patch_size=(8, 8, 8), tta=True, probabilities=True)
    assert probs.shape == (3, 11, 14, 9)
    assert np.all(np.isfinite(probs))
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, rtol=1e-5)
    labels = predict_volume(model, volume, patch_size=(8, 8, 8), tta=True)
    np.testing.assert_array_equal(labels, probs.argmax(axis=0))
    assert model.training


def test_window_covering_the_volume_equals_a_whole_forward():
    torch.manual_seed(0)
    model = nn.Conv3d(1, 2, 3, padding=1)
    volume = _volume((6, 7, 8))
    probs = predict_volume(model, volume, patch_size=(6, 7, 8), probabilities=True, amp=False)
    np.testing.assert_allclose(probs, _expected_probabilities(model, volume), rtol=1e-5, atol=1e-6)


def test_device_defaults_to_cpu_for_a_model_without_parameters():
    volume = _volume((1, 2, 3, 4))
    labels = predict_volume(nn.Identity(), volume, patch_size=(2, 2, 2))  # K = 1: sigmoid
    np.testing.assert_array_equal(labels, volume[0] > 0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(volume=np.zeros((4, 4))), r"\(Z, Y, X\) or \(C, Z, Y, X\)"),
        (dict(volume=np.zeros((1, 1, 4, 4, 4))), r"\(Z, Y, X\) or \(C, Z, Y, X\)"),
        (dict(volume=np.zeros((0, 4, 4))), r"non-empty"),
        (dict(blending="median"), "blending"),
        (dict(overlap=1.0), "overlap"),
        (dict(batch_size=0), "batch_size"),
        (dict(patch_size=(4, 4)), "patch_size"),
    ],
)
def test_invalid_arguments_are_rejected_at_once(kwargs, match):
    args = dict(volume=np.zeros((4, 4, 4), np.float32), patch_size=(4, 4, 4))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        iter_predict_volume(Pointwise(), **args)  # raises before the first next()


def test_a_model_changing_the_spatial_size_is_reported():
    model = nn.Conv3d(1, 2, 3)  # no padding: the output is smaller than the window
    with pytest.raises(ValueError, match="same spatial size"):
        predict_volume(model, np.zeros((4, 4, 4), np.float32), patch_size=(4, 4, 4))


def test_normalise_and_labels():
    prob_sum = torch.tensor([[[[0.2, 1.5]]], [[[0.6, 0.5]]]])
    weight_sum = torch.tensor([[[0.8, 2.0]]])
    probs = normalise(prob_sum, weight_sum)
    torch.testing.assert_close(probs, torch.tensor([[[[0.25, 0.75]]], [[[0.75, 0.25]]]]))
    labels = labels_of(probs)
    assert labels.dtype == torch.uint8
    assert labels.tolist() == [[[1, 0]]]


@pytest.mark.parametrize("dtype", [np.float32, np.uint16])
def test_read_only_and_non_float_volumes_are_accepted(dtype):
    volume = (np.arange(4 * 5 * 6).reshape(4, 5, 6) % 7).astype(dtype)
    volume.setflags(write=False)
    probs = predict_volume(Pointwise(), volume, patch_size=(4, 4, 4), device="cpu",
                           probabilities=True)
    np.testing.assert_allclose(probs, _expected_probabilities(Pointwise(), volume), atol=1e-6)


def test_drop_rows_moves_the_rest_to_the_front_in_place():
    t = torch.arange(2 * 7 * 2, dtype=torch.float32).reshape(2, 7, 1, 2)
    expected = torch.cat([t[:, 3:], torch.zeros(2, 3, 1, 2)], dim=1)
    drop_rows(t, 3)
    torch.testing.assert_close(t, expected)
    drop_rows(t, 10)
    assert not t.any()
