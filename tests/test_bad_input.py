"""Bad input, tried for real (issue 4): every case through the engine, the command line
(``napari_seg3d.cli.main`` in-process) and the napari widgets (a real viewer), with real files and
tiny real models; no mocks. The table "Cases we test" in docs/errors.md is this module.

A case that cannot work must give: in the engine, a Seg3DError (or ValueError) with a sentence; on
the command line, exit code 2 and that sentence as the one line on stderr (``predict`` marks the
file ``failed`` with it and exits 3: the other files go on); in napari, the sentence as a
notification (or a ``failed`` row of the Batch widget), and the widget ready for the next run.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from napari.utils.notifications import NotificationSeverity, notification_manager

from napari_seg3d._widgets.batch import BatchPredictWidget
from napari_seg3d._widgets.predict import PredictWidget
from napari_seg3d._widgets.train import TrainWidget
from napari_seg3d.cli import main
from napari_seg3d.engine import (
    AnnotationError,
    ModelFileError,
    SegmentationModel,
    TrainConfig,
    Trainer,
    default_model_config,
    load_model,
    save_model,
)
from napari_seg3d.engine.errors import OutputError, VolumeError, writable_folder
from napari_seg3d.engine.io import read_volume, write_volume

PATCH = (8, 16, 16)
TINY = ["--patch-size", "8", "16", "16", "--base-filters", "4", "--levels", "2", "--iterations", "2",
        "--self-training", "0", "--no-report", "--quiet", "--device", "cpu"]
WAIT_MS = 30_000
_CACHE: dict[str, SegmentationModel] = {}
FEW = settings(max_examples=25, deadline=None)


# --- tiny models, files and the three surfaces ----------------------------------------------------

@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny networks gain nothing from more threads, and on a busy machine OpenMP threads waiting
    for each other make them many times slower (as in test_train.py)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def train(image, labels, iterations: int = 2, **kwargs) -> SegmentationModel:
    """The best model of a tiny network trained for ``iterations`` on the CPU."""
    cfg = TrainConfig(patch_size=PATCH, batch_size=2, iterations=iterations, device="cpu",
                      validate_every=iterations, self_training=0)
    channels = image.shape[0] if np.ndim(image) == 4 else 1
    classes = len(np.unique(labels[labels > 0]))
    mc = default_model_config(channels, classes, PATCH, base_filters=4, levels=2)
    run = Trainer(image, labels, cfg, model_config=mc, **kwargs).run()
    while True:
        try:
            next(run)
        except StopIteration as done:
            return done.value.best


@pytest.fixture
def model(blobs) -> SegmentationModel:
    """A one-channel model of the blobs (trained once)."""
    if "one" not in _CACHE:
        _CACHE["one"] = train(blobs[0], blobs[2])
    return _CACHE["one"]


@pytest.fixture
def two_channel_model(blobs) -> SegmentationModel:
    """A model for 2-channel images (untrained: its channel count is what matters)."""
    if "two" not in _CACHE:
        image = np.stack([blobs[0], -blobs[0]])
        mc = default_model_config(2, 2, PATCH, base_filters=4, levels=2)
        _CACHE["two"] = Trainer(image, blobs[2], TrainConfig(patch_size=PATCH, device="cpu"),
                                model_config=mc).model
    return _CACHE["two"]


def cli(capsys, *args) -> tuple[int, str, str]:
    """Run the command in-process: ``(exit code, stdout, stderr)``."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def cli_error(capsys, *args) -> str:
    """Run a command that must fail with exit code 2 and one line ``napari-seg3d <command>: error:
    <sentence>`` on stderr; returns that line."""
    code, _, err = cli(capsys, *args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, (code, err)
    assert lines[0].startswith(f"napari-seg3d {args[0]}: error: "), lines[0]
    return lines[0]


def cli_failed_file(capsys, image, model_file, out_dir) -> str:
    """``predict`` one file that must fail: exit code 3, a ``failed`` line with the reason on
    stdout, the count on stderr; returns the reason."""
    code, out, err = cli(capsys, "predict", image, "--model", model_file, "--out", out_dir,
                         "--quiet", "--device", "cpu")
    assert code == 3 and err.strip() == "1 of 1 file(s) failed.", (code, out, err)
    status, _, reason = out.strip().partition(" -> ")
    assert status.split()[0] == "failed", out
    return reason


def cli_train(capsys, tmp_path, image, labels, *extra) -> tuple[int, str, str]:
    return cli(capsys, "train", "--image", image, "--labels", labels, "--out",
               tmp_path / "m.pt", *TINY, *extra)


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

def three_classes(scribbles: np.ndarray) -> np.ndarray:
    """The blobs strokes painted 1 (background), 5 (the ball at the top) and 200 (the others)."""
    y = np.indices(scribbles.shape)[1]
    return np.select([scribbles == 1, (scribbles == 2) & (y < 12), scribbles == 2],
                     [1, 5, 200]).astype(np.uint8)


def with_nan_and_inf(image: np.ndarray) -> np.ndarray:
    image = image.copy()
    image[0, :5, :5] = np.nan
    image[3, 10:12, 10:12] = np.inf
    image[4, 0, :] = -np.inf
    return image


def smaller_than_the_patch(image, truth):
    """(5, 10, 12) around the first ball, one row painted across it."""
    crop = (slice(2, 7), slice(1, 11), slice(2, 14))
    labels = np.zeros((5, 10, 12), np.uint8)
    labels[3, 5] = truth[crop][3, 5]
    return image[crop], labels


def one_slice(image, truth):
    """The slice z = 5 alone, ``(1, Y, X)``, one row painted across a ball."""
    labels = np.zeros((1,) + image.shape[1:], np.uint8)
    labels[0, 6] = truth[5, 6]
    return image[5:6], labels


WORKS = {
    "bool image": lambda image, truth, scr: (truth == 2, scr),
    "float64 image": lambda image, truth, scr: (image.astype(np.float64), scr),
    "NaN and Inf in the image": lambda image, truth, scr: (with_nan_and_inf(image), scr),
    "int64 labels": lambda image, truth, scr: (image, scr.astype(np.int64)),
    "labels 1, 5, 200": lambda image, truth, scr: (image, three_classes(scr)),
    "image smaller than the patch": lambda image, truth, scr: smaller_than_the_patch(image, truth),
    "one-slice image": lambda image, truth, scr: one_slice(image, truth),
    "channels (C, Z, Y, X)": lambda image, truth, scr: (np.stack([image, -image]), scr),
}


def painted(labels) -> set[int]:
    return {int(v) for v in np.unique(labels) if v}


@pytest.mark.parametrize("case", WORKS)
def test_works_in_the_engine(blobs, case):
    image, labels = WORKS[case](*blobs)
    model = train(image, labels)
    assert model.class_values == tuple(sorted(painted(labels)))
    pred = model.predict(image, device="cpu")
    probs = model.predict(image, device="cpu", probabilities=True)
    assert pred.shape == labels.shape and probs.shape[1:] == labels.shape
    assert painted(pred) <= painted(labels)
    lut = np.asarray(model.class_values)  # class k comes back as the k-th painted value
    assert np.mean(pred == lut[probs.argmax(0)]) > 0.999


@pytest.mark.parametrize("case", WORKS)
def test_works_on_the_command_line(blobs, tmp_path, capsys, case):
    image, labels = WORKS[case](*blobs)
    image_file = write_volume(tmp_path / "image.tif", image)
    labels_file = write_volume(tmp_path / "labels.tif", labels)
    code, out, err = cli_train(capsys, tmp_path, image_file, labels_file)
    assert code == 0 and not err, err
    code, out, err = cli(capsys, "predict", image_file, "--model", tmp_path / "m.pt", "--out",
                         tmp_path / "out", "--quiet", "--device", "cpu")
    assert code == 0 and out.startswith("done"), (out, err)
    pred = read_volume(tmp_path / "out" / "image_labels.tif").data
    assert pred.shape == labels.shape and painted(pred) <= painted(labels)
    if case == "labels 1, 5, 200":
        assert cli(capsys, "info", tmp_path / "m.pt")[1].count('"200": "class 200"') == 1


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

def _float_labels(image, truth, scr):
    return image, scr.astype(np.float32)


def _all_nan(image, truth, scr):
    return np.full_like(image, np.nan), scr


def _one_class(image, truth, scr):
    return image, (scr > 0).astype(np.uint8)


def _no_annotations(image, truth, scr):
    return image, np.zeros_like(scr)


def _time_series(image, truth, scr):
    return np.stack([image] * 20), scr


def _five_dimensions(image, truth, scr):
    return image[None, None], scr


NO_IMAGE = "There is no 3D image layer"  # napari does not offer other images to the widgets
REFUSED = {  # case: (make image and labels, the sentence, what napari shows)
    "float labels": (_float_labels, "Annotations must be integer labels, got dtype float32.",
                     None),
    "all-NaN image": (_all_nan, "The image holds no finite value (all NaN or Inf).", None),
    "one class": (_one_class, "Only one class (value 1) is painted", None),
    "no annotations": (_no_annotations, "There are no annotations", None),
    "time series (20, Z, Y, X)": (
        _time_series, ("with at most 16 channels, got shape (20, 17, 24, 26); for a time series "
                       "(T, Z, Y, X), use one time point."), NO_IMAGE),
    "5D image": (_five_dimensions, ("Expected a 3D image (Z, Y, X) or (C, Z, Y, X), got shape "
                                    "(1, 1, 17, 24, 26)."), NO_IMAGE),
}


@pytest.mark.parametrize("case", REFUSED)
def test_refused_by_the_engine(blobs, case):
    make, message, _ = REFUSED[case]
    image, labels = make(*blobs)
    with pytest.raises(AnnotationError) as error:
        train(image, labels)
    assert message in str(error.value)


@pytest.mark.parametrize("case", REFUSED)
def test_refused_by_the_command_line(blobs, tmp_path, capsys, case):
    make, message, _ = REFUSED[case]
    image, labels = make(*blobs)
    np.save(tmp_path / "image.npy", image)  # .npy: the array as it is, no axes metadata
    np.save(tmp_path / "labels.npy", labels)
    line = cli_error(capsys, "train", "--image", tmp_path / "image.npy", "--labels",
                     tmp_path / "labels.npy", "--out", tmp_path / "m.pt", *TINY)
    assert message in line
    assert not (tmp_path / "m.pt").exists()


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

def _random_tiff(folder, image, labels):
    path = folder / "random.tif"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    return path, "Cannot read {path}: not a TIFF file"


def _truncated_tiff(folder, image, labels):
    path = write_volume(folder / "truncated.tif", image)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path, "{path} is truncated: its image data needs"


def _time_series_tiff(folder, image, labels):
    path = folder / "series.tif"
    tifffile.imwrite(path, np.stack([image] * 3), imagej=True, metadata={"axes": "TZYX"})
    return path, "{path} has axes TZYX of shape (3, 17, 24, 26); only (Z, Y, X) volumes"


def _truncated_hdf5(folder, image, labels):
    path = write_volume(f"{folder / 'truncated.h5'}:/raw", image)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path, "Cannot read {path}: Unable to synchronously open file (truncated file"


def _hdf5_without_key(folder, image, labels):
    path = write_volume(f"{folder / 'several.h5'}:/raw", image)
    write_volume(f"{path}:/labels", labels)
    return path, ("{path} holds several volumes: /labels (17, 24, 26) uint8; /raw (17, 24, 26) "
                  "float32. Name the one to use as {path}:/path/to/dataset")


UNREADABLE = {
    "corrupt TIFF (random bytes)": _random_tiff,
    "truncated TIFF": _truncated_tiff,
    "TIFF time series (T, Z, Y, X)": _time_series_tiff,
    "truncated HDF5": _truncated_hdf5,
    "HDF5 with several datasets, no key": _hdf5_without_key,
}


@pytest.mark.parametrize("case", UNREADABLE)
def test_unreadable_files_in_the_engine(blobs, tmp_path, case):
    path, message = UNREADABLE[case](tmp_path, blobs[0], blobs[2])
    for lazy in (False, True):
        with pytest.raises(VolumeError) as error:
            read_volume(path, lazy=lazy)
        assert message.format(path=path) in str(error.value)


@pytest.mark.parametrize("case", UNREADABLE)
def test_unreadable_files_on_the_command_line(blobs, model, tmp_path, capsys, case):
    path, message = UNREADABLE[case](tmp_path, blobs[0], blobs[2])
    message = message.format(path=path)
    labels = write_volume(tmp_path / "labels.tif", blobs[2])
    line = cli_error(capsys, "train", "--image", path, "--labels", labels, "--out",
                     tmp_path / "m.pt", *TINY)
    assert message in line and not (tmp_path / "m.pt").exists()
    model_file = save_model(model, tmp_path / "model.pt")
    assert message in cli_failed_file(capsys, path, model_file, tmp_path / "out")
    assert not any((tmp_path / "out").glob("*"))


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
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["several_raw_labels.tif"]


# --- model files that cannot be loaded ------------------------------------------------------------

class _Payload:
    """Unpickles by running Python code that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"import pathlib; pathlib.Path({str(self.marker)!r}).touch()",))


def _truncated_model(folder, model):
    path = save_model(model, folder / "cut.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    return path, "Cannot load cut.pt: it is truncated, corrupt or not a model file."


def _random_model(folder, model):
    path = folder / "random.pt"
    path.write_bytes(np.random.default_rng(1).bytes(5000))
    return path, "Cannot load random.pt: it is truncated, corrupt or not a model file."


def _torch_file_with_code(folder, model):
    path = folder / "evil.pt"
    torch.save(dict(model.to_dict(), history=_Payload(folder / "pwned")), path)
    return path, "Cannot load evil.pt: it holds code or objects that are not allowed."


def _pickle_with_code(folder, model):
    """A plain pickle (protocol 5): torch's safe loader refuses it before reading any name."""
    path = folder / "evil.pt"
    path.write_bytes(pickle.dumps({"format": "napari-seg3d-model", "x": _Payload(folder / "pwned")},
                                  protocol=5))
    return path, "Cannot load evil.pt: it is truncated, corrupt or not a model file."


def _old_pickle_with_code(folder, model):
    """A plain pickle of protocol 2, which torch's safe loader reads up to the forbidden name."""
    path = folder / "evil.pt"
    path.write_bytes(pickle.dumps({"format": "napari-seg3d-model", "x": _Payload(folder / "pwned")},
                                  protocol=2))
    return path, "Cannot load evil.pt: it holds code or objects that are not allowed."


BAD_MODELS = {
    "truncated model file": _truncated_model,
    "random bytes as a model file": _random_model,
    "model file carrying code (torch)": _torch_file_with_code,
    "pickle carrying code": _pickle_with_code,
    "pickle carrying code (protocol 2)": _old_pickle_with_code,
}


def test_the_payload_is_live(tmp_path):
    """Plain pickle runs the payload: so a missing marker below proves nothing ran."""
    pickle.loads(pickle.dumps(_Payload(tmp_path / "pwned")))
    assert (tmp_path / "pwned").exists()


@pytest.mark.parametrize("case", BAD_MODELS)
def test_bad_model_files_in_the_engine(model, tmp_path, case):
    path, message = BAD_MODELS[case](tmp_path, model)
    with pytest.raises(ModelFileError) as error:
        load_model(path)
    assert str(error.value).startswith(message)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("case", BAD_MODELS)
def test_bad_model_files_on_the_command_line(blobs, model, tmp_path, capsys, case):
    path, message = BAD_MODELS[case](tmp_path, model)
    image = write_volume(tmp_path / "image.tif", blobs[0])
    labels = write_volume(tmp_path / "labels.tif", blobs[2])
    for args in (["info", path],
                 ["predict", image, "--model", path, "--out", tmp_path / "out", "--quiet"],
                 ["train", "--image", image, "--labels", labels, "--out", tmp_path / "m.pt",
                  "--fine-tune", path, *TINY]):
        line = cli_error(capsys, *args)
        assert line.endswith(f"error: {message} Only files saved by napari-seg3d can be loaded.")
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "m.pt").exists()
    assert not (tmp_path / "out").exists()


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

