"""Bad input in napari (a real viewer and the plugin's widgets): every case of
:mod:`_bad_input_cases` shows its sentence as a notification (or a ``failed`` row of the Batch
widget), and the widget is ready for the next run."""

from __future__ import annotations

import _bad_input_cases as cases
import numpy as np
import pytest
from _bad_input_cases import (
    BAD_MODELS,
    CHANNELS,
    NO_IMAGE,
    PATCH,
    REFUSED,
    UNREADABLE,
    WORKS,
    cli_failed_file,
    painted,
)
from napari.utils.notifications import NotificationSeverity, notification_manager

from napari_seg3d._widgets.batch import BatchPredictWidget
from napari_seg3d._widgets.predict import PredictWidget
from napari_seg3d._widgets.train import TrainWidget
from napari_seg3d.engine import save_model
from napari_seg3d.engine.errors import VolumeError
from napari_seg3d.engine.io import write_volume
from napari_seg3d.engine.prediction.output_names import MANIFEST

# the shared fixtures (see _bad_input_cases), in this module
one_torch_thread = cases.one_torch_thread  # autouse
model = cases.model
two_channel_model = cases.two_channel_model
blocked = cases.blocked
WAIT_MS = 30_000


# --- the widgets ----------------------------------------------------------------------------------

@pytest.fixture
def notes():
    """The messages napari shows from now on, by severity (the notification manager's records:
    what the user sees at the bottom right of the window)."""
    start = len(notification_manager.records)

    def shown(severity=NotificationSeverity.ERROR) -> list[str]:
        return [str(n.message) for n in notification_manager.records[start:]
                if n.severity == severity]
    return shown


def train_widget(viewer) -> TrainWidget:
    widget = TrainWidget(viewer)
    viewer.window.add_dock_widget(widget)
    for spin, p in zip(widget.patch_spins, PATCH):
        spin.setValue(p)
    widget.iterations_spin.setValue(2)
    widget.filters_spin.setValue(4)
    widget.levels_spin.setValue(2)
    widget.self_training_spin.setValue(0)
    widget.quick_check.setChecked(False)
    widget.device_combo.setCurrentText("cpu")
    return widget


def predict_widget(viewer, model=None) -> PredictWidget:
    widget = PredictWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.device_combo.setCurrentText("cpu")
    if model is not None:
        widget.set_model(model)
    return widget


def batch_widget(viewer, inputs, model_file, out_dir) -> BatchPredictWidget:
    widget = BatchPredictWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.set_inputs(inputs)
    widget.set_model_path(model_file)
    widget.set_output_dir(out_dir)
    return widget


def press_train(qtbot, widget) -> bool:
    """Press Train; wait for the run (if it started) to end. Returns whether it started."""
    started = widget.start_training()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    assert widget.train_button.isEnabled() and not widget.stop_button.isEnabled()
    return started


def press_predict(qtbot, widget) -> bool:
    started = widget.start_prediction()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    assert widget.predict_button.isEnabled() and not widget.cancel_button.isEnabled()
    return started


def press_run(qtbot, widget) -> list[str]:
    """Run the batch; the statuses of its files once it is ready again."""
    widget.run()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    assert widget._run_button.isEnabled() and not widget._cancel_button.isEnabled()
    return [r.status for r in widget.results]


# --- arrays that must work ------------------------------------------------------------------------

def test_works_in_napari(make_napari_viewer, qtbot, blobs, notes):
    """Every case in one viewer, one after the other: each trains and predicts with the same
    two widgets."""
    viewer = make_napari_viewer()
    trainer, predictor = train_widget(viewer), predict_widget(viewer)
    for case, make in WORKS.items():
        image, labels = make(*blobs)
        viewer.layers.clear()
        viewer.add_image(image, name=case)
        viewer.add_labels(labels, name=f"{case} annotations")  # as opened: its own dtype
        assert trainer.annotation_combo.currentText() == f"{case} annotations"
        assert press_train(qtbot, trainer) and not notes(), (case, notes())
        assert trainer.model.class_values == tuple(sorted(painted(labels))), case
        predictor.model_combo.setCurrentText(f"{case} model")
        assert predictor.image_combo.currentText() == case
        assert press_predict(qtbot, predictor) and not notes(), (case, notes())
        pred = viewer.layers[f"{case} prediction"].data
        assert pred.shape == labels.shape and painted(pred) <= painted(labels), case
        assert predictor.status.text().startswith("Done"), case


# --- arrays that cannot work: one sentence on every surface ---------------------------------------

