"""The random forest a model file keeps: fit at the end of training, saved as plain arrays,
averaged with the network at prediction (whole, block by block, the CLI), refused when damaged."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch
from conftest import run_to_end

from napari_seg3d import cli
from napari_seg3d.engine import (
    ModelFileError,
    TrainConfig,
    Trainer,
    default_model_config,
    describe,
    load_model,
    save_model,
)
from napari_seg3d.engine.training.forest import forest_predict
from napari_seg3d.engine.training.self_training import KEPT_TREES
from napari_seg3d.engine.training.views import ChannelView

PATCH = (8, 16, 16)


def _train(blobs, **settings):
    image, _, labels = blobs
    cfg = TrainConfig(patch_size=PATCH, batch_size=2, iterations=12, validate_every=6,
                      device="cpu", self_training=0, **settings)
    trainer = Trainer(image, labels, cfg, model_config=default_model_config(
        1, 2, PATCH, base_filters=4, levels=2))
    return run_to_end(trainer.run())


@pytest.fixture(scope="module")
def blobs_module():
    from napari_seg3d.engine.training.scribbles import simulate_scribbles

    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[:17, :24, :26]
    truth = np.zeros((17, 24, 26), np.uint8)
    for cz, cy, cx in [(5, 6, 7), (11, 16, 18), (8, 17, 6)]:
        truth[(z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 < 16] = 1
    image = (truth * 1.0 + rng.normal(0, 0.4, truth.shape)).astype(np.float32)
    strokes = simulate_scribbles(truth, slices_per_axis=2, strokes_per_class=2, length=8, seed=0)
    return image, truth + 1, strokes


@pytest.fixture(scope="module")
def trained(blobs_module):
    """(image, truth, strokes) of the blobs and the best model of a short run."""
    return blobs_module, _train(blobs_module).best


def test_a_trained_model_keeps_a_forest_that_the_prediction_averages_in(trained):
    (image, truth, _), model = trained
    assert model.forest is not None and len(model.forest.trees) == KEPT_TREES
    net = model.predict(image, device="cpu", probabilities=True, forest=False)
    forest = forest_predict(model.forest, ChannelView(image))
    blend = model.predict(image, device="cpu", probabilities=True)
    np.testing.assert_allclose(blend, (net + forest) / 2, atol=1e-6)
    labels = model.predict(image, device="cpu")
    np.testing.assert_array_equal(labels, np.asarray(model.class_values)[blend.argmax(0)])
    # the point of it: after 12 steps the network alone is poor, the blend is not
    accuracy = (labels == truth).mean()
    assert accuracy > 0.9 and accuracy > (model.predict(image, device="cpu", forest=False)
                                          == truth).mean()


def test_the_forest_survives_the_model_file_exactly(trained, tmp_path):
    (image, _, _), model = trained
    loaded = load_model(save_model(model, tmp_path / "m.pt"))
    assert len(loaded.forest.trees) == KEPT_TREES and loaded.forest.spacing == model.forest.spacing
    np.testing.assert_array_equal(loaded.predict(image, device="cpu", probabilities=True),
                                  model.predict(image, device="cpu", probabilities=True))
    assert describe(loaded)["forest_trees"] == KEPT_TREES
    raw = torch.load(tmp_path / "m.pt", weights_only=True)  # plain tensors and numbers
    assert isinstance(raw["forest"]["trees"][0]["threshold"], torch.Tensor)


def test_block_by_block_and_streamed_predictions_equal_the_whole_one(trained):
    (image, _, _), model = trained
    whole = model.predict(image, device="cpu", probabilities=True)
    blocks = model.predict(image, device="cpu", probabilities=True, block_shape=(8, 16, 16))
    np.testing.assert_allclose(blocks, whole, atol=1e-6)


def test_no_forest_without_keep_forest_and_an_old_file_predicts_with_the_network(
        blobs_module, trained, tmp_path):
    model = _train(blobs_module, keep_forest=False).best
    assert model.forest is None
    (image, _, _), with_forest = trained
    data = with_forest.to_dict()
    del data["forest"]  # a file written before the forest was kept
    torch.save(data, tmp_path / "old.pt")
    old = load_model(tmp_path / "old.pt")
    assert old.forest is None
    np.testing.assert_array_equal(old.predict(image, device="cpu"),
                                  with_forest.predict(image, device="cpu", forest=False))


def _damage_cycle(tree):
    tree["left"][0] = 0  # the root its own child: a path that never ends


def _damage_dtype(tree):
    tree["threshold"] = tree["threshold"].float()


def _damage_feature(tree):
    inner = int(torch.nonzero(tree["left"] >= 0)[0])
    tree["feature"][inner] = 999


def _damage_rows(tree):
    tree["values"] = tree["values"][:-1]


@pytest.mark.parametrize("damage", [_damage_cycle, _damage_dtype, _damage_feature, _damage_rows])
def test_a_damaged_forest_is_refused_with_a_sentence(trained, tmp_path, damage):
    _, model = trained
    data = model.to_dict()
    damage(data["forest"]["trees"][3])
    torch.save(data, tmp_path / "model.pt")
    with pytest.raises(ModelFileError, match="model.pt is damaged or incomplete.*forest"):
        load_model(tmp_path / "model.pt")


def test_the_command_line_predicts_with_the_forest_unless_told_not_to(trained, tmp_path,
                                                                      capsys):
    (image, _, _), model = trained
    save_model(model, tmp_path / "m.pt")
    tifffile.imwrite(tmp_path / "img.tif", image)
    for flag, out in (([], "with"), (["--no-forest"], "without")):
        assert cli.main(["predict", str(tmp_path / "img.tif"), "--model", str(tmp_path / "m.pt"),
                         "--out", str(tmp_path / out), "--quiet", *flag]) == 0
    with_forest = tifffile.imread(tmp_path / "with" / "img_labels.tif")
    np.testing.assert_array_equal(with_forest, model.predict(image, device="cpu"))
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "without" / "img_labels.tif"),
                                  model.predict(image, device="cpu", forest=False))
    capsys.readouterr()
    assert cli.main(["info", str(tmp_path / "m.pt")]) == 0
    assert json.loads(capsys.readouterr().out)["forest_trees"] == KEPT_TREES
