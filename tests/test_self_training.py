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
    pseudo, centres = trainer.sampler._pseudo
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


def test_self_training_is_skipped_on_volumes_above_the_limit(blobs, monkeypatch):
    from napari_seg3d.engine.training import self_training

    monkeypatch.setattr(self_training, "SELF_TRAINING_VOXELS", 100)
    image, _, labels = blobs
    trainer = _trainer(image, labels, _config(iterations=4, self_training=1))
    records, _ = _run(trainer)
    assert all(r.preview is None for r in records) and trainer.sampler._pseudo is None


def test_self_training_pseudo_labels_average_the_network_and_a_forest(blobs):
    image, truth, labels = blobs
    pseudo = {}
    for with_forest in (False, True):
        trainer = _trainer(image, labels, _config(iterations=12, self_training=1,
                                                  pseudo_threshold=0.6,
                                                  self_training_forest=with_forest))
        _run(trainer)
        pseudo[with_forest] = trainer.sampler._pseudo[0]
    from napari_seg3d.engine.training.self_training import _forest_probabilities

    forest = _forest_probabilities(trainer)
    assert forest.shape == (2,) + truth.shape
    np.testing.assert_allclose(forest.sum(0), 1, atol=1e-5)
    assert np.mean(forest.argmax(0) + 1 == truth) > 0.85  # the forest alone reads the blobs
    # the forest's opinion changes which voxels are sure, and makes the labels more right
    assert not np.array_equal(pseudo[False], pseudo[True])
    right = {k: np.sum((p > 0) & (p == truth)) for k, p in pseudo.items()}
    assert right[True] > right[False]
