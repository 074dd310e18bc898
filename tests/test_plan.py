"""The training plan: one function turns the image, the strokes and the user's settings into the
run, and the command line and the Train widget get the same run from the same inputs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from napari.utils._proxies import PublicOnlyProxy

from napari_seg3d.cli import main
from napari_seg3d.engine import TrainConfig, load_model
from napari_seg3d.engine.io import write_volume
from napari_seg3d.engine.plan import NETWORK_SETTINGS, plan_training, window_for

SHAPE = (17, 24, 26)


def _strokes(values=(1, 2)) -> np.ndarray:
    labels = np.zeros(SHAPE, np.uint8)
    for i, v in enumerate(values):
        labels[3 + 4 * i, 5:12, 5:12] = v
    return labels


def test_defaults_are_planned_from_the_image():
    plan = plan_training(SHAPE, _strokes(), voxel_size=(2.0, 1.0, 1.0))
    cfg, mc = plan.train_config, plan.model_config
    assert cfg.patch_size == (8, 8, 8) and cfg.batch_size == 2 and plan.start_iteration == 0
    # no iterations given: the default time budget (a CPU here), at most 800 steps, validations
    # planned once the total is fixed
    assert (cfg.minutes, cfg.iterations, cfg.validate_every) == (3.0, 800, 0)
    assert mc.kwargs["out_channels"] == 2 and mc.kwargs["base_filters"] == 16
    assert mc.kwargs["spatial_dims"] == 3 and mc.architecture == "unet"


@pytest.mark.parametrize(("settings", "check"), [
    ({"iterations": 30}, lambda c, m: (c.iterations, c.validate_every) == (30, 5)),
    ({"iterations": 300}, lambda c, m: c.validate_every == 30),
    ({"validate_every": 7}, lambda c, m: c.validate_every == 7),
    ({"loss": "bce"}, lambda c, m: m.kwargs["out_channels"] == 1),
    ({"dims": 2}, lambda c, m: c.batch_size == 8 and m.kwargs["spatial_dims"] == 2),
    ({"base_filters": 4, "levels": 2}, lambda c, m: (m.kwargs["base_filters"],
                                                     m.kwargs["levels"]) == (4, 2)),
    ({"patch_size": (8, 16, 16), "batch_size": 3}, lambda c, m: (c.patch_size, c.batch_size)
     == ((8, 16, 16), 3)),
    ({"architecture": "unetpp", "seed": 4}, lambda c, m: (m.architecture, c.seed) == ("unetpp", 4)),
])
def test_settings_win_over_the_plan(settings, check):
    plan = plan_training(SHAPE, _strokes(), settings=settings)
    assert check(plan.train_config, plan.model_config)


def test_three_classes_give_three_outputs_and_unknown_settings_are_named():
    assert plan_training(SHAPE, _strokes((1, 2, 5))).model_config.kwargs["out_channels"] == 3
    assert plan_training(SHAPE, 4).model_config.kwargs["out_channels"] == 4
    with pytest.raises(ValueError, match="Unknown training settings: patch, speed"):
        plan_training(SHAPE, _strokes(), settings={"patch": 8, "speed": 1})


def test_a_resumed_run_keeps_its_settings_and_counts_added_iterations(tmp_path):
    from napari_seg3d.engine import Trainer

    first = plan_training(SHAPE, _strokes(), settings={
        "iterations": 2, "patch_size": (8, 16, 16), "base_filters": 4, "levels": 2,
        "learning_rate": 0.01, "device": "cpu"})
    image = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    trainer = Trainer(image, _strokes(), first.train_config, model_config=first.model_config)
    gen = trainer.run()
    for _ in gen:
        pass
    model = trainer.model
    model.iteration = 2
    plan = plan_training(SHAPE, _strokes(), settings={"iterations": 3}, init=model, resume=True)
    assert plan.start_iteration == 2 and plan.train_config.iterations == 5
    assert plan.train_config.learning_rate == 0.01 and plan.model_config is None
    assert plan.train_config.patch_size == (8, 16, 16)
    with pytest.raises(ValueError, match="is a 3D network; a 2D network"):
        plan_training(SHAPE, _strokes(), settings={"dims": 2}, init=model)


def test_window_of_a_2d_model_is_clipped_to_the_image():
    assert window_for((16, 64, 64), 3, (5, 100, 100)) == (16, 64, 64)
    assert window_for((16, 64, 64), 2, (5, 100, 100)) == (5, 64, 64)


def test_network_settings_are_the_config_file_keys():
    from napari_seg3d._config_file import setting_names

    assert set(setting_names()) == {f for f in TrainConfig().to_dict()} | set(NETWORK_SETTINGS)


@pytest.mark.parametrize(("network", "steps"), [
    ("3D U-Net", "iterations"), ("2.5D: 2D U-Net on z, y, x slices", "iterations"),
    ("3D U-Net", "minutes")])
def test_the_command_line_and_the_train_widget_plan_the_same_run(make_napari_viewer, qtbot,
                                                                 tmp_path, network, steps):
    """The same image, voxel size, strokes and settings, through ``napari-seg3d train`` and
    through the Train widget with its proposed values untouched: the same training settings and
    the same network. With a time budget each run fixes its own total from its own speed:
    everything else is the same."""
    from napari_seg3d._widgets.train import TrainWidget

    image = np.random.default_rng(1).normal(size=SHAPE).astype(np.float32)
    strokes = _strokes()
    voxel = (2.0, 1.0, 1.0)
    write_volume(tmp_path / "image.tif", image, voxel_size=voxel)
    write_volume(tmp_path / "labels.tif", strokes)
    dims = ["--dims", "2"] if network.startswith("2.5D") else []
    count = ["--iterations", "3"] if steps == "iterations" else ["--minutes", "0.1"]
    assert main(["train", "--image", str(tmp_path / "image.tif"), "--labels",
                 str(tmp_path / "labels.tif"), "--out", str(tmp_path / "cli.pt"), *count,
                 "--no-report", "--quiet", *dims]) == 0
    cli = load_model(tmp_path / "cli.pt")

    viewer = make_napari_viewer()
    viewer.add_image(image, name="image", scale=voxel)
    widget = TrainWidget(PublicOnlyProxy(viewer))
    viewer.window.add_dock_widget(widget)
    widget.network_combo.setCurrentText(network)
    assert widget.dims == (2 if dims else 3)
    if steps == "iterations":
        widget.iterations_spin.setValue(3)
    else:
        assert widget.iterations_spin.value() == 0  # auto: the time budget decides
        widget.minutes_spin.setValue(0.1)
    layer = widget.new_annotation_layer()
    layer.data = strokes.copy()
    assert widget.start_training()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    gui = widget.last_model
    if steps == "minutes":  # the totals follow from each run's speed
        assert gui.history["budget"]["minutes"] == cli.history["budget"]["minutes"] == 0.1
        for model in (gui, cli):
            assert model.train_config.iterations == model.history["budget"]["iterations"]
            # a run too short for self-training rounds goes without them (budget.py)
            assert model.train_config.self_training == model.history["budget"]["self_training"]
        gui.train_config = dataclasses.replace(gui.train_config,
                                               iterations=cli.train_config.iterations,
                                               validate_every=cli.train_config.validate_every,
                                               self_training=cli.train_config.self_training)
    assert gui.train_config == cli.train_config
    assert gui.model_config.to_dict() == cli.model_config.to_dict()
