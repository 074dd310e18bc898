"""The random-forest quick segmentation: features, block-wise prediction, the Trainer's preview."""

import numpy as np
import pytest

from napari_seg3d.engine import TrainConfig, Trainer
from napari_seg3d.engine.metrics import dice_scores
from napari_seg3d.engine.normalization import compute_normalization
from napari_seg3d.engine.training.forest import (
    SIGMAS,
    fit_forest,
    forest_predict,
    halo_of,
    image_features,
    iter_forest_predict,
    symmetric_eigenvalues,
)


def test_closed_form_eigenvalues_match_numpy():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 3, 3)).astype(np.float32)
    a = a + a.swapaxes(1, 2)
    a[:3] = 0  # degenerate: all equal
    a[3:6] = np.diag([2.0, 2.0, -1.0])
    h = {(i, j): a[:, i, j] for i in range(3) for j in range(i, 3)}
    ours = np.stack(symmetric_eigenvalues(h), 1)
    np.testing.assert_allclose(ours, np.linalg.eigvalsh(a)[:, ::-1], atol=1e-4)


def test_features_shape_and_anisotropic_halo():
    image = np.random.default_rng(0).random((2, 9, 12, 10), dtype=np.float32)
    f = image_features(image)
    assert f.shape == (2 * (1 + 5 * len(SIGMAS)), 9, 12, 10) and f.dtype == np.float32
    assert np.isfinite(f).all()
    z, y, x = halo_of((3.0, 1.0, 1.0))
    assert y == x and z < y  # coarse z: fewer voxels of context


def test_forest_segments_blobs_and_blocks_match_the_whole(blobs):
    image, truth, scribbles = blobs
    norm = compute_normalization(image[None])
    forest = fit_forest(image[None], scribbles.astype(np.int16), norm, n_trees=20, n_jobs=1)
    whole = forest_predict(forest, image[None])
    assert whole.shape == (2,) + image.shape
    np.testing.assert_allclose(whole.sum(0), 1, atol=1e-5)
    dice = dice_scores(whole.argmax(0) + 1, truth, (1, 2))
    assert min(dice) > 0.8, dice
    tiled = np.zeros_like(whole)
    regions = list(iter_forest_predict(forest, image[None], block=(6, 10, 10)))
    assert regions[-1].regions_done == regions[-1].regions_total == len(regions) > 1
    for r in regions:
        tiled[(slice(None),) + r.slices] = r.probabilities
    # each block sees the context its filters need, so tiling changes nothing
    np.testing.assert_allclose(tiled, whole, atol=1e-5)


@pytest.mark.parametrize("region", [None, (slice(3, 9), slice(0, 24), slice(5, 20))])
def test_trainer_quick_preview(blobs, region, monkeypatch):
    from napari_seg3d.engine.training import self_training

    image, truth, scribbles = blobs
    trainer = Trainer(image, scribbles, TrainConfig(patch_size=(8, 16, 16), device="cpu"))
    if region is not None:
        monkeypatch.setattr(self_training, "QUICK_PREVIEW_VOXELS", 1000)  # "a large volume"
    preview = trainer.quick_preview(region)
    expected = region or tuple(slice(0, n) for n in image.shape)
    assert preview.slices == expected and preview.iteration == 0
    assert preview.labels.shape == tuple(s.stop - s.start for s in expected)
    assert set(np.unique(preview.labels)) <= {1, 2}
    assert np.mean(preview.labels == truth[expected]) > 0.85


def test_forest_in_threads_keeps_warning_filters_and_is_reproducible(blobs):
    """Fitting and predicting in several threads at once (the Train widget's preview beside
    self-training) warns nothing and leaves Python's warning filters as they were: scikit-learn's
    own n_jobs threads reset them while others read them, which raised a UserWarning at random
    (and as an error under this suite's filterwarnings)."""
    import sys
    import threading
    import warnings

    image, _, scribbles = blobs
    norm = compute_normalization(image[None])
    before = list(warnings.filters)
    results, errors = {}, []

    def work(i):
        try:
            forest = fit_forest(image[None], scribbles.astype(np.int16), norm, n_trees=8,
                                seed=i % 2, n_jobs=2)
            results[i] = forest.probabilities(image_features(norm.apply(image[None])), threads=2)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads all the time: with scikit-learn's own threads
    try:  # (RandomForestClassifier(n_jobs=2)) this corrupts the filters on every call
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            during = list(warnings.filters)
    finally:
        sys.setswitchinterval(interval)
    assert not errors, errors
    assert during[0][0] == "error" and list(warnings.filters) == before
    for i in range(2, 6):  # the same seed gives the same forest, whatever the threads did
        np.testing.assert_array_equal(results[i], results[i % 2])
    assert not np.array_equal(results[0], results[1])


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (3.0, 1.0, 1.0)])
def test_fast_features_against_the_reference(spacing):
    """The smoothed intensity and the fine scales (Gaussian-derivative kernels) equal the
    reference's; the coarse scales (finite differences of the smoothed volume) follow them."""
    from scipy import ndimage as ndi

    from napari_seg3d.engine.training.features import (
        EXACT_BELOW,
        fast_features,
        fast_halo,
        pad_to_halo,
    )

    rng = np.random.default_rng(0)
    image = ndi.gaussian_filter(rng.random((1, 13, 30, 29), dtype=np.float32), 1.2)
    ref = image_features(image, spacing)
    halo = fast_halo(spacing)
    block = pad_to_halo(image, tuple((h, h) for h in halo))
    fast = fast_features(block, tuple(slice(h, h + n) for h, n in zip(halo, image.shape[1:])),
                         spacing)
    assert fast.shape == ref.shape and fast.dtype == np.float32
    np.testing.assert_array_equal(fast[0], ref[0])
    for i, sigma in enumerate(SIGMAS):
        f = 1 + 5 * i
        np.testing.assert_allclose(fast[f], ref[f], atol=1e-6)  # the smoothed intensity
        if sigma < EXACT_BELOW:  # up to float32 rounding, which the closed-form eigenvalues
            scale = np.abs(ref[f + 1:f + 5]).max()  # amplify when one of them dominates
            tolerance = 1e-5 if spacing == (1.0, 1.0, 1.0) else 1e-3  # (thin z: h_zz does)
            np.testing.assert_allclose(fast[f + 1:f + 5], ref[f + 1:f + 5],
                                       atol=tolerance * scale)
        elif spacing == (1.0, 1.0, 1.0):
            for k in range(f + 1, f + 5):
                assert np.corrcoef(fast[k].ravel(), ref[k].ravel())[0, 1] > 0.99
    with pytest.raises(ValueError, match="context"):
        fast_features(image, (slice(0, 13), slice(0, 30), slice(0, 29)), spacing)


