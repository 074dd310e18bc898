"""The Train widget with a real viewer and real (tiny) CPU training."""

import numpy as np
import pytest
from napari.utils._proxies import PublicOnlyProxy

from napari_seg3d._widgets import train as train_module
from napari_seg3d._widgets._session import SESSION
from napari_seg3d._widgets.train import TrainWidget
from napari_seg3d.engine import default_model_config

WAIT_MS = 30_000


@pytest.fixture
def shown(monkeypatch):
    """Notifications the widget shows, by kind."""
    out = {"error": [], "warning": [], "info": []}
    for kind in out:
        monkeypatch.setattr(train_module, f"show_{kind}", out[kind].append)
    return out


@pytest.fixture
def viewer(make_napari_viewer, blobs):
    viewer = make_napari_viewer()
    viewer.add_image(blobs[0], name="blobs", scale=(2.0, 1.0, 1.0), translate=(4.0, 0.0, 1.0))
    return viewer


def make_widget(viewer, iterations=6):
    widget = TrainWidget(PublicOnlyProxy(viewer))  # what napari hands a plugin widget
    viewer.window.add_dock_widget(widget)
    for spin, p in zip(widget.patch_spins, (8, 16, 16)):
        spin.setValue(p)
    widget.iterations_spin.setValue(iterations)
    widget.batch_spin.setValue(2)
    widget.filters_spin.setValue(4)
    widget.levels_spin.setValue(2)
    widget.device_combo.setCurrentText("cpu")
    return widget


def annotated(widget, scribbles):
    layer = widget.new_annotation_layer()
    layer.data = scribbles.copy()
    return layer


def train(qtbot, widget):
    assert widget.start_training()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)


def first_progress(qtbot, widget):
    qtbot.waitUntil(lambda: widget._job is not None and widget._job.latest is not None,
                    timeout=WAIT_MS)


def annotated_voxels(trainer) -> int:
    ann = trainer.sampler.annotations
    return sum(len(c) for c in ann.train_coords) + sum(len(c) for c in ann.val_coords)


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


def test_strokes_painted_while_training_reach_the_trainer(qtbot, viewer, blobs, shown):
    widget = make_widget(viewer, iterations=100_000)
    layer = annotated(widget, blobs[2])
    assert widget.start_training()
    first_progress(qtbot, widget)
    sent = []
    send = widget.worker.send
    widget.worker.send = lambda value: (sent.append(value), send(value))
    before = annotated_voxels(widget.trainer)
    assert before == np.count_nonzero(blobs[2])
    free = np.argwhere(layer.data[8] == 0)[0]
    layer.paint((8, *free), 2)  # one stroke: emits layer.events.paint
    painted = np.count_nonzero(layer.data)
    qtbot.waitUntil(lambda: annotated_voxels(widget.trainer) == painted, timeout=WAIT_MS)
    assert sent and sent[-1].labels is not None and np.count_nonzero(sent[-1].labels) == painted
    layer.paint((12, 20, 20), 3)  # a value the model has no class for: ignored, with a warning
    qtbot.waitUntil(lambda: bool(shown["warning"]), timeout=WAIT_MS)
    assert "Label 3" in shown["warning"][0]
    widget.stop_training()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    assert not shown["error"], shown["error"]
    assert (layer.data == 3).any()  # the layer itself is never changed


def test_a_stroke_brings_a_live_preview_soon(qtbot, viewer, blobs, shown):
    widget = make_widget(viewer, iterations=100_000)
    layer = annotated(widget, blobs[2])
    widget.quick_check.setChecked(False)
    widget.preview_check.setChecked(True)
    widget.preview_interval_s = 3600  # no periodic preview: only the stroke asks for one
    assert widget.start_training()
    first_progress(qtbot, widget)
    previews = []
    show = widget._show_preview
    widget._show_preview = lambda p: (previews.append(p), show(p))
    free = np.argwhere(layer.data[8] == 0)[0]
    layer.paint((8, *free), 2)  # sent at once, or after SEND_INTERVAL_S; a preview follows
    qtbot.waitUntil(lambda: bool(previews), timeout=WAIT_MS)
    widget.stop_training()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    assert not shown["error"], shown["error"]
    assert viewer.layers["blobs preview"].data.any()


