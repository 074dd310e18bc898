"""The default instance method, ``"auto"`` (issue 15.4): the watershed seeds from the distance
to the background, unless the smoothed class map has far fewer tops (elongated objects), so
touching balls are split and an elongated nucleus is not; "auto" is the default everywhere a
user chooses."""

from __future__ import annotations

import numpy as np
import pytest

from scipy import ndimage as ndi

from napari_seg3d.engine.metrics import instance_scores
from napari_seg3d.engine.prediction.instance_files import METHODS, InstanceConfig
from napari_seg3d.engine.prediction.instances import choose_seeds, estimate_diameter, instances


def balls(shape, centres, radius, voxel=(1.0, 1.0, 1.0)):
    """Bool mask of balls (physical units) and the 1-based index of each voxel's nearest centre."""
    grid = np.indices(shape).astype(float) * np.reshape(voxel, (3, 1, 1, 1))
    dist = np.stack([np.sqrt(sum((grid[i] - c[i]) ** 2 for i in range(3))) for c in centres])
    return (dist <= radius).any(axis=0), dist.argmin(axis=0) + 1


def rough_nucleus(seed: int, amplitude: float, centres=((10.0, 10.0, 18.0),),
                  shape=(20, 20, 36)) -> np.ndarray:
    """Ellipsoids of semi-axes 5, 5, 11 with a rough surface (a smooth random radius change of
    ``amplitude``): elongated nuclei, whose distance to the background has several tops."""
    rng = np.random.default_rng(seed)
    noise = ndi.gaussian_filter(rng.normal(0, 1, shape), 1.5)
    noise /= noise.std()
    z, y, x = np.indices(shape).astype(float)
    mask = np.zeros(shape, bool)
    for c in centres:
        r = ((z - c[0]) / 5) ** 2 + ((y - c[1]) / 5) ** 2 + ((x - c[2]) / 11) ** 2
        mask |= r <= (1 + amplitude * noise) ** 2
    return mask


def region_args(mask, voxel=(1.0, 1.0, 1.0)):
    regions, _ = ndi.label(mask, structure=ndi.generate_binary_structure(3, 1))
    sizes, boxes, voxel = np.bincount(regions.ravel()), ndi.find_objects(regions), np.array(voxel)
    return regions, boxes, sizes, voxel, estimate_diameter(regions, boxes, sizes, voxel)


TWO = ((15.0, 20.0, 17.0), (15.0, 20.0, 37.0))


@pytest.mark.parametrize(("centres", "radius"), [
    (TWO, 11.0),  # two balls, a neck of radius 4.6
    (((12.0, 12.0, 10.0), (12.0, 12.0, 27.0), (12.0, 12.0, 44.0)), 10.0),  # a chain of three
    (((12.0, 12.0, 12.0), (12.0, 28.0, 12.0), (12.0, 20.0, 26.0)), 9.5),  # a triangle
])
def test_touching_balls_are_split(centres, radius):
    shape = tuple(int(max(c[i] for c in centres) + radius + 3) for i in range(3))
    mask, nearest = balls(shape, centres, radius)
    assert choose_seeds(*region_args(mask)) == "distance"
    ids = instances(mask)  # the default: "auto"
    assert ids.max() == len(centres) and np.array_equal(ids > 0, mask)
    assert instance_scores(ids, np.where(mask, nearest, 0)).mean_iou > 0.95


@pytest.mark.parametrize(("seed", "amplitude"), [(0, 0.15), (1, 0.1), (2, 0.1), (2, 0.15)])
def test_an_elongated_nucleus_is_not_split(seed, amplitude):
    mask = rough_nucleus(seed, amplitude)
    assert ndi.label(mask)[1] == 1
    assert instances(mask, seeds="distance").max() > 1  # the tops of its ridge: over-split
    assert choose_seeds(*region_args(mask)) == "probability"
    ids = instances(mask)
    assert ids.max() == 1 and np.array_equal(ids > 0, mask)


def test_anisotropic_touching_balls_are_split():
    voxel = (3.0, 1.0, 1.0)
    centres = ((18.0 - 6.0, 12.0, 12.0), (18.0 + 6.0, 12.0, 12.0))
    mask, nearest = balls((13, 25, 25), centres, 8.0, voxel)
    ids = instances(mask, voxel_size=voxel)
    assert ids.max() == 2
    assert instance_scores(ids, np.where(mask, nearest, 0)).mean_iou > 0.95


def test_auto_reads_the_class_map_alone():
    """The same ids with or without a probability (the CLI and the widgets pass none)."""
    mask = rough_nucleus(2, 0.15)
    noisy = np.random.default_rng(0).random(mask.shape, dtype=np.float32)
    np.testing.assert_array_equal(instances(mask, probability=noisy), instances(mask))
    np.testing.assert_array_equal(instances(mask), instances(
        mask, seeds="probability", probability=mask.astype(np.float32)))


def test_no_region_seeds_from_the_distance():
    empty = np.zeros((4, 5, 6), bool)
    assert choose_seeds(*region_args(empty)) == "distance"
    assert instances(empty).max() == 0


def test_auto_is_the_default_everywhere():
    from napari_seg3d._cli_instances import METHOD_NAMES
    from napari_seg3d._cli_parser import build_parser

    assert InstanceConfig(2).method == "auto" and METHODS["auto"] == {"method": "watershed",
                                                                        "seeds": "auto"}
    assert METHOD_NAMES[0] == "auto" and set(METHOD_NAMES) == set(METHODS)
    args = build_parser().parse_args(["predict", "--model", "m.pt", "--out", "o", "a.tif",
                                      "--instances", "2"])
    assert args.instance_method is None  # resolved to "auto" when the stage is built
    mask, _ = balls((30, 40, 55), TWO, 11.0)
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