def test_forest_on_fast_features_segments_as_on_the_reference(blobs):
    """Fit on the same voxels, a forest on the fast features and one on the reference features
    give the same Dice on the blobs, within 0.02."""
    from napari_seg3d.engine.training.forest import Forest, _fit_tree, fit_samples
    from napari_seg3d.engine.training.forest_samples import stroke_samples

    image, truth, scribbles = blobs
    norm = compute_normalization(image[None])
    samples = stroke_samples(scribbles, (1, 2), 10_000)
    fast = fit_samples(image[None], samples, norm, n_trees=20, threads=1)
    ref_features = image_features(norm.apply(image[None]))
    x = ref_features[(slice(None), *samples.coords.T)].T.copy()
    seeds = np.random.default_rng(0).integers(2**31 - 1, size=(20, 2))
    ref = Forest([_fit_tree(x, samples.classes, s) for s in seeds], norm, (1.0, 1.0, 1.0), 2)
    dice = {}
    for name, forest, feats in (("fast", fast, None), ("reference", ref, ref_features)):
        probs = forest_predict(forest, image[None]) if feats is None else forest.probabilities(feats)
        dice[name] = np.mean(dice_scores(probs.argmax(0) + 1, truth, (1, 2)))
    assert min(dice.values()) > 0.8 and abs(dice["fast"] - dice["reference"]) < 0.02, dice


def test_coords_samples_draw_at_most_so_many_stroke_voxels_a_class_grouped_by_class():
    from napari_seg3d.engine.training.forest_samples import coords_samples

    rng = np.random.default_rng(0)
    coords = [rng.integers(0, 50, (n, 3)).astype(np.int32) for n in (5, 300, 40)]
    samples = coords_samples(coords, 30, seed=1)
    assert np.bincount(samples.classes).tolist() == [5, 30, 30]
    assert (np.diff(samples.classes) >= 0).all()  # grouped by class
    for k, c in enumerate(coords):  # every sample one of its class's voxels
        mine = {tuple(r) for r in c}
        assert all(tuple(r) in mine for r in samples.coords[samples.classes == k])
    again = coords_samples(coords, 30, seed=1)
    np.testing.assert_array_equal(again.coords, samples.coords)
    assert not np.array_equal(coords_samples(coords, 30, seed=2).coords, samples.coords)


def test_tiles_far_apart_read_their_own_boxes_and_get_the_same_features(monkeypatch):
    """A z-row of tiles far apart on a wide slice is read tile by tile, not as its bounding box:
    the features are those of the whole-row read (the halo is read either way)."""
    from scipy import ndimage as ndi

    from napari_seg3d.engine.training import forest_samples
    from napari_seg3d.engine.training.forest_samples import StrokeSamples, sample_features

    rng = np.random.default_rng(1)
    image = ndi.gaussian_filter(rng.random((1, 20, 300, 310), dtype=np.float32), 1.0)
    coords = np.array([[3, 5, 6], [4, 7, 9], [3, 290, 300], [5, 288, 301], [12, 150, 20]])
    samples = StrokeSamples(coords, np.array([0, 0, 1, 1, 0]))
    norm = compute_normalization(image)
    reads = []
    real = forest_samples.read_block
    monkeypatch.setattr(forest_samples, "read_block",
                        lambda img, box, *a: reads.append(box) or real(img, box, *a))
    apart = sample_features(image, samples, norm, (1.0, 1.0, 1.0))
    assert len(reads) == 3  # the two tiles of the first row read apart, then the second row
    assert all(b.stop - b.start < 10 for box in reads for b in box[1:])
    reads.clear()
    monkeypatch.setattr(forest_samples, "ROW_READ_RATIO", 1e9)  # every row read whole
    whole = sample_features(image, samples, norm, (1.0, 1.0, 1.0))
    assert len(reads) == 2
    np.testing.assert_allclose(apart, whole, rtol=1e-6, atol=1e-6)
