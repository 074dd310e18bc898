"""The Train widget with a real viewer and real (tiny) CPU training."""

import numpy as np
import pytest
from napari.utils._proxies import PublicOnlyProxy

from napari_seg3d._widgets._session import SESSION
from napari_seg3d._widgets.train import TrainWidget
from _train_widget import (  # noqa: F401 (shown and viewer are fixtures)
    WAIT_MS, annotated, first_progress, make_widget, shown, train, viewer)


def test_new_annotation_layer(viewer, shown):
    widget = make_widget(viewer)
    assert widget.image_combo.currentText() == "blobs"
    assert [s.value() for s in widget.patch_spins] == [8, 16, 16]
    widget._on_image_changed()  # proposed from the image
    assert [s.value() for s in widget.patch_spins] == [8, 8, 8]  # 60% of (17, 24, 26)
    layer = widget.new_annotation_layer()
    assert layer.name == "blobs annotations"
    assert layer.data.shape == (17, 24, 26) and layer.data.dtype == np.uint8
    np.testing.assert_allclose(layer.scale, (2, 1, 1))
    np.testing.assert_allclose(layer.translate, (4, 0, 1))
    assert layer.mode == "paint" and layer.selected_label == 1 and layer.brush_size >= 1
    assert viewer.layers.selection.active is layer
    assert widget.annotation_combo.currentText() == layer.name
    assert widget.class_table.rowCount() == 1  # the next value to paint: 1
    layer.paint((3, 10, 10), 1)
    layer.paint((3, 2, 2), 2)
    widget._refresh_class_table()
    assert [widget.class_table.item(r, 0).text() for r in range(3)] == ["1", "2", "3"]
    widget.class_table.item(0, 1).setText("nucleus")
    assert widget.class_table.name(1) == "nucleus"
    assert not shown["error"]


def test_train_puts_model_in_session(qtbot, viewer, blobs, shown):
    widget = make_widget(viewer, iterations=6)
    layer = annotated(widget, blobs[2])
    before = layer.data.copy()
    widget.class_table.names.update({1: "background", 2: "ball"})
    train(qtbot, widget)
    assert not shown["error"], shown["error"]
    model = SESSION.get("blobs model")
    assert model is widget.model and model.class_values == (1, 2)
    assert model.class_names == ("background", "ball")
    assert widget.last_model.iteration == 6 and not widget.result.stopped
    np.testing.assert_allclose(model.voxel_size, (2, 1, 1))
    assert "val Dice background" in widget.status.text() or "no validation" in widget.status.text()
    assert "best val Dice" in widget.status.text()
    assert widget.train_button.isEnabled() and widget.continue_button.isEnabled()
    assert len(widget._history[1]) == 6
    assert len(widget.plot._loss_line.get_xdata()) == 6
    np.testing.assert_array_equal(layer.data, before)


@pytest.mark.parametrize("how", ["stop button", "worker quit"])
def test_stop_keeps_a_model(qtbot, viewer, blobs, shown, how):
    """Stop, or napari quitting the worker (its task cancel, the window closing)."""
    widget = make_widget(viewer, iterations=100_000)
    annotated(widget, blobs[2])
    assert widget.start_training()
    assert widget.stop_button.isEnabled() and not widget.train_button.isEnabled()
    first_progress(qtbot, widget)
    if how == "stop button":
        widget.stop_button.click()
    else:
        widget.worker.quit()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    assert widget.result.stopped
    assert widget.model is not None and 1 <= widget.last_model.iteration < 1000
    assert "Stopped at iteration" in widget.status.text()
    assert SESSION.get("blobs model") is widget.model
    assert widget.train_button.isEnabled() and not widget.stop_button.isEnabled()


def test_continue_training_advances_from_last(qtbot, viewer, blobs, shown):
    widget = make_widget(viewer, iterations=6)
    annotated(widget, blobs[2])
    train(qtbot, widget)
    first = widget.last_model
    widget.iterations_spin.setValue(4)
    assert widget.continue_training()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    assert not shown["error"], shown["error"]
    assert widget.last_model is not first and widget.last_model.iteration == 10
    assert widget.last_model.train_config.iterations == 10
    assert len(widget.last_model.history["loss"]) == 10
    assert widget._history[0] == list(range(1, 11))


def test_save_and_load_model(qtbot, viewer, blobs, shown, tmp_path):
    widget = make_widget(viewer, iterations=6)
    assert widget.save_model_to(tmp_path / "none.pt") is None and shown["error"]
    annotated(widget, blobs[2])
    train(qtbot, widget)
    path = widget.save_model_to(tmp_path / "blobs.pt")
    assert path.is_file()
    other = make_widget(viewer)
    model = other.load_model_from(path)
    assert model is other.model and model.class_values == (1, 2)
    assert SESSION.get("blobs.pt") is model
    assert other.fine_tune_check.isChecked() and other.continue_button.isEnabled()
    saved, trained = model.network.state_dict(), widget.model.network.state_dict()
    for key in trained:
        np.testing.assert_array_equal(saved[key].numpy(), trained[key].numpy())
    train(qtbot, other)  # fine-tunes the loaded model
    assert other.model is not model and other.model.class_values == (1, 2)
    (tmp_path / "bad.pt").write_bytes(b"not a model")
    shown["error"].clear()
    assert other.load_model_from(tmp_path / "bad.pt") is None
    assert "bad.pt" in shown["error"][0]


