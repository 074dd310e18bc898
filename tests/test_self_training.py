"""Self-training rounds: their schedule, the pseudo-labels (the network's sure voxels, averaged
with a random forest), strokes winning over them, resuming after a round, the size limit."""

from __future__ import annotations

import numpy as np
import pytest
from test_train import PATCH, _config, _one_torch_thread, _run, _trainer  # noqa: F401 (autouse fixture)

from napari_seg3d.engine import load_model, save_model


@pytest.mark.parametrize("iterations, rounds, expected", [
    (800, 2, [400, 600]), (800, 1, [400]), (800, 0, []), (6, 2, [3, 4]), (1, 2, [])])
def test_self_training_rounds_share_the_second_half(iterations, rounds, expected):
    from napari_seg3d.engine.training.schedule import self_training_starts

    assert self_training_starts(_config(iterations=iterations, self_training=rounds)) == expected


def test_self_training_pseudo_labels_the_sure_voxels_and_keeps_the_strokes(blobs):
    image, truth, labels = blobs
    trainer = _trainer(image, labels, _config(iterations=40, self_training=1,
                                              pseudo_threshold=0.6))
    records, result = _run(trainer)
    shown = [r for r in records if r.preview is not None]
    assert [r.iteration for r in shown] == [21]  # the round starts before iteration 21
    assert shown[0].preview.labels.shape == truth.shape
    assert shown[0].preview.slices == tuple(slice(0, n) for n in truth.shape)
    pseudo, centres = trainer.sampler._pseudo.dense(truth.shape), trainer.sampler._pseudo.centres
    sure = pseudo > 0
    assert sure.any() and len(centres) == 2
    # the pseudo-labels are the network's own prediction, where it was sure
    np.testing.assert_array_equal(pseudo[sure], shown[0].preview.labels[sure])
    for k, c in enumerate(centres):
        assert (pseudo[tuple(c.T)] == k + 1).all()
    # a batch: strokes keep their class where they disagree with the pseudo-labels
    ann = trainer.sampler.annotations
    start = (0, 0, 0)
    target, mask = trainer.sampler._train_target(ann, start, trainer.sampler.patch_size,
                                                 trainer.sampler._pseudo)
    idx = ann.index[:PATCH[0], :PATCH[1], :PATCH[2]]
    np.testing.assert_array_equal(target[idx > 0], idx[idx > 0] - 1)
    assert not mask[idx < 0].any()  # held-out strokes never train
    assert mask.mean() > (idx > 0).mean()
    assert result.last.iteration == 40


def test_resuming_after_self_training_began_pseudo_labels_again(blobs, tmp_path):
    image, _, labels = blobs
    config = _config(iterations=8, self_training=1)
    _, stopped = _run(_trainer(image, labels, config), stop_after=6)
    path = save_model(stopped.last, tmp_path / "run.last.pt")
    trainer = _trainer(image, labels, config, init=load_model(path), resume=True)
    records, result = _run(trainer)
    assert [r.iteration for r in records] == [7, 8] and records[0].preview is not None
    assert trainer.sampler._pseudo is not None and result.last.iteration == 8


def _round(trainer, iteration: int = 3):
    from napari_seg3d.engine.training.self_training import self_training_round

    preview = self_training_round(trainer, iteration)
    return preview, trainer.sampler._pseudo


@pytest.mark.parametrize("forest", [False, True])
def test_a_volume_above_the_round_budget_is_pseudo_labelled_on_sampled_blocks(blobs, monkeypatch,
                                                                             forest):
    """Above the budget a round predicts random blocks of the block plan up to the budget: each
    block's pseudo-labels are exactly those of the round over the whole volume, memory follows
    the budget, and another round draws other blocks."""
    from napari_seg3d.engine.training import self_training

    image, _, labels = blobs  # (17, 24, 26)
    monkeypatch.setattr(self_training, "ROUND_BLOCK", (8, 12, 13))  # 3 x 2 x 2 = 12 blocks
    trainer = _trainer(image, labels, _config(iterations=4, self_training=1,
                                              pseudo_threshold=0.6, self_training_forest=forest))
    _run(trainer)
    preview, whole = _round(trainer)
    assert preview is not None and len(whole.regions) == 12
    reference = whole.dense(image.shape)

    monkeypatch.setattr(self_training, "ROUND_VOXELS", 3 * 8 * 12 * 13)
    preview, part = _round(trainer)
    assert preview is None and 1 <= len(part.regions) < 12
    assert part.voxels <= 3 * 8 * 12 * 13
    for region, lab in zip(part.regions, part.labels):
        np.testing.assert_array_equal(lab, reference[region])
    _, other = _round(trainer, iteration=5)
    assert other.regions != part.regions
    for k, c in enumerate(part.centres):  # patch centres lie in the predicted blocks
        assert all(any(all(r.start <= v < r.stop for r, v in zip(reg, p)) for reg in part.regions)
                   for p in c)
        assert (part.dense(image.shape)[tuple(c.T)] == k + 1).all()


def test_the_round_over_blocks_equals_the_round_over_the_whole_volume(blobs, monkeypatch):
    """The same round with the volume as one block and cut into blocks: the same pseudo-labels
    (the sliding window's blocks blend the whole volume's windows; the forest's features see
    their halo)."""
    from napari_seg3d.engine.training import self_training

    image, _, labels = blobs
    trainer = _trainer(image, labels, _config(iterations=4, self_training=1,
                                              pseudo_threshold=0.6))
    _run(trainer)
    one, whole = _round(trainer)
    monkeypatch.setattr(self_training, "ROUND_BLOCK", (6, 10, 9))
    cut, blocks = _round(trainer)
    assert len(whole.regions) == 1 and len(blocks.regions) > 1
    same = np.mean(whole.dense(image.shape) == blocks.dense(image.shape))
    assert same > 0.999, same  # a voxel at the threshold may flip on float rounding
    assert np.mean(one.labels == cut.labels) > 0.999


def test_self_training_pseudo_labels_average_the_network_and_a_forest(blobs):
    image, truth, labels = blobs
    pseudo = {}
    for with_forest in (False, True):
        trainer = _trainer(image, labels, _config(iterations=12, self_training=1,
                                                  pseudo_threshold=0.6,
                                                  self_training_forest=with_forest))
        _run(trainer)
        pseudo[with_forest] = trainer.sampler._pseudo.dense(truth.shape)
    from napari_seg3d.engine.training.self_training import _forest_probabilities

    forest = _forest_probabilities(trainer)
    assert forest.shape == (2,) + truth.shape
    np.testing.assert_allclose(forest.sum(0), 1, atol=1e-5)
    assert np.mean(forest.argmax(0) + 1 == truth) > 0.85  # the forest alone reads the blobs
    # the forest's opinion changes which voxels are sure, and makes the labels more right
    assert not np.array_equal(pseudo[False], pseudo[True])
    right = {k: np.sum((p > 0) & (p == truth)) for k, p in pseudo.items()}
    assert right[True] > right[False]
