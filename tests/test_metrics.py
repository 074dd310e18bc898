"""Dice computed region by region equals the Dice of the whole volumes."""

import numpy as np

from napari_seg3d.engine.metrics import dice_of_regions, dice_scores
from napari_seg3d.engine.prediction.blocks import plan_blocks


def test_dice_of_regions_equals_the_whole_volume_dice():
    rng = np.random.default_rng(0)
    truth = rng.integers(1, 4, (9, 20, 17)).astype(np.uint8)
    pred = np.where(rng.random(truth.shape) < 0.8, truth, rng.integers(1, 4, truth.shape))
    blocks = plan_blocks(truth.shape, (4, 8, 8), 0.5, (4, 8, 8))
    regions = [(b.core, pred[b.core]) for b in blocks]
    covered = np.zeros(truth.shape, int)
    for slices, _ in regions:
        covered[slices] += 1
    assert (covered == 1).all()  # the regions tile the volume
    whole = dice_scores(pred, truth, [1, 2, 3, 5])
    parts = dice_of_regions(regions, truth, [1, 2, 3, 5])
    np.testing.assert_allclose(parts[:3], whole[:3])
    assert np.isnan(parts[3]) and np.isnan(whole[3])  # a class in neither
