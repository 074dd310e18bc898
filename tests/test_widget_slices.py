"""2.5D models (a 2D network on slices) and TensorBoard logging from the widgets: Train builds
and trains the chosen network, Predict and Batch predict apply it along the chosen planes."""

import numpy as np
import pytest
from napari.utils._proxies import PublicOnlyProxy
from test_widget_train import annotated, make_widget, shown, train, viewer  # noqa: F401

from napari_seg3d._widgets import batch as batch_module
from napari_seg3d._widgets import predict as predict_module
from napari_seg3d._widgets._session import SESSION, Session
from napari_seg3d._widgets.batch import BatchPredictWidget
from napari_seg3d._widgets.predict import PredictWidget
from napari_seg3d.engine import save_model
from napari_seg3d.engine.io import read_volume, write_volume

SLICES = "2.5D: 2D U-Net on z, y, x slices"


@pytest.fixture
def trained_2d(qtbot, viewer, blobs, shown, tmp_path, one_thread):  # noqa: F811
    """The Train widget set to 2.5D (planes fast, TensorBoard on, mixed precision off), after 6
    iterations."""
    widget = make_widget(viewer, iterations=6)
    annotated(widget, blobs[2])
    assert not widget.planes_combo.isEnabled()
    widget.network_combo.setCurrentText(SLICES)
    assert widget.planes_combo.isEnabled() and widget.batch_spin.value() == 8
    assert [s.value() for s in widget.patch_spins] == [8, 8, 8]  # 2D proposal for (17, 24, 26)
    for spin, p in zip(widget.patch_spins, (8, 16, 16)):
        spin.setValue(p)
    widget.planes_combo.setCurrentText("fast")
    widget.tensorboard_edit.setText(str(tmp_path / "runs"))
    widget.amp_check.setChecked(False)  # float32 training, and prediction as trained
    train(qtbot, widget)
    assert not shown["error"], shown["error"]
    return widget


def test_train_widget_trains_a_2d_network_on_slices(trained_2d, tmp_path):
    model = trained_2d.model
    assert model.dims == 2 and type(model.network).__name__ == "SliceNetwork"
    assert model.model_config.kwargs["spatial_dims"] == 2
    assert model.train_config.planes == "fast" and model.train_config.batch_size == 8
    assert model.train_config.amp is False
    assert SESSION.get("blobs model") is model
    assert list((tmp_path / "runs").glob("events.out.tfevents.*"))


def test_predict_widget_applies_the_chosen_planes(qtbot, trained_2d, blobs, monkeypatch):
    errors = []
    monkeypatch.setattr(predict_module, "show_error", errors.append)
    model = trained_2d.model
    widget = PredictWidget(PublicOnlyProxy(trained_2d.viewer))
    trained_2d.viewer.window.add_dock_widget(widget)
    widget.device_combo.setCurrentText("cpu")
    widget.set_model(model, "2d")
    assert widget.planes_combo.isEnabled()
    widget.planes_combo.setCurrentText("best")
    assert widget.start_prediction()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=30_000)
    assert not errors, errors
    expected = model.predict(blobs[0], planes="best", device="cpu")
    np.testing.assert_array_equal(widget.layer.data, expected)
    assert not np.array_equal(expected, model.predict(blobs[0], planes="fast", device="cpu"))
    widget.planes_combo.setCurrentText("as trained")
    assert widget.start_prediction()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=30_000)
    np.testing.assert_array_equal(widget.layer.data,
                                  model.predict(blobs[0], planes="fast", device="cpu"))


def test_batch_widget_applies_the_chosen_planes(qtbot, trained_2d, blobs, tmp_path,
                                                monkeypatch):
    monkeypatch.setattr(batch_module, "SESSION", Session())
    model = trained_2d.model
    source = write_volume(tmp_path / "in" / "a.tif", blobs[0])
    widget = BatchPredictWidget(trained_2d.viewer)
    trained_2d.viewer.window.add_dock_widget(widget)
    widget.set_inputs([source])
    widget.set_model_path(save_model(model, tmp_path / "m2d.pt"))
    widget.set_output_dir(tmp_path / "out")
    widget.set_options(planes="three")
    widget.run()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=30_000)
    assert [r.status for r in widget.results] == ["done"]
    written = np.asarray(read_volume(tmp_path / "out" / "a_labels.tif").data)
    np.testing.assert_array_equal(written, model.predict(blobs[0], planes="three", device="cpu"))
    with pytest.raises(ValueError, match="Unknown planes 'all'"):
        widget.set_options(planes="all")


def test_loading_a_2d_model_shows_its_settings(trained_2d, tmp_path, viewer):  # noqa: F811
    path = save_model(trained_2d.model, tmp_path / "m2d.pt")
    widget = make_widget(viewer)
    assert widget.dims == 3
    assert widget.load_model_from(path) is not None
    assert widget.dims == 2 and widget.planes_combo.currentText() == "fast"
    assert [s.value() for s in widget.patch_spins] == [8, 16, 16]
    assert widget.batch_spin.value() == 8 and widget.fine_tune_check.isChecked()
    assert not widget.amp_check.isChecked()  # the model was trained in float32