def test_refused_in_napari(make_napari_viewer, qtbot, blobs, notes):
    """Every case in one viewer, with the same Train widget: the sentence as a notification and
    in the status line, the strokes untouched, and (fixed) the widget trains."""
    viewer = make_napari_viewer()
    widget = train_widget(viewer)
    for case, (make, message, napari_message) in REFUSED.items():
        image, labels = make(*blobs)
        viewer.layers.clear()
        viewer.add_image(image, name="image")
        if labels.dtype.kind == "f":  # napari itself holds only integers in a Labels layer
            with pytest.raises(TypeError, match="Only integer types"):
                viewer.add_labels(labels, name="strokes")
            continue
        viewer.add_labels(labels, name="strokes")
        widget.annotation_combo.setCurrentText("strokes")
        before = len(notes())
        assert not press_train(qtbot, widget), case
        assert notes()[before:] == [widget.status.text()], (case, notes())
        assert (napari_message or message) in widget.status.text(), case
        assert widget.model is None, case
        np.testing.assert_array_equal(viewer.layers["strokes"].data, labels)  # never changed
    viewer.layers.clear()  # fixed: the same widget trains
    viewer.add_image(blobs[0], name="image")
    viewer.add_labels(blobs[2], name="strokes")
    assert press_train(qtbot, widget) and len(notes()) == len(REFUSED) - 1
    assert widget.model is not None and "best val Dice" in widget.status.text()


def test_prediction_refuses_other_shapes_and_all_nan(make_napari_viewer, qtbot, blobs, model,
                                                    tmp_path, capsys, notes):
    """Through a one-channel model: the same sentence from the engine, the command line and the
    Predict widget (which does not offer a 5D or (20, Z, Y, X) image at all)."""
    image = blobs[0]
    model_file = save_model(model, tmp_path / "m.pt")
    cases = {
        "5d": (image[None, None],
               "Expected a 3D image (Z, Y, X) or (C, Z, Y, X), got 5 dimensions.", NO_IMAGE),
        "t20": (np.stack([image] * 20),
                "This model was trained on 1-channel images; the image has 20 channel(s).",
                NO_IMAGE),
        "nan": (np.full_like(image, np.nan),
                "The image holds no finite value (all NaN or Inf).", None),
    }
    viewer = make_napari_viewer()
    widget = predict_widget(viewer, model)
    for name, (data, message, napari_message) in cases.items():
        with pytest.raises(ValueError) as error:
            model.predict(data, device="cpu")
        assert str(error.value) == message
        np.save(tmp_path / f"{name}.npy", data)
        assert cli_failed_file(capsys, tmp_path / f"{name}.npy", model_file,
                               tmp_path / "out") == message
        viewer.add_image(data, name=name)
        started = press_predict(qtbot, widget)
        assert started == (napari_message is None)  # an all-NaN image fails in the worker
        assert notes()[-1] == widget.status.text()
        assert notes()[-1] == message if napari_message is None else napari_message in notes()[-1]
    assert len(notes()) == 3 and widget.image_combo.count() == 1
    assert widget.status.text() == cases["nan"][1]
    viewer.layers["nan"].data = image  # fixed: the same widget predicts it
    assert press_predict(qtbot, widget) and len(notes()) == 3
    assert painted(viewer.layers["nan prediction"].data) <= {1, 2}


# --- files that cannot be read --------------------------------------------------------------------

def test_unreadable_files_in_napari(make_napari_viewer, qtbot, blobs, model, tmp_path, notes):
    """The Batch widget marks each file failed with the sentence (a row, not a notification) and
    is ready again; File > Open (this plugin's HDF5 reader) raises the sentence, which napari
    shows."""
    viewer = make_napari_viewer()
    widget = batch_widget(viewer, [], save_model(model, tmp_path / "model.pt"), tmp_path / "out")
    for i, (case, make) in enumerate(UNREADABLE.items()):
        (tmp_path / str(i)).mkdir()
        path, message = make(tmp_path / str(i), blobs[0], blobs[2])
        widget.set_inputs([path])
        assert press_run(qtbot, widget) == ["failed"], case
        assert message.format(path=path) in widget.results[0].reason, case
        assert widget._table.item(0, 1).text() == "failed" and not notes(), case
        if case == "truncated HDF5":
            with pytest.raises(VolumeError, match="truncated file"):
                viewer.open(path, plugin="napari-seg3d")
        if case.startswith("HDF5 with several"):  # the key named: done; the reader opens both
            widget.set_inputs([f"{path}:/raw"])
            assert press_run(qtbot, widget) == ["done"]
            viewer.open(path, plugin="napari-seg3d")
            assert {"raw", "labels"} <= {layer.name for layer in viewer.layers}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [MANIFEST,
                                                                    "several_raw_labels.tif"]