def test_live_preview_writes_the_preview_layer(qtbot, viewer, blobs, shown):
    widget = make_widget(viewer, iterations=100_000)
    annotated(widget, blobs[2])
    widget.quick_check.setChecked(False)
    widget.preview_check.setChecked(True)
    widget.preview_interval_s = 0.2
    viewer.dims.set_point(0, 2.0 * 9 + 4.0)  # z = 9 in data coordinates
    assert widget.start_training()
    qtbot.waitUntil(lambda: "blobs preview" in viewer.layers
                    and viewer.layers["blobs preview"].data.any(), timeout=WAIT_MS)
    widget.stop_training()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    preview = viewer.layers["blobs preview"]
    np.testing.assert_allclose(preview.scale, (2, 1, 1))
    np.testing.assert_allclose(preview.translate, (4, 0, 1))
    z = np.flatnonzero(preview.data.any(axis=(1, 2)))
    assert z.min() <= 9 <= z.max() and len(z) <= 8  # the patch around the displayed slice
    assert set(np.unique(preview.data)) <= {0, 1, 2}
    assert widget.annotation_combo.currentText() == "blobs annotations"
    assert viewer.layers.selection.active.name == "blobs annotations"


def test_instant_forest_preview_shows_the_displayed_slice_first(qtbot, viewer, blobs, shown):
    """Train: the random forest's first record is the slice on screen (over the view), shown
    before the network's first iteration; then the view region and the rest of the volume."""
    widget = make_widget(viewer, iterations=100_000)
    annotated(widget, blobs[2])
    assert widget.quick_check.isChecked()  # on by default
    viewer.dims.set_point(0, 2.0 * 9 + 4.0)  # z = 9 in data coordinates
    events = []
    show = widget._display.show_forest
    widget._display.show_forest = lambda image, records: (
        events.extend(("forest", r) for r in records), show(image, records))
    assert widget.start_training()
    widget.worker.yielded.connect(lambda p: events.append(("network", p)))
    job = widget._job
    qtbot.waitUntil(lambda: not job.forest.running, timeout=WAIT_MS)  # every pass done
    first_progress(qtbot, widget)
    widget.stop_training()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    assert not shown["error"], shown["error"]
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "forest" and "network" in kinds
    first = events[0][1]
    assert first.stage == "slice" and first.slices == (slice(9, 10), slice(0, 24), slice(0, 26))
    preview = viewer.layers["blobs preview"].data
    assert preview.shape == blobs[1].shape and preview.all()  # the whole (small) volume
    dice = [2 * np.sum((preview == v) & (blobs[1] == v)) / (np.sum(preview == v) + np.sum(blobs[1] == v))
            for v in (1, 2)]
    assert min(dice) > 0.8, dice


def test_the_model_is_never_saved_over_a_file_open_in_the_viewer(viewer, blobs, shown, tmp_path):
    """Save model onto the file the image and annotations were read from: refused, file kept."""
    from napari_seg3d.engine import SegmentationModel, TrainConfig, build_model, save_model
    from napari_seg3d.engine.io import write_volume
    from napari_seg3d.engine.normalization import Normalization

    config = default_model_config(1, 2, (8, 16, 16), base_filters=4, levels=2)
    model = SegmentationModel(network=build_model(config.architecture, **config.kwargs),
                              model_config=config, train_config=TrainConfig(patch_size=(8, 16, 16)),
                              class_values=(1, 2), normalization=Normalization((0.0,), (1.0,)))
    write_volume(f"{tmp_path / 'vol.h5'}:/raw", blobs[0])
    write_volume(f"{tmp_path / 'vol.h5'}:/annotations", blobs[2])
    viewer.open(tmp_path / "vol.h5", plugin="napari-seg3d")
    (tmp_path / "link.pt").symlink_to(tmp_path / "vol.h5")
    before = (tmp_path / "vol.h5").read_bytes()
    widget = make_widget(viewer)
    assert widget.load_model_from(save_model(model, tmp_path / "m.pt")) is not None
    for target in ("vol.h5", "link.pt"):
        assert widget.save_model_to(tmp_path / target) is None
        assert shown["error"][-1].startswith(f"Not saved: the model ({tmp_path / target}) would "
                                             "be written over the file of the layer ")
        assert shown["error"][-1].endswith("which would be lost. Choose another file name.")
    assert (tmp_path / "vol.h5").read_bytes() == before and (tmp_path / "link.pt").is_symlink()
    assert widget.save_model_to(tmp_path / "other.pt") == tmp_path / "other.pt"


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