CHANNELS = "The model was trained on 2-channel images"


def test_two_channel_model_on_a_one_channel_image_in_the_engine(blobs, two_channel_model):
    with pytest.raises(ValueError, match="This model was trained on 2-channel images; the image "
                                         r"has 1 channel\(s\)."):
        two_channel_model.predict(blobs[0], device="cpu")
    with pytest.raises(AnnotationError, match=f"{CHANNELS}; this image has 1."):
        train(blobs[0], blobs[2], init=two_channel_model)


def test_two_channel_model_on_a_one_channel_image_on_the_command_line(blobs, two_channel_model,
                                                                      tmp_path, capsys):
    model_file = save_model(two_channel_model, tmp_path / "two.pt")
    image = write_volume(tmp_path / "image.tif", blobs[0])
    labels = write_volume(tmp_path / "labels.tif", blobs[2])
    reason = cli_failed_file(capsys, image, model_file, tmp_path / "out")
    assert reason == "This model was trained on 2-channel images; the image has 1 channel(s)."
    line = cli_error(capsys, "train", "--image", image, "--labels", labels, "--out",
                     tmp_path / "m.pt", "--fine-tune", model_file, *TINY)
    assert line.endswith(f"{CHANNELS}; this image has 1.")


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
# Tests run as root, which ignores file permissions: a path through a regular file fails for
# every user.