# --- model files that cannot be loaded ------------------------------------------------------------

def test_bad_model_files_in_napari(make_napari_viewer, qtbot, blobs, model, tmp_path, notes):
    """Loaded from the Train and the Predict widget, and run by the Batch widget: the sentence as
    a notification each time, the widgets ready, nothing run; then a good file works."""
    viewer = make_napari_viewer()
    viewer.add_image(blobs[0], name="image")
    trainer, predictor = train_widget(viewer), predict_widget(viewer)
    batch = batch_widget(viewer, [write_volume(tmp_path / "image.tif", blobs[0])], "",
                         tmp_path / "out")
    for i, (case, make) in enumerate(BAD_MODELS.items()):
        (tmp_path / str(i)).mkdir()
        path, message = make(tmp_path / str(i), model)
        before = len(notes())
        assert trainer.load_model_from(path) is None and trainer.model is None, case
        assert predictor.load_model_from(path) is None, case
        batch.set_model_path(path)
        assert press_run(qtbot, batch) == [], case
        assert len(notes()) == before + 3, (case, notes())
        assert all(n.startswith(message) for n in notes()[before:]), (case, notes())
        assert not (tmp_path / str(i) / "pwned").exists(), case
        assert trainer.train_button.isEnabled() and predictor.predict_button.isEnabled()
    good = save_model(model, tmp_path / "good.pt")  # then a good file: loaded, and the batch runs
    assert predictor.load_model_from(good) is not None
    batch.set_model_path(good)
    assert press_run(qtbot, batch) == ["done"] and len(notes()) == 3 * len(BAD_MODELS)


# --- a model for 2 channels, an image with 1 ------------------------------------------------------

def test_two_channel_model_on_a_one_channel_image_in_napari(make_napari_viewer, qtbot, blobs,
                                                            two_channel_model, model, tmp_path,
                                                            notes):
    model_file = save_model(two_channel_model, tmp_path / "two.pt")
    viewer = make_napari_viewer()
    viewer.add_image(blobs[0], name="image")
    viewer.add_labels(blobs[2], name="strokes")
    predictor = predict_widget(viewer, two_channel_model)
    assert not press_predict(qtbot, predictor)
    assert notes()[-1] == f"{CHANNELS} but 'image' has 1 channel(s); choose another image or model."
    trainer = train_widget(viewer)
    trainer.annotation_combo.setCurrentText("strokes")
    assert trainer.load_model_from(model_file) is not None  # Train now fine-tunes it
    assert not press_train(qtbot, trainer)
    assert notes()[-1] == f"{CHANNELS}; this image has 1."
    batch = batch_widget(viewer, [write_volume(tmp_path / "image.tif", blobs[0])], model_file,
                         tmp_path / "out")
    assert press_run(qtbot, batch) == ["failed"]
    assert "trained on 2-channel images" in batch.results[0].reason
    assert len(notes()) == 2
    predictor.set_model(model, "one channel")  # a fitting model: predicts
    assert press_predict(qtbot, predictor) and len(notes()) == 2


# --- an output folder that cannot be written ------------------------------------------------------

def test_unwritable_output_in_napari(make_napari_viewer, qtbot, blobs, model, blocked, tmp_path,
                                     notes):
    viewer = make_napari_viewer()
    viewer.add_image(blobs[0], name="image")
    viewer.add_labels(blobs[2], name="strokes")
    trainer = train_widget(viewer)
    trainer.annotation_combo.setCurrentText("strokes")
    assert press_train(qtbot, trainer)
    assert trainer.save_model_to(blocked / "m.pt") is None
    assert notes()[-1].startswith(f"Cannot save the model to {blocked / 'm.pt'} (Not a directory)")
    assert trainer.save_button.isEnabled()
    assert trainer.save_model_to(tmp_path / "m.pt") == tmp_path / "m.pt"
    batch = batch_widget(viewer, [write_volume(tmp_path / "image.tif", blobs[0])],
                         tmp_path / "m.pt", blocked)
    assert press_run(qtbot, batch) == []
    assert notes()[-1] == (f"Cannot write to the output folder {blocked} (Not a directory). "
                           "Choose a folder you can write to.")
    assert len(notes()) == 2
    batch.set_output_dir(tmp_path / "out")
    assert press_run(qtbot, batch) == ["done"] and len(notes()) == 2