def _no_image(viewer, widget, scribbles):
    viewer.layers.remove("blobs")


def _other_shape(viewer, widget, scribbles):
    viewer.add_labels(np.ones((5, 6, 7), np.uint8), name="other")
    widget.annotation_combo.setCurrentText("other")


def _empty(viewer, widget, scribbles):
    widget.new_annotation_layer()


def _one_class(viewer, widget, scribbles):
    widget.new_annotation_layer().data = (scribbles > 0).astype(np.uint8)


@pytest.mark.parametrize(("setup", "message"), [
    (_no_image, "no 3D image layer"),
    (_other_shape, "has shape (5, 6, 7)"),
    (_empty, "no annotations"),
    (_one_class, "Only one class"),
])
def test_user_errors_are_notified(viewer, blobs, shown, setup, message):
    widget = make_widget(viewer)
    setup(viewer, widget, blobs[2])
    layer = widget.annotation_layer()
    before = None if layer is None else layer.data.copy()
    assert not widget.start_training()
    assert len(shown["error"]) == 1 and message in shown["error"][0], shown["error"]
    assert widget.worker is None and widget.train_button.isEnabled()
    if layer is not None:
        np.testing.assert_array_equal(layer.data, before)


def test_error_in_the_worker_is_notified(qtbot, viewer, blobs, shown, monkeypatch):
    def broken_run(self):
        yield from ()
        raise RuntimeError("out of memory, say")

    monkeypatch.setattr(train_module.Trainer, "run", broken_run)
    widget = make_widget(viewer)
    widget.quick_check.setChecked(False)  # the error of the run itself, nothing before it
    layer = annotated(widget, blobs[2])
    train(qtbot, widget)
    assert len(shown["error"]) == 1 and "out of memory, say" in shown["error"][0]
    assert widget.train_button.isEnabled() and widget.model is None
    np.testing.assert_array_equal(layer.data, blobs[2])


def test_large_volumes_build_the_trainer_in_the_worker(qtbot, viewer, blobs, shown, monkeypatch):
    monkeypatch.setattr(train_module, "GUI_INIT_VOXELS", 0)
    widget = make_widget(viewer)
    layer = widget.new_annotation_layer()
    layer.data = (blobs[2] > 0).astype(np.uint8)
    assert not widget.start_training()  # the strokes are checked at once, whatever the size
    assert len(shown["error"]) == 1 and "Only one class" in shown["error"][0]
    assert widget.train_button.isEnabled() and widget.model is None
    layer.data = blobs[2].copy()
    train(qtbot, widget)
    assert len(shown["error"]) == 1 and widget.last_model.iteration == 6


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


def test_a_failing_instant_preview_does_not_stop_training(qtbot, viewer, blobs, shown,
                                                         monkeypatch):
    from napari_seg3d._widgets import _forest_job

    def broken_preview(*args, **kwargs):
        raise RuntimeError("forest exploded")
        yield  # a generator, as the real one

    monkeypatch.setattr(_forest_job, "instant_preview", broken_preview)
    widget = make_widget(viewer, iterations=3)
    annotated(widget, blobs[2])
    train(qtbot, widget)
    assert not shown["error"], shown["error"]
    assert widget.model is not None and widget.model.iteration >= 1


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
