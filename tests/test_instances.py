"""Instances from a class map: watershed and connected components, anisotropic voxels, the
minimum size, consecutive ids, and the object-level F1 that scores them."""

from __future__ import annotations

import numpy as np
import pytest

from napari_seg3d.engine.errors import VolumeError
from napari_seg3d.engine.metrics import instance_scores
from napari_seg3d.engine.prediction.instances import instances


def balls(shape, centres, radius, voxel=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Bool mask of balls of ``radius`` (physical units) at physical ``centres``, sampled on
    voxels of ``voxel``; and the index (1-based) of the nearest centre of each voxel."""
    grid = np.indices(shape).astype(float) * np.reshape(voxel, (3, 1, 1, 1))
    dist = np.stack([np.sqrt(sum((grid[i] - c[i]) ** 2 for i in range(3))) for c in centres])
    return (dist <= radius).any(axis=0), dist.argmin(axis=0) + 1


TWO = ((15.0, 20.0, 17.0), (15.0, 20.0, 37.0))  # radius 10, 20 apart: touching, a thin neck


@pytest.mark.parametrize("seeds", ["distance", "probability"])
def test_two_touching_balls_are_two_instances_with_watershed(seeds):
    mask, nearest = balls((30, 40, 55), TWO, 11.0)  # overlapping: a neck of radius 4.6
    ids = instances(mask, seeds=seeds, probability=mask.astype(np.float32))
    assert ids.max() == 2 and set(np.unique(ids)) == {0, 1, 2}
    assert np.array_equal(ids > 0, mask)
    # each ball is one object: the cut lies where the balls meet
    agree = max(np.mean(ids[mask] == nearest[mask]), np.mean(ids[mask] == 3 - nearest[mask]))
    assert agree > 0.99


def test_two_touching_balls_are_one_component():
    mask, _ = balls((30, 40, 55), TWO, 11.0)
    ids = instances(mask, method="components")
    assert ids.max() == 1 and np.array_equal(ids > 0, mask)


def test_a_probability_map_is_thresholded_and_seeds_from_itself():
    mask, _ = balls((30, 40, 55), TWO, 11.0)
    probability = np.where(mask, 0.9, 0.1).astype(np.float32)
    ids = instances(probability, seeds="probability")
    assert ids.max() == 2 and np.array_equal(ids > 0, mask)


def test_labels_pick_the_class_value():
    mask, _ = balls((30, 40, 55), TWO, 11.0)
    labels = np.where(mask, 7, 3).astype(np.uint8)
    assert instances(labels, class_value=7).max() == 2
    assert instances(labels, class_value=3, method="components").max() == 1  # the background
    assert instances(labels, class_value=5).max() == 0


@pytest.mark.parametrize("gap", [10.0, 12.0, 14.0])
def test_anisotropic_voxels_are_balls_in_physical_space(gap):
    """Two balls 8 in radius whose centres lie ``gap`` apart along z, on voxels 3 times longer in
    z: in voxel units they are two flat discs stacked into one slab that no neck divides."""
    voxel = (3.0, 1.0, 1.0)
    centres = ((18.0 - gap / 2, 12.0, 12.0), (18.0 + gap / 2, 12.0, 12.0))
    mask, nearest = balls((13, 25, 25), centres, 8.0, voxel)
    truth = np.where(mask, nearest, 0)
    ids = instances(mask, voxel_size=voxel)
    assert ids.max() == 2
    assert instance_scores(ids, truth).mean_iou > 0.95
    assert instance_scores(instances(mask), truth).matched < 2  # read as cubic voxels: wrong


def test_the_same_balls_at_two_samplings_agree():
    """The ids on voxels of 2 x 1 x 1 are those on 1 x 1 x 1 voxels at every other z slice."""
    centres = ((16.0, 14.0, 12.0), (16.0, 14.0, 31.0), (30.0, 22.0, 22.0))
    fine, _ = balls((48, 36, 44), centres, 10.0)
    coarse, _ = balls((24, 36, 44), centres, 10.0, (2.0, 1.0, 1.0))
    assert np.array_equal(fine[::2], coarse)
    a, b = instances(fine)[::2], instances(coarse, voxel_size=(2.0, 1.0, 1.0))
    assert a.max() == b.max() == 3
    pairs = {(int(x), int(y)) for x, y in zip(a[coarse], b[coarse])}
    matched = sum(np.sum((a == x) & (b == y)) for x, y in pairs if x and y)
    assert len({x for x, _ in pairs}) == 3 and matched / coarse.sum() > 0.97


def test_min_size_removes_small_objects_and_merges_small_pieces():
    mask, _ = balls((30, 40, 55), ((15.0, 20.0, 20.0),), 9.0)
    mask[2:4, 2:4, 2:4] = True  # a speck of 8 voxels
    bump, _ = balls((30, 40, 55), ((15.0, 20.0, 32.5),), 4.5)  # a small ball on the big one
    mask |= bump
    everything = instances(mask, method="components")
    assert everything.max() == 2
    assert instances(mask, method="components", min_size=9).max() == 1
    split = instances(mask, diameter=8.0)
    assert split.max() == 3  # the ball, its bump, the speck
    assert np.sum(split == split[15, 20, 33]) < 500
    merged = instances(mask, diameter=8.0, min_size=500)
    assert merged.max() == 1 and merged[2, 2, 2] == 0 and merged[15, 20, 33] == merged[15, 20, 20]


@pytest.mark.parametrize("method", ["watershed", "components"])
def test_ids_are_consecutive_and_small(method):
    rng = np.random.default_rng(3)
    centres = rng.uniform((4, 4, 4), (36, 56, 56), size=(25, 3))
    mask, _ = balls((40, 60, 60), centres, 4.0)
    ids = instances(mask, method=method)
    n = int(ids.max())
    assert n >= 10 and ids.dtype == np.uint8
    assert np.array_equal(np.unique(ids), np.arange(n + 1))


def test_ids_take_16_bits_above_255_objects():
    mask = np.zeros((4, 40, 40), bool)
    mask[::2, ::2, ::2] = True  # 800 lone voxels
    ids = instances(mask, method="components")
    assert ids.dtype == np.uint16 and ids.max() == 800
    assert np.array_equal(np.unique(ids), np.arange(801))


def test_an_empty_class_has_no_instances():
    ids = instances(np.zeros((5, 6, 7), np.uint8), class_value=2)
    assert ids.dtype == np.uint8 and not ids.any()


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"method": "stardist"}, "Unknown instance method 'stardist'"),
    ({"seeds": "intensity"}, "Unknown instance seeds 'intensity'"),
    ({"seeds": "probability"}, "need the class probability"),
    ({"voxel_size": (1.0, 1.0)}, "must be 3 positive numbers"),
    ({"voxel_size": (1.0, 0.0, 1.0)}, "must be 3 positive numbers"),
])
def test_wrong_settings_are_refused_with_a_sentence(kwargs, words):
    with pytest.raises(ValueError, match=words):
        instances(np.ones((4, 5, 6), bool), **kwargs)


def test_volumes_above_the_limit_are_refused():
    with pytest.raises(VolumeError, match=r"in memory, up to 100 voxels; this volume has 120"):
        instances(np.ones((4, 5, 6), bool), max_voxels=100)


# --- object-level F1 ---------------------------------------------------------------------------

def test_identical_instances_score_one_whatever_their_ids():
    truth = np.zeros((4, 10, 10), np.uint16)
    truth[:, :4, :4], truth[:, 6:, 6:] = 5, 9
    renumbered = np.select([truth == 5, truth == 9], [2, 1], 0)
    s = instance_scores(renumbered, truth)
    assert (s.matched, s.predicted, s.true) == (2, 2, 2)
    assert s.f1 == s.precision == s.recall == s.mean_iou == 1.0


def test_a_split_object_at_half_does_not_match_and_a_shift_does():
    truth = np.zeros((1, 10, 12), np.uint8)
    truth[0, 2:8, 0:6] = 1  # 36 voxels
    truth[0, 2:8, 7:10] = 2  # 18 voxels
    pred = np.zeros_like(truth)
    pred[0, 2:5, 0:6], pred[0, 5:8, 0:6] = 1, 2  # object 1 cut in halves: IoU 0.5 each, no match
    pred[0, 2:8, 8:11] = 3  # object 2 shifted by one: IoU 12 / 24 = 0.5, no match
    s = instance_scores(pred, truth)
    assert (s.matched, s.predicted, s.true) == (0, 3, 2) and s.f1 == 0.0
    pred[0, 2:8, 10] = 0  # object 2 shifted and one column short: IoU 12 / 18
    s = instance_scores(pred, truth)
    assert (s.matched, s.predicted, s.true) == (1, 3, 2)
    assert s.precision == pytest.approx(1 / 3) and s.recall == pytest.approx(1 / 2)
    assert s.f1 == pytest.approx(2 / 5) and s.mean_iou == pytest.approx(2 / 3)


def test_false_positives_and_missed_objects_count():
    truth = np.zeros((2, 8, 8), np.int32)
    truth[:, :3, :3] = 1
    truth[:, 5:, 5:] = 2
    pred = np.zeros_like(truth)
    pred[:, :3, :3] = 4  # matched
    pred[:, 0, 6:] = 7  # a false positive; object 2 is missed
    s = instance_scores(pred, truth)
    assert (s.matched, s.predicted, s.true) == (1, 2, 2)
    assert s.precision == s.recall == s.f1 == 0.5


def test_no_objects_at_all_is_perfect_and_none_predicted_is_zero():
    empty = np.zeros((3, 4, 5), np.uint8)
    assert instance_scores(empty, empty).f1 == 1.0
    truth = empty.copy()
    truth[1, 1, 1] = 1
    s = instance_scores(empty, truth)
    assert (s.f1, s.recall, s.precision) == (0.0, 0.0, 1.0) and np.isnan(s.mean_iou)


# --- the file side: classes, probabilities, settings -----------------------------------------

def test_a_class_by_value_or_name_and_its_probability_channel():
    from napari_seg3d.engine.prediction.instance_files import class_probability, class_value_of

    values, names = (1, 5, 9), ("background", "Nucleus", "membrane")
    assert class_value_of(values, names, "5") == (5, 1)
    assert class_value_of(values, names, " nucleus ") == (5, 1)
    assert class_value_of(values, names, 9) == (9, 2)
    with pytest.raises(ValueError, match=r"no class 'cell'.*1 \(background\), 5 \(Nucleus\)"):
        class_value_of(values, names, "cell")
    probs = np.random.default_rng(0).random((3, 2, 3, 4), dtype=np.float32)
    np.testing.assert_array_equal(class_probability(probs, 2), probs[2])
    sigmoid = probs[:1]  # a one-output model: p is the probability of its second class
    np.testing.assert_array_equal(class_probability(sigmoid, 1), sigmoid[0])
    np.testing.assert_allclose(class_probability(sigmoid, 0), 1 - sigmoid[0])


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"method": "watershed"}, "Unknown instance method 'watershed'; choose one of auto, "
                              + "distance, probability, components."),
    ({"min_size": -1}, "must be 0 or more voxels"),
    ({"diameter": -2.0}, "must be positive"),
])
def test_instance_settings_are_checked(kwargs, words):
    from napari_seg3d.engine.prediction.instance_files import InstanceConfig

    with pytest.raises(ValueError, match=words):
        InstanceConfig(2, **kwargs)