@pytest.fixture
def blocked(tmp_path) -> Path:
    """A path whose parent is a regular file."""
    (tmp_path / "a-file").write_text("not a folder")
    return tmp_path / "a-file" / "out"


def test_unwritable_output_in_the_engine(model, blocked):
    with pytest.raises(OutputError) as error:
        save_model(model, blocked / "m.pt")
    assert str(error.value) == (f"Cannot save the model to {blocked / 'm.pt'} (Not a directory). "
                                "Choose a folder you can write to, with enough free space.")
    assert isinstance(error.value, OSError)  # what callers that catch OSError expect
    with pytest.raises(OutputError) as error:
        writable_folder(blocked)
    assert str(error.value) == (f"Cannot write to the output folder {blocked} (Not a directory). "
                                "Choose a folder you can write to.")
    with pytest.raises(OutputError, match="it is a file"):
        writable_folder(blocked.parent)


def test_unwritable_output_on_the_command_line(blobs, model, blocked, tmp_path, capsys):
    image = write_volume(tmp_path / "image.tif", blobs[0])
    labels = write_volume(tmp_path / "labels.tif", blobs[2])
    line = cli_error(capsys, "train", "--image", image, "--labels", labels, "--out",
                     blocked / "m.pt", *TINY)
    # refused before training, not after it
    assert f"Cannot write to the output folder {blocked} (Not a directory)." in line
    model_file = save_model(model, tmp_path / "model.pt")
    line = cli_error(capsys, "predict", image, "--model", model_file, "--out", blocked, "--quiet")
    assert f"Cannot write to the output folder {blocked} (Not a directory)." in line


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


