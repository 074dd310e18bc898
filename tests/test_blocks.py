"""Block-by-block prediction: the plan tiles the volume, and predicting block by block (from
numpy, h5py or zarr sources) gives the whole-volume result while reading only what it needs."""

import itertools

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from napari_seg3d.engine.prediction.blocks import plan_blocks
from napari_seg3d.engine.prediction.sliding_window import iter_predict_volume, predict_volume
from napari_seg3d.engine.prediction.windows import padded_shape, window_starts


def _net(channels=1, classes=3):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(channels, 4, 3, padding=1), nn.ReLU(),
                         nn.Conv3d(4, classes, 3, padding=1)).eval()


def _grid(shape, patch, overlap):
    """The corners of all windows of the volume, built from the window starts of each axis."""
    starts = [window_starts(n, p, overlap) for n, p in zip(padded_shape(shape, patch), patch)]
    return {tuple((s, s + p) for s, p in zip(corner, patch))
            for corner in itertools.product(*starts)}


def _corners(window):
    return tuple((s.start, s.stop) for s in window)  # slices are not hashable before Python 3.12


def _volume(shape, seed=0):
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


@pytest.mark.parametrize("shape, block", [
    ((20, 30, 41), (8, 16, 16)), ((20, 30, 41), (20, 30, 41)), ((5, 30, 41), (4, 9, 100)),
    ((3, 7, 41), (2, 4, 16)),  # axes shorter than the patch
])
def test_plan_tiles_the_volume_and_uses_the_global_grid(shape, block):
    patch = (4, 8, 8)
    blocks = plan_blocks(shape, patch, 0.5, block)
    covered = np.zeros(shape, int)
    grid = _grid(shape, patch, 0.5)
    for b in blocks:
        covered[b.core] += 1
        mine = {_corners(w) for w in b.windows}
        assert mine <= grid
        for w in grid:  # exactly the windows that touch the core
            touches = all(a < c.stop and z > c.start for (a, z), c in zip(w, b.core))
            assert (w in mine) == touches
        assert all(max(ws.stop for ws in (w[a] for w in b.windows)) == b.read[a].stop
                   for a in range(3))
    assert (covered == 1).all()
    assert max(b.core[a].stop - b.core[a].start for b in blocks for a in range(3)) <= max(block)


@pytest.mark.parametrize("shape, block, channels", [
    ((20, 30, 41), (8, 16, 16), 1), ((14, 22, 26), (7, 11, 13), 2), ((3, 7, 41), (2, 4, 16), 1),
])
def test_blocks_give_the_whole_volume_result(shape, block, channels):
    net = _net(channels)
    volume = _volume((channels, *shape) if channels > 1 else shape)
    kwargs = dict(patch_size=(4, 8, 8), batch_size=3, probabilities=True)
    whole = predict_volume(net, volume, **kwargs)
    blocked = predict_volume(net, volume, block_shape=block, **kwargs)
    np.testing.assert_allclose(blocked, whole, rtol=1e-5, atol=1e-6)
    labels = predict_volume(net, volume, patch_size=(4, 8, 8), batch_size=3, block_shape=block)
    np.testing.assert_array_equal(labels, whole.argmax(0))


class _CountingReads:
    """An array-like that records the size of every read."""

    def __init__(self, data):
        self.data, self.shape, self.ndim, self.dtype = data, data.shape, data.ndim, data.dtype
        self.largest = 0

    def __getitem__(self, key):
        out = self.data[key]
        self.largest = max(self.largest, out.size)
        return out


def test_reads_only_rows_of_one_block_at_a_time():
    volume = _CountingReads(_volume((1, 24, 48, 48)))
    regions = list(iter_predict_volume(_net(), volume, patch_size=(4, 8, 8), batch_size=4,
                                       block_shape=(24, 16, 16)))
    assert len({_corners(r.slices[1:]) for r in regions}) == 9  # 3 x 3 columns, each in several z-slabs
    assert len(regions) > 9
    # a batch of windows needs a few rows of one block (16 + halo), never the volume
    assert volume.largest <= 8 * 24 * 24
    assert volume.largest < volume.data.size / 10


def test_h5py_and_zarr_sources_read_lazily(tmp_path):
    zarr = pytest.importorskip("zarr")
    data = (_volume((18, 40, 36)) * 200).astype(np.uint8)
    net = _net()
    expected = predict_volume(net, data, patch_size=(4, 8, 8))
    with h5py.File(tmp_path / "v.h5", "w") as f:
        f.create_dataset("raw", data=data, chunks=(8, 16, 16))
    with h5py.File(tmp_path / "v.h5", "r") as f:
        got = predict_volume(net, f["raw"], patch_size=(4, 8, 8), block_shape=(8, 16, 16))
    np.testing.assert_array_equal(got, expected)
    z = zarr.create_array(tmp_path / "v.zarr", shape=data.shape, dtype=data.dtype,
                          chunks=(8, 16, 16))
    z[...] = data
    got = predict_volume(net, zarr.open_array(tmp_path / "v.zarr", mode="r"),
                         patch_size=(4, 8, 8), block_shape=(8, 16, 16))
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("shape, block, z", [
    ((20, 30, 41), (8, 16, 16), 11), ((20, 30, 41), None, 13), ((20, 30, 41), (8, 16, 16), 0),
    ((3, 7, 41), (2, 4, 16), 2),
])
def test_first_region_comes_first_and_changes_nothing(shape, block, z):
    """Asked for the slice on screen, the plan cuts z there and starts with it: the first
    region yielded holds that slice (all of it in y/x when the blocks span the plane), the
    regions still tile the volume once, and the result is the same."""
    net = _net()
    volume = _volume(shape)
    kwargs = {"patch_size": (4, 8, 8), "batch_size": 3, "probabilities": True,
              "block_shape": block}
    whole = predict_volume(net, volume, **kwargs)
    view = (slice(z, z + 1), slice(3, 20), slice(10, 30))
    regions = list(iter_predict_volume(net, volume, first_region=view, **kwargs))
    first = regions[0].slices
    assert first[0].start <= z < first[0].stop
    if block is None:
        assert first[1:] == (slice(0, shape[1]), slice(0, shape[2]))
    covered = np.zeros(shape, int)
    ordered = np.zeros_like(whole)
    for r in regions:
        covered[r.slices] += 1
        ordered[(slice(None), *r.slices)] = r.probabilities
    assert (covered == 1).all()
    np.testing.assert_allclose(ordered, whole, rtol=1e-5, atol=1e-6)
    holding = [r.slices[0].start <= z < r.slices[0].stop for r in regions]
    n = sum(holding)
    assert all(holding[:n])  # the whole slice (they tile it) is done before anything else
    plan = plan_blocks(shape, (4, 8, 8), 0.5, block, first_region=view)
    assert [b.index for b in plan] == list(range(len(plan)))
    assert all(b.core[0] == slice(z, z + 1) for b in plan[:n])
