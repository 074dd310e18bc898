"""The instant random-forest preview: a fit that reads only tiles near the strokes it uses, and
records that show the displayed slice first and tile what they cover exactly once."""

import numpy as np
import pytest

from napari_seg3d.engine.normalization import compute_normalization
from napari_seg3d.engine.training.forest import fit_forest, fit_samples
from napari_seg3d.engine.training.forest_samples import TILE, limit_tiles, stroke_samples
from napari_seg3d.engine.training.instant import instant_preview, view_order, volume_order


class CountingReads:
    """A lazy ``(C, Z, Y, X)`` source that records the regions read from it."""

    def __init__(self, array: np.ndarray) -> None:
        self.array, self.shape, self.reads = array, array.shape, []

    def __getitem__(self, key):
        self.reads.append(tuple(key[1:]))
        return self.array[key]

    def voxels_read(self) -> int:
        return sum(int(np.prod([s.stop - s.start for s in r])) for r in self.reads)


def _two_class_volume(shape=(48, 70, 66), seed=0):
    """A noisy image of a bright slab of z and y, its truth (1/2), strokes on z slices 6 and 40."""
    rng = np.random.default_rng(seed)
    truth = np.ones(shape, np.uint8)
    truth[:, 25:50] = 2
    image = (truth + rng.normal(0, 0.3, shape)).astype(np.float32)
    labels = np.zeros(shape, np.uint8)
    for z in (6, 40):
        labels[z, 10:14, 5:60] = 1
        labels[z, 30:34, 5:60] = 2
    return image, truth, labels


def test_the_fit_reads_only_tiles_near_its_strokes():
    image, _, labels = _two_class_volume()
    source = CountingReads(image[None])
    norm = compute_normalization(image[None])
    forest = fit_forest(source, labels.astype(np.int16), norm, n_trees=4, n_jobs=1)
    assert forest.n_classes == 2
    halo = 21  # fast_halo of the default sigmas
    for region in source.reads:  # every read is a stroke slice's tiles with their halo
        z = region[0]
        assert any(z.start == max(s - halo, 0) and z.stop == min(s + 1 + halo, 48) for s in (6, 40))
    assert len(source.reads) == 2  # one read per z-row of tiles
    near = stroke_samples(labels, (1, 2), 200, near_z=38, seed=0)  # 220 a class on z = 40
    assert set(near.coords[:, 0]) == {40}  # enough strokes near z = 38: slice 6 is not drawn
    few = limit_tiles(near, 3)
    cells = {tuple(c) for c in few.coords // np.asarray(TILE)}
    assert len(cells) <= 3 and set(few.classes) == {0, 1}  # both classes keep tiles
    source.reads.clear()
    fit_samples(source, few, norm, n_trees=4, threads=1)
    assert len(source.reads) == 1 and source.voxels_read() < 0.5 * image.size


def test_stroke_samples_keep_per_class_and_skip_values():
    labels = np.zeros((5, 9, 9), np.uint16)
    labels[1, :, :4] = 7
    labels[3, :, 5:] = 300
    labels[2, 0, 0] = 9  # a value left out
    samples = stroke_samples(labels, (7, 300), 20, seed=1)
    assert np.bincount(samples.classes).tolist() == [20, 20]
    assert (labels[tuple(samples.coords.T)] == np.array([7, 300])[samples.classes]).all()
    again = stroke_samples(labels, (7, 300), 20, seed=1)
    np.testing.assert_array_equal(again.coords, samples.coords)


@pytest.mark.parametrize("view, z", [
    ((slice(2, 30), slice(5, 40), slice(0, 66)), 17),
    ((slice(0, 48), slice(0, 70), slice(0, 66)), 0),
    ((slice(40, 48), slice(60, 70), slice(3, 9)), 47),
])
def test_orders_start_at_the_slice_and_tile_exactly_once(view, z):
    shape = (48, 70, 66)
    first, *rest = view_order(view, z, slab=4)
    assert first == (slice(z, z + 1),) + view[1:]
    covered = np.zeros(shape, int)
    for region in [first, *rest]:
        covered[region] += 1
    assert (covered[view] == 1).all() and covered.sum() == covered[view].size
    distances = [min(abs(r[0].start - z), abs(r[0].stop - 1 - z)) for r in rest]
    assert distances == sorted(distances)  # nearest first
    outside = volume_order(shape, view, block=(8, 32, 32))
    for region in outside:
        covered[region] += 1
        assert all(s.stop - s.start <= b for s, b in zip(region, (8, 32, 32)))
    assert (covered == 1).all()


def test_instant_preview_shows_the_slice_first_then_each_pass_tiles_its_part():
    image, truth, labels = _two_class_volume()
    view, z = (slice(24, 48), slice(0, 70), slice(10, 50)), 40
    source = CountingReads(image[None])
    records = list(instant_preview(source, labels, view, z, seed=0))
    first = records[0]
    assert first.stage == "slice" and first.forest == "quick"
    assert first.slices == (slice(40, 41), slice(0, 70), slice(10, 50))
    assert first.labels.dtype == np.uint8 and set(np.unique(first.labels)) <= {1, 2}
    for name, part in (("quick", view), ("full", tuple(slice(0, n) for n in image.shape))):
        mine = [r for r in records if r.forest == name]
        assert [r.done for r in mine] == list(range(1, len(mine) + 1))
        assert all(r.total == len(mine) for r in mine)
        covered = np.zeros(image.shape, int)
        for r in mine:
            covered[r.slices] += 1
        assert (covered[part] == 1).all() and covered.sum() == covered[part].size
    full = np.zeros(image.shape, np.uint8)
    for r in records:
        if r.forest == "full":
            full[r.slices] = r.labels
    assert np.mean(full == truth) > 0.95
    stages = [r.stage for r in records if r.forest == "full"]
    assert stages[0] == "slice" and stages.index("volume") == len(view_order(view, z))


def test_a_large_volume_gets_the_view_region_only():
    image, _, labels = _two_class_volume()
    view = (slice(30, 46), slice(0, 70), slice(0, 66))
    records = list(instant_preview(image[None], labels, view, 38, volume_voxels=1000))
    assert {r.stage for r in records} == {"slice", "view"}
    with pytest.raises(ValueError, match="two classes"):
        next(instant_preview(image[None], (labels == 1).astype(np.uint8), view, 38))