# --- properties (hypothesis) ----------------------------------------------------------------------

INTEGER_DTYPES = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
                  np.uint64]
SMALL = (4, 8, 8)
SMALL_IMAGE = np.random.default_rng(0).normal(size=SMALL).astype(np.float32)


@st.composite
def label_arrays(draw):
    """Sparse ``SMALL`` label arrays of any integer dtype and any values it holds."""
    dtype = np.dtype(draw(st.sampled_from(INTEGER_DTYPES)))
    info = np.iinfo(dtype)
    values = st.one_of(st.integers(0, 3), st.integers(int(info.min), int(info.max)))
    return draw(arrays(dtype, SMALL, elements=values, fill=st.just(0)))


@FEW
@given(labels=label_arrays())
def test_any_integer_labels_train_or_give_an_annotation_error(labels):
    """Any integer labels: trained on (and predicted as the painted values), or refused with an
    AnnotationError, never anything else."""
    cfg = TrainConfig(patch_size=SMALL, batch_size=2, iterations=1, device="cpu", self_training=0,
                      validate_every=1)
    values = sorted({int(v) for v in np.unique(labels)} - {0})
    try:
        mc = default_model_config(1, max(len(values), 1), SMALL, base_filters=2, levels=2)
        run = Trainer(SMALL_IMAGE, labels, cfg, model_config=mc).run()
    except AnnotationError as e:
        assert len(values) < 2 or min(values) < 0, e
        return
    assert len(values) >= 2 and min(values) > 0
    while True:
        try:
            next(run)
        except StopIteration as done:
            trained = done.value.best
            break
    assert list(trained.class_values) == values
    assert {int(v) for v in np.unique(trained.predict(SMALL_IMAGE, device="cpu"))} <= set(values)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Valid files to damage: a tiny model file, TIFF (compressed and not) and HDF5 volumes."""
    folder = tmp_path_factory.mktemp("valid")
    labels = np.zeros(SMALL, np.uint8)
    labels[1, 2, :4], labels[2, 5, 4:] = 1, 2
    mc = default_model_config(1, 2, SMALL, base_filters=2, levels=2)
    tiny = Trainer(SMALL_IMAGE, labels, TrainConfig(patch_size=SMALL, device="cpu"),
                   model_config=mc).model
    out = {"model": save_model(tiny, folder / "model.pt").read_bytes()}
    for name, compression in (("tif", True), ("raw.tif", False), ("h5", True)):
        path = write_volume(folder / f"volume.{name}", SMALL_IMAGE, compression=compression)
        out[name] = path.read_bytes()
    return folder, out


def _damaged(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


@FEW
@given(data=st.one_of(st.binary(max_size=3000),
                      st.binary(max_size=3000).map(lambda b: b"PK\x03\x04" + b),  # a zip start
                      st.binary(max_size=3000).map(lambda b: b"\x80\x02" + b)))  # a pickle
def test_random_bytes_are_never_a_model(files, data):
    with pytest.raises(ModelFileError, match="Cannot load model.pt: it "):
        load_model(_damaged(files[0], "model.pt", data))


@FEW
@given(cut=st.floats(0.0, 1.0, exclude_max=True))
def test_a_truncated_model_file_is_a_model_file_error(files, cut):
    data = files[1]["model"]
    with pytest.raises(ModelFileError, match="Cannot load model.pt: it is truncated, corrupt"):
        load_model(_damaged(files[0], "model.pt", data[: int(cut * len(data))]))


@settings(max_examples=30, deadline=None)
@given(name=st.sampled_from(["tif", "raw.tif", "h5"]), cut=st.floats(0.0, 1.0, exclude_max=True),
       lazy=st.booleans())
def test_a_truncated_volume_is_a_volume_error_or_reads_whole(files, name, cut, lazy):
    """Cut anywhere, a TIFF or HDF5 volume is refused with a VolumeError, or (when only bytes
    that hold no image data went) reads exactly as before."""
    data = files[1][name]
    path = _damaged(files[0], f"cut.{name}", data[: int(cut * len(data))])
    try:
        volume = read_volume(path, lazy=lazy)
    except VolumeError:
        return
    with volume:
        np.testing.assert_array_equal(np.asarray(volume.data[()]), SMALL_IMAGE)


@FEW
@given(suffix=st.sampled_from([".tif", ".h5", ".npy"]), data=st.binary(max_size=3000))
def test_random_bytes_are_never_a_volume(files, suffix, data):
    with pytest.raises(VolumeError):
        read_volume(_damaged(files[0], f"random{suffix}", data))
