"""Sparse labels, lazy class-balanced patches, normalisation statistics and augmentation."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from napari_seg3d.engine.errors import AnnotationError
from napari_seg3d.engine.normalization import Normalization, compute_normalization
from napari_seg3d.engine.training.sampling import (
    PatchSampler,
    augment,
    class_values_of,
    make_annotations,
    read_patch,
)

PATCH = (8, 16, 16)


class CountingSource:
    """A lazy array that records every region read from it (and never reads it whole)."""

    def __init__(self, source) -> None:
        self.source = source
        self.shape = source.shape
        self.dtype = source.dtype
        self.keys: list[tuple] = []

    def __getitem__(self, key):
        self.keys.append(key)
        return self.source[key]

    def __array__(self, *args, **kwargs):
        raise AssertionError("the whole source was read")

    def region_sizes(self) -> list[tuple[int, ...]]:
        sizes = []
        for key in self.keys:
            key = key if isinstance(key, tuple) else (key,)
            sizes.append(tuple(len(range(*k.indices(n))) for k, n in
                               zip(key, self.shape) if isinstance(k, slice)))
        return sizes


# --- class values and annotation sets ---------------------------------------------------------

@pytest.mark.parametrize(("labels", "message"), [
    (np.zeros((3, 4, 5), np.uint8), "There are no annotations"),
    (np.array([[[0, 3, 3]]], np.uint16), r"Only one class \(value 3\)"),
    (np.array([[[0, -1, 2]]], np.int32), "negative values"),
    (np.array([[[0.0, 1.0, 2.0]]], np.float32), "integer labels, got dtype float32"),
])
def test_class_values_of_rejects_unusable_annotations(labels, message):
    with pytest.raises(AnnotationError, match=message):
        class_values_of(labels)


def test_class_values_of_sorts_painted_values():
    assert class_values_of(np.array([[[200, 0, 5, 1, 5]]], np.uint8)) == (1, 5, 200)


def _dense_labels(shape=(24, 32, 40), values=(1, 5, 200), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = rng.choice(np.array((0,) + values, np.uint8), size=shape, p=[0.7, 0.1, 0.1, 0.1])
    return labels


def test_make_annotations_splits_disjoint_and_complete_with_sorted_class_indices():
    labels = _dense_labels()
    values = class_values_of(labels)
    ann = make_annotations(labels, values, validation_fraction=0.3, seed=0)
    assert ann.class_values == (1, 5, 200) and ann.has_validation
    for k, v in enumerate(values):
        train = {tuple(c) for c in ann.train_coords[k]}
        val = {tuple(c) for c in ann.val_coords[k]}
        assert train and val and not train & val
        assert train | val == {tuple(c) for c in np.argwhere(labels == v)}
        assert len(train) > len(val)
        assert (ann.index[tuple(ann.train_coords[k].T)] == k + 1).all()
        assert (ann.index[tuple(ann.val_coords[k].T)] == -(k + 1)).all()
    assert ((ann.index != 0) == (labels != 0)).all()


def test_make_annotations_holds_out_whole_blocks():
    ann = make_annotations(_dense_labels(), (1, 5, 200), validation_fraction=0.3, seed=0)
    held = ann.index < 0
    blocks = {tuple(c // 8) for c in np.argwhere(held)}
    trained = {tuple(c // 8) for c in np.argwhere(ann.index > 0)}
    assert blocks and not blocks & trained


def test_make_annotations_without_validation_keeps_everything_for_training():
    labels = _dense_labels()
    ann = make_annotations(labels, (1, 5, 200), validation_fraction=0.0, seed=0)
    assert not ann.has_validation
    assert sum(len(c) for c in ann.train_coords) == int((labels > 0).sum())


def test_make_annotations_rejects_values_the_model_does_not_know():
    labels = np.array([[[0, 1, 2, 7]]], np.uint8)
    with pytest.raises(AnnotationError, match=r"values \[7\].*classes are \[1, 2\]"):
        make_annotations(labels, (1, 2), 0.0, 0)


# --- lazy patches ----------------------------------------------------------------------------

def _image(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _sparse_labels(shape, seed=0) -> np.ndarray:
    """A big class 1 in one corner and a handful of class-2 voxels far away."""
    labels = np.zeros(shape, np.uint8)
    labels[:6, :12, :12] = 1
    rng = np.random.default_rng(seed)
    for _ in range(5):
        labels[shape[0] - 1 - rng.integers(3), shape[1] - 1 - rng.integers(5),
               shape[2] - 1 - rng.integers(5)] = 2
    return labels


@pytest.fixture(params=["h5", "memmap"])
def lazy_image(request, tmp_path):
    """A ``(2, 20, 40, 44)`` image on disk, opened lazily, behind a counting proxy."""
    data = _image((2, 20, 40, 44))
    if request.param == "h5":
        with h5py.File(tmp_path / "image.h5", "w") as f:
            f.create_dataset("raw", data=data, chunks=(1, 4, 8, 8))
        file = h5py.File(tmp_path / "image.h5", "r")
        yield data, CountingSource(file["raw"])
        file.close()
    else:
        np.save(tmp_path / "image.npy", data)
        yield data, CountingSource(np.load(tmp_path / "image.npy", mmap_mode="r"))


def test_patch_sampler_reads_only_each_patch(lazy_image):
    data, source = lazy_image
    labels = _sparse_labels(data.shape[1:])
    norm = Normalization((0.0, -1.0), (1.0, 1.0))
    ann = make_annotations(labels, (1, 2), 0.0, 0)
    sampler = PatchSampler(source, ann, norm, PATCH, has_channels=True, random_fraction=0.3)
    batch = sampler.sample(6, np.random.default_rng(0))
    assert batch.image.shape == (6, 2) + PATCH and batch.image.dtype == np.float32
    assert batch.target.shape == batch.mask.shape == (6,) + PATCH
    assert len(source.keys) == 6
    assert all(size == (2,) + PATCH for size in source.region_sizes())
    for patch, key in zip(batch.image, source.keys):
        np.testing.assert_allclose(patch, norm.apply(data[key]), rtol=1e-6)


def test_patch_sampler_reads_a_3d_lazy_source(tmp_path):
    data = _image((20, 40, 44))
    with h5py.File(tmp_path / "image.h5", "w") as f:
        f["raw"] = data
    with h5py.File(tmp_path / "image.h5", "r") as f:
        source = CountingSource(f["raw"])
        ann = make_annotations(_sparse_labels(data.shape), (1, 2), 0.0, 0)
        sampler = PatchSampler(source, ann, Normalization((0.0,), (1.0,)), PATCH,
                               has_channels=False)
        batch = sampler.sample(3, np.random.default_rng(1))
    assert batch.image.shape == (3, 1) + PATCH
    assert source.region_sizes() == [PATCH] * 3
    for patch, key in zip(batch.image, source.keys):
        np.testing.assert_array_equal(patch[0], data[key])


def test_patches_are_class_balanced_and_centred_on_annotations():
    shape = (20, 40, 44)
    labels = _sparse_labels(shape)
    assert (labels == 1).sum() > 100 * (labels == 2).sum()
    ann = make_annotations(labels, (1, 2), 0.0, 0)
    sampler = PatchSampler(_image(shape), ann, Normalization((0.0,), (1.0,)), PATCH,
                           has_channels=False, random_fraction=0.0)
    batch = sampler.sample(200, np.random.default_rng(0))
    has = [((batch.target == k) & batch.mask).any(axis=(1, 2, 3)) for k in (0, 1)]
    assert batch.mask.any(axis=(1, 2, 3)).all()  # every patch holds an annotated voxel
    assert 0.3 < has[1].mean() < 0.7  # the rare class is drawn about half the time
    assert 0.3 < has[0].mean() < 0.7
    assert set(np.unique(batch.target[batch.mask])) == {0, 1}


def test_volume_smaller_than_the_patch_is_zero_padded_and_unmasked():
    shape = (3, 5, 6)
    image = (np.arange(np.prod(shape)).reshape(shape) + 1000).astype(np.float32)
    labels = np.zeros(shape, np.uint8)
    labels[0, 0, 0], labels[2, 4, 5] = 1, 2
    norm = compute_normalization(image[None])
    sampler = PatchSampler(image, make_annotations(labels, (1, 2), 0.0, 0), norm, PATCH,
                           has_channels=False, random_fraction=0.0)
    batch = sampler.sample(4, np.random.default_rng(0))
    inside = (slice(None), slice(None), slice(0, 3), slice(0, 5), slice(0, 6))
    np.testing.assert_allclose(batch.image[inside], np.broadcast_to(norm.apply(image[None]),
                                                                    (4, 1) + shape))
    padding = np.ones(batch.image.shape, bool)
    padding[inside] = False
    assert (batch.image[padding] == 0).all()
    assert not batch.mask[padding[:, 0]].any()
    assert batch.mask.sum() == 4 * 2


def test_read_patch_pads_with_zeros_past_the_border():
    source = np.arange(4 * 5 * 6).reshape(4, 5, 6) + 1
    patch = read_patch(source, (2, -1, 3), (4, 4, 4), has_channels=False)
    assert patch.shape == (4, 4, 4)
    np.testing.assert_array_equal(patch[:2, 1:, :3], source[2:4, 0:3, 3:6])
    assert (patch[2:] == 0).all() and (patch[:, 0] == 0).all() and (patch[..., 3] == 0).all()


def test_validation_patches_cover_held_out_voxels_only():
    labels = _dense_labels((24, 32, 40), values=(1, 2, 3))
    ann = make_annotations(labels, (1, 2, 3), 0.3, 0)
    sampler = PatchSampler(_image(labels.shape), ann, Normalization((0.0,), (1.0,)), PATCH,
                           has_channels=False)
    patches = sampler.validation_patches(6, seed=0)
    assert len(patches) == 6
    for image, target, mask in patches:
        assert image.shape == (1,) + PATCH and mask.any()
        assert set(np.unique(target[mask])) <= {0, 1, 2}


# --- normalisation ---------------------------------------------------------------------------

def test_compute_normalization_robust_percentiles_ignore_nan_and_inf():
    clean = np.arange(1000, dtype=np.float32).reshape(1, 10, 10, 10)
    dirty = np.concatenate([clean, np.full((1, 1, 10, 10), np.nan, np.float32)], axis=1)
    dirty[0, -1, 0, :3] = [np.inf, -np.inf, np.nan]
    dirty[0, 3, 4, 5] = np.nan  # replaces 345, which moves no percentile much
    two = np.concatenate([dirty, 2 * dirty], axis=0)
    norm = compute_normalization(two)
    assert norm.low == pytest.approx((np.percentile(np.arange(1000), 0.5), 2 * 4.995), rel=1e-2)
    assert norm.high == pytest.approx((994.005, 2 * 994.005), rel=1e-3)
    exact = compute_normalization(clean, percentiles=(0, 100))
    assert exact == Normalization((0.0,), (999.0,))
    np.testing.assert_allclose(exact.apply(clean)[0, 0, 0, :2], [0.0, 1 / 999], rtol=1e-6)


def test_compute_normalization_of_a_constant_image_has_a_unit_range():
    norm = compute_normalization(np.full((1, 3, 4, 5), 7.0, np.float32))
    assert norm == Normalization((7.0,), (8.0,))


@pytest.mark.parametrize("fill", [np.nan, np.inf])
def test_compute_normalization_without_finite_values_is_an_error(fill):
    with pytest.raises(AnnotationError, match="no finite value"):
        compute_normalization(np.full((1, 3, 4, 5), fill, np.float32))


def test_compute_normalization_reads_only_a_few_slices_of_a_lazy_source(tmp_path):
    data = _image((1, 30, 10, 10))
    np.save(tmp_path / "image.npy", data)
    source = CountingSource(np.load(tmp_path / "image.npy", mmap_mode="r"))
    compute_normalization(source, max_voxels=300)
    assert len(source.keys) == 3
    assert all(isinstance(k, tuple) and all(isinstance(i, (int, np.integer)) for i in k)
               for k in source.keys)


def test_normalization_round_trips_through_a_dict():
    norm = Normalization((0.5, -1.0), (2.0, 3.0))
    assert Normalization.from_dict(norm.to_dict()) == norm


# --- augmentation ----------------------------------------------------------------------------

def _aug_input(yx: tuple[int, int]):
    """An image whose channel 0 is the target and channel 1 the mask, so misalignment shows."""
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 2, (2, 6) + yx, generator=g)
    mask = torch.rand((2, 6) + yx, generator=g) < 0.5
    image = torch.stack([target.float(), mask.float()], dim=1)
    return image, target, mask


@pytest.mark.parametrize(("yx", "rotate_yx"), [((10, 10), True), ((10, 12), True), ((9, 9), False)])
def test_augment_keeps_image_target_and_mask_aligned(yx, rotate_yx):
    image, target, mask = _aug_input(yx)
    changed = 0
    for seed in range(12):
        out_image, out_target, out_mask = augment(image, target, mask,
                                                  torch.Generator().manual_seed(seed),
                                                  rotate_yx=rotate_yx)
        assert out_image.shape == image.shape and out_target.shape == target.shape
        assert out_target.dtype == target.dtype and out_mask.dtype == torch.bool
        torch.testing.assert_close(out_target, (out_image[:, 0] > 0.5).long(), rtol=0, atol=0)
        torch.testing.assert_close(out_mask, out_image[:, 1] > 0.5, rtol=0, atol=0)
        assert int(out_target.sum()) == int(target.sum()) and int(out_mask.sum()) == int(mask.sum())
        changed += not torch.equal(out_target, target)
        assert out_image.is_contiguous() and out_target.is_contiguous()
    assert changed >= 6  # flips and rotations do happen


def test_augment_changes_intensities_a_little():
    image, target, mask = _aug_input((8, 8))
    out, _, _ = augment(image, target, mask, torch.Generator().manual_seed(3), rotate_yx=False)
    out_ref, _, _ = augment(image, target, mask, torch.Generator().manual_seed(3), rotate_yx=False)
    torch.testing.assert_close(out, out_ref)  # a pure function of the generator
    assert not torch.equal(out.round(), out)
    assert float((out - out.round()).abs().max()) < 0.35


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.int64])
def test_painted_values_and_the_class_limit(dtype):
    from napari_seg3d.engine.errors import AnnotationError
    from napari_seg3d.engine.training.sampling import MAX_CLASSES, class_values_of

    labels = np.zeros((4, 30, 30), dtype)
    labels[1, :2, :2], labels[2, 5, 5], labels[3, 9, 9] = 3, 200, 7
    assert class_values_of(labels) == (3, 7, 200)
    many = (np.arange(4 * 30 * 30) % (3000 if np.iinfo(dtype).max > 3000 else 250)).astype(dtype)
    with pytest.raises(AnnotationError, match=r"hold (2999|249) different values; at most 64 "
                                              r"classes.*instance segmentation"):
        class_values_of(many.reshape(labels.shape))
    limit = np.zeros((MAX_CLASSES + 1, 3, 3), dtype)
    limit[:, 0, 0] = np.arange(1, MAX_CLASSES + 2)
    with pytest.raises(AnnotationError, match=f"{MAX_CLASSES + 1} different values"):
        class_values_of(limit)
    assert len(class_values_of(limit[:-1])) == MAX_CLASSES


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, bool])
def test_the_widgets_painted_values_read_the_painted_slices_of_any_layer(dtype):
    """The Train widget's count of the painted values (its class table) for 3D layers and
    others, without a copy of the layer (a bincount's int64 copy was 3.8 GiB at 794^3)."""
    from napari_seg3d._widgets._layers import painted_values

    labels = np.zeros((5, 20, 21), dtype)
    labels[1, 3, 4], labels[3, :, 7] = 1, (1 if dtype is bool else 9)
    expected = [int(v) for v in np.unique(labels) if v]
    assert painted_values(labels) == expected
    assert painted_values(labels[1]) == [1]  # a 2D layer
    assert painted_values(np.zeros((2, 3, 4), dtype)) == []
