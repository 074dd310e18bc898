"""The Predict widget's *Instances* option: an ``<image> instances`` Labels layer after a complete
prediction (real viewer, tiny model trained on the CPU)."""

import numpy as np
import pytest
from conftest import catch_notifications, run_to_end
from napari.utils._proxies import PublicOnlyProxy

from napari_seg3d._widgets import _instances
from napari_seg3d._widgets.predict import PredictWidget
from napari_seg3d.engine import TrainConfig, Trainer, default_model_config
from napari_seg3d.engine.prediction import disk_stores as large
from napari_seg3d.engine.prediction.instances import instances

WAIT_MS = 30_000
SCALE = (2.0, 1.0, 1.0)
_CACHE = {}


@pytest.fixture
def model(blobs):
    """A tiny two-class model (1 background, 2 ball) trained on the blobs scribbles."""
    if "model" not in _CACHE:
        image, _, scribbles = blobs
        cfg = TrainConfig(patch_size=(8, 16, 16), batch_size=2, iterations=40, device="cpu",
                          validate_every=10)
        mc = default_model_config(1, 2, cfg.patch_size, SCALE, base_filters=4, levels=2)
        gen = Trainer(image, scribbles, cfg, model_config=mc, voxel_size=SCALE).run()
        _CACHE["model"] = run_to_end(gen).best
    return _CACHE["model"]


@pytest.fixture
def shown(monkeypatch):
    return catch_notifications(monkeypatch, _instances, ("error", "info"))


@pytest.fixture
def widget(make_napari_viewer, blobs, model):
    viewer = make_napari_viewer()
    viewer.add_image(blobs[0], name="blobs", scale=SCALE, translate=(4.0, 0.0, 1.0))
    widget = PredictWidget(PublicOnlyProxy(viewer))
    viewer.window.add_dock_widget(widget)
    widget.device_combo.setCurrentText("cpu")
    widget.set_model(model)
    return widget


def predict(qtbot, widget):
    assert widget.start_prediction()
    qtbot.waitUntil(lambda: widget.worker is None and widget.instances.worker is None,
                    timeout=WAIT_MS)


def test_the_instances_checkbox_adds_an_instances_layer(qtbot, widget, shown):
    option = widget.instances
    assert [option.class_combo.itemText(i) for i in range(option.class_combo.count())] == [
        "class 1 (1)", "class 2 (2)"]
    assert option.class_combo.currentData() == 2 and not option.class_combo.isEnabled()
    option.check.setChecked(True)
    assert option.class_combo.isEnabled() and option.min_size_spin.isEnabled()
    predict(qtbot, widget)
    assert not shown["error"], shown
    viewer = widget.viewer
    layer = viewer.layers["blobs instances"]
    assert option.layer is layer and layer.metadata["seg3d_role"] == "instances"
    expected = instances(widget.layer.data, class_value=2, voxel_size=SCALE)
    assert expected.max() >= 1
    np.testing.assert_array_equal(layer.data, expected)
    np.testing.assert_allclose(layer.scale, SCALE)
    np.testing.assert_allclose(layer.translate, (4, 0, 1))
    assert shown["info"] == [f"'blobs instances': {expected.max()} objects."]
    assert viewer.layers.selection.active.name == "blobs"  # the brush stays where it was
    predict(qtbot, widget)  # a new prediction replaces the ids in the same layer
    assert [lay.name for lay in viewer.layers].count("blobs instances") == 1
    assert option.layer is layer


def test_no_instances_layer_unless_asked_for(qtbot, widget, shown):
    predict(qtbot, widget)
    assert "blobs instances" not in widget.viewer.layers and widget.instances.layer is None
    assert not shown["info"] and not shown["error"]


def test_the_probability_method_holds_the_probabilities_layer(qtbot, widget, shown):
    option = widget.instances
    option.check.setChecked(True)
    option.method_combo.setCurrentText("Watershed (probability)")
    assert widget.probabilities_check.isChecked() and not widget.probabilities_check.isEnabled()
    option.min_size_spin.setValue(3)
    predict(qtbot, widget)
    assert not shown["error"], shown
    probability = widget.probabilities_layer.data[1]
    expected = instances(widget.layer.data, class_value=2, seeds="probability",
                         probability=probability, voxel_size=SCALE, min_size=3)
    np.testing.assert_array_equal(widget.viewer.layers["blobs instances"].data, expected)
    option.method_combo.setCurrentText("Connected components")
    assert widget.probabilities_check.isEnabled()


def test_a_partial_prediction_gets_no_instances(widget, shown):
    option = widget.instances
    option.check.setChecked(True)
    labels = widget.viewer.add_labels(np.zeros((17, 24, 26), np.uint8), name="blobs prediction")
    assert not option.after(widget.viewer, False, "blobs", labels, None)
    assert shown["info"] == ["No instances: the prediction did not finish."]
    assert "blobs instances" not in widget.viewer.layers


def test_a_volume_above_the_limit_is_refused_with_a_sentence(widget, shown):
    option = widget.instances
    option.check.setChecked(True)
    option.max_voxels = 100
    labels = widget.viewer.add_labels(np.zeros((17, 24, 26), np.uint8), name="blobs prediction")
    assert not option.after(widget.viewer, True, "blobs", labels, None)
    assert len(shown["error"]) == 1 and "up to 100 voxels" in shown["error"][0]
    assert "blobs instances" not in widget.viewer.layers


def test_instances_of_a_prediction_on_disk(qtbot, widget, shown, monkeypatch, tmp_path):
    monkeypatch.setattr(large, "MEMORY_FRACTION", 0.0)  # every prediction goes to disk
    widget.large_folder_edit.setText(str(tmp_path))
    widget.instances.check.setChecked(True)
    predict(qtbot, widget)
    assert not shown["error"], shown
    labels = np.asarray(widget.layer.data)  # the zarr store the prediction layer shows
    assert not isinstance(widget.layer.data, np.ndarray)
    np.testing.assert_array_equal(widget.viewer.layers["blobs instances"].data,
                                  instances(labels, class_value=2, voxel_size=SCALE))