def test_channels_first_image(qtbot, make_napari_viewer, blobs, shown):
    viewer = make_napari_viewer()
    image = np.stack([blobs[0], -blobs[0]])  # (C, Z, Y, X)
    viewer.add_image(image, name="two", scale=(1.0, 2.0, 1.0, 1.0))
    widget = make_widget(viewer, iterations=4)
    assert widget.image_combo.currentText() == "two"
    layer = annotated(widget, blobs[2])
    assert layer.data.shape == (17, 24, 26)
    np.testing.assert_allclose(layer.scale, (2, 1, 1))
    train(qtbot, widget)
    assert not shown["error"], shown["error"]
    assert widget.model.in_channels == 2 and SESSION.get("two model") is widget.model


def test_advanced_settings_reach_the_config(viewer):
    from napari_seg3d.engine import TrainConfig

    defaults = TrainConfig()
    fresh = TrainWidget(PublicOnlyProxy(viewer))
    viewer.window.add_dock_widget(fresh)
    assert fresh.iterations_spin.value() == 0 and fresh.iterations_spin.text() == "auto"
    assert fresh.minutes_spin.value() == 3.0  # this machine has no GPU: the CPU's budget
    assert fresh.early_stop_check.isChecked() is defaults.early_stop
    assert fresh.smoothness_spin.value() == defaults.smoothness
    assert fresh.self_training_spin.value() == defaults.self_training
    widget = make_widget(viewer)
    widget.smoothness_spin.setValue(0.0)
    widget.self_training_spin.setValue(3)
    assert fresh.amp_check.isChecked() is defaults.amp
    widget.amp_check.setChecked(False)
    widget.early_stop_check.setChecked(False)
    cfg = widget.settings()
    assert (cfg["smoothness"], cfg["self_training"], cfg["iterations"], cfg["amp"]) == \
        (0.0, 3, 6, False)
    assert cfg["minutes"] is None and cfg["early_stop"] is False  # iterations given: no budget


def test_training_report_is_shown_and_saved(qtbot, viewer, blobs, shown, tmp_path):
    widget = make_widget(viewer, iterations=6)
    assert not widget.report_button.isEnabled()  # no model yet
    annotated(widget, blobs[2])
    train(qtbot, widget)
    assert widget.report_button.isEnabled()
    assert widget.show_report()
    qtbot.waitUntil(lambda: widget.report_dialog is not None, timeout=WAIT_MS)
    dialog = widget.report_dialog
    assert not dialog.pixmap.isNull() and dialog.pixmap.width() > 500
    path = dialog.save_to(tmp_path / "report.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Training report" in widget.status.text() and widget.report_button.isEnabled()
    dialog.close()
    assert not shown["error"], shown["error"]


def test_architecture_choice_builds_that_network(qtbot, viewer, blobs, shown):
    widget = make_widget(viewer, iterations=3)
    annotated(widget, blobs[2])
    assert [widget.architecture_combo.itemText(i) for i in range(3)] == \
        ["unet", "unetpp", "resenc_unet"]
    widget.architecture_combo.setCurrentText("unetpp")
    train(qtbot, widget)
    assert not shown["error"], shown["error"]
    assert widget.model.model_config.architecture == "unetpp"
    assert type(widget.model.network).__name__ == "UNetPlusPlus"


def test_the_plot_waits_with_plain_axes_and_the_class_table_keeps_three_rows(
        qtbot, viewer, blobs, shown):
    """Docked beside the Predict and Batch widgets, the class table still shows three rows;
    before the first step the plot shows plain axes and a hint, not matplotlib's +-0.05."""
    from napari_seg3d._widgets.batch import BatchPredictWidget
    from napari_seg3d._widgets.predict import PredictWidget

    widget = make_widget(viewer)
    for other in (PredictWidget, BatchPredictWidget):
        viewer.window.add_dock_widget(other(PublicOnlyProxy(viewer)))
    annotated(widget, blobs[2])
    table = widget.class_table
    qtbot.waitUntil(lambda: table.rowCount() == 3, timeout=WAIT_MS)  # two classes + next
    rows = sum(table.rowHeight(r) for r in range(3)) + table.horizontalHeader().height()
    assert table.minimumHeight() >= rows
    plot = widget.plot
    assert plot._hint is not None and plot.loss_axes.get_xlim() == (0, 100)
    assert plot.loss_axes.get_ylim() == (0, 1)
    train(qtbot, widget)
    assert not shown["error"], shown
    assert plot._hint is None and plot.loss_axes.get_xlim()[1] >= 6
