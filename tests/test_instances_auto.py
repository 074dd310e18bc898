"""The default instance method, ``"auto"`` (issue 15.4): the distance watershed's seeds, then
the pieces that no neck separates merged, so touching balls are split and an elongated object
is not; its two small functions; and "auto" as the default everywhere a user chooses."""

from __future__ import annotations

import numpy as np
import pytest

from napari_seg3d.engine.metrics import instance_scores
from napari_seg3d.engine.prediction._necks import merge_without_necks, saddles
from napari_seg3d.engine.prediction.instance_files import METHODS, InstanceConfig
from napari_seg3d.engine.prediction.instances import instances


def balls(shape, centres, radius, voxel=(1.0, 1.0, 1.0)):
    """Bool mask of balls (physical units) and the 1-based index of each voxel's nearest centre."""
    grid = np.indices(shape).astype(float) * np.reshape(voxel, (3, 1, 1, 1))
    dist = np.stack([np.sqrt(sum((grid[i] - c[i]) ** 2 for i in range(3))) for c in centres])
    return (dist <= radius).any(axis=0), dist.argmin(axis=0) + 1


def capsule() -> np.ndarray:
    """A rod 6 in radius and 58 long (a segment of 46 with round ends), along x."""
    z, y, x = np.indices((20, 24, 70)).astype(float)
    return (z - 10) ** 2 + (y - 12) ** 2 + (x - np.clip(x, 12, 58)) ** 2 <= 36


def ellipsoid() -> np.ndarray:
    z, y, x = np.indices((20, 24, 70)).astype(float)
    return ((z - 10) / 6) ** 2 + ((y - 12) / 7) ** 2 + ((x - 35) / 25) ** 2 <= 1


@pytest.mark.parametrize(("centres", "radius"), [
    (((15.0, 20.0, 17.0), (15.0, 20.0, 37.0)), 11.0),  # two balls, a neck of radius 4.6
    (((12.0, 12.0, 10.0), (12.0, 12.0, 27.0), (12.0, 12.0, 44.0)), 10.0),  # a chain of three
    (((12.0, 12.0, 12.0), (12.0, 28.0, 12.0), (12.0, 20.0, 26.0)), 9.5),  # a triangle
])
def test_touching_balls_are_split(centres, radius):
    shape = tuple(int(max(c[i] for c in centres) + radius + 3) for i in range(3))
    mask, nearest = balls(shape, centres, radius)
    ids = instances(mask)  # the default: "auto"
    assert ids.max() == len(centres) and np.array_equal(ids > 0, mask)
    assert instance_scores(ids, np.where(mask, nearest, 0)).mean_iou > 0.95


@pytest.mark.parametrize("shape", [capsule, ellipsoid])
def test_an_elongated_object_is_not_split(shape):
    mask = shape()
    assert instances(mask, seeds="distance").max() > 2  # the tops of its ridge: over-split
    ids = instances(mask)
    assert ids.max() == 1 and np.array_equal(ids > 0, mask)


def test_anisotropic_touching_balls_are_split():
    voxel = (3.0, 1.0, 1.0)
    centres = ((18.0 - 6.0, 12.0, 12.0), (18.0 + 6.0, 12.0, 12.0))
    mask, nearest = balls((13, 25, 25), centres, 8.0, voxel)
    ids = instances(mask, voxel_size=voxel)
    assert ids.max() == 2
    assert instance_scores(ids, np.where(mask, nearest, 0)).mean_iou > 0.95


def test_a_probability_dip_keeps_pieces_apart():
    """Two pieces whose distance has no neck (a flat ridge) stay apart where the probability
    dips between them, and merge where it does not."""
    pieces = np.zeros((1, 1, 8), np.int32)
    pieces[0, 0, :4], pieces[0, 0, 4:] = 1, 2
    flat = np.full(pieces.shape, 5.0)
    dip = np.array([[[1.0, 1.0, 1.0, 0.3, 0.3, 1.0, 1.0, 1.0]]])
    assert merge_without_necks(pieces, [flat], 0.9).max() == 1
    np.testing.assert_array_equal(merge_without_necks(pieces, [flat, dip], 0.9), pieces)
    np.testing.assert_array_equal(merge_without_necks(pieces, [dip], 0.9), pieces)
    assert merge_without_necks(pieces, [dip], 0.3).max() == 1  # 0.3 >= 0.3 x 1.0


def test_saddles_are_the_highest_crossings():
    pieces = np.array([[[1, 1, 2, 2], [1, 1, 2, 2], [0, 3, 3, 0]]], np.int32)
    land = np.array([[[1.0, 4.0, 3.0, 1.0], [1.0, 2.0, 5.0, 1.0], [0.0, 7.0, 6.0, 0.0]]])
    found = saddles(pieces, land)
    assert found == {(1, 2): 3.0, (1, 3): 2.0, (2, 3): 5.0}
    assert saddles(np.ones((1, 2, 2), np.int32), land[:, :2, :2]) == {}


def test_auto_is_the_default_everywhere():
    from napari_seg3d._cli_instances import METHOD_NAMES
    from napari_seg3d._cli_parser import build_parser

    assert InstanceConfig(2).method == "auto" and METHODS["auto"] == {"method": "watershed",
                                                                        "seeds": "auto"}
    assert METHOD_NAMES[0] == "auto" and set(METHOD_NAMES) == set(METHODS)
    args = build_parser().parse_args(["predict", "--model", "m.pt", "--out", "o", "a.tif",
                                      "--instances", "2"])
    assert args.instance_method is None  # resolved to "auto" when the stage is built
    mask, _ = balls((30, 40, 55), ((15.0, 20.0, 17.0), (15.0, 20.0, 37.0)), 11.0)
    np.testing.assert_array_equal(InstanceConfig(1).apply(mask.astype(np.uint8)),
                                  instances(mask, seeds="auto"))


def test_the_widgets_offer_auto_first():
    from napari_seg3d._widgets._batch_instances import METHODS as BATCH
    from napari_seg3d._widgets._instances import METHODS as PREDICT

    assert next(iter(PREDICT.values())) == "auto" and next(iter(BATCH.values())) == "auto"


def test_unknown_seeds_are_one_sentence():
    with pytest.raises(ValueError, match="Unknown instance seeds 'maxima'; choose one of auto, "
                                         "distance, probability."):
        instances(np.ones((3, 3, 3), bool), seeds="maxima")
    with pytest.raises(ValueError, match="Unknown instance surface 'auto'; choose one of "
                                         "distance, probability."):
        instances(np.ones((3, 3, 3), bool), surface="auto")
