"""Labels that look like an image or an instance segmentation warn before training (issue 19):
the pure check on real and simulated annotations, the command line (refused with one line, then
trained with --allow-many-classes) and the Train widget (a dialog: Cancel starts nothing and
leaves a napari warning, Train anyway trains), with the nuclei sample's real files."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ball_volume
from napari.utils._proxies import PublicOnlyProxy
from napari.utils.notifications import NotificationSeverity, notification_manager
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QApplication, QMessageBox

from napari_seg3d._sample_data import SAMPLE_DIR, load_nuclei
from napari_seg3d._widgets._labels_warning import GO_ON
from napari_seg3d._widgets.train import TrainWidget
from napari_seg3d.cli import main
from napari_seg3d.engine.io import read_volume
from napari_seg3d.engine.training.labels_check import (
    distinct_nonzero,
    labels_look_wrong,
    solid_fraction,
)
from napari_seg3d.engine.training.scribbles import simulate_scribbles

pytestmark = pytest.mark.usefixtures("one_thread")
SHAPE = (31, 61, 57)
TINY = ["--patch-size", "8", "16", "16", "--base-filters", "4", "--levels", "2", "--iterations",
        "2", "--batch-size", "2", "--self-training", "0", "--no-report", "--quiet", "--device",
        "cpu"]


def _instances() -> np.ndarray:
    return np.asarray(read_volume(SAMPLE_DIR / "instances.tif").data)


def _blocks(classes: int) -> np.ndarray:
    """A dense ground truth: ``classes`` slabs along x, every voxel labelled."""
    x = np.broadcast_to(np.arange(SHAPE[2]), SHAPE)
    return (x * classes // SHAPE[2] + 1).astype(np.uint8)


def _strokes(classes: int, radius: int = 1) -> np.ndarray:
    """Brush strokes of ``classes`` classes, simulated on 3 slices per axis of a dense truth."""
    return simulate_scribbles(_blocks(classes), slices_per_axis=3, strokes_per_class=2,
                              length=12, radius=radius, seed=1)


def _balls(n: int) -> np.ndarray:
    """An instance image: ``n`` filled balls, each its own value, on 0."""
    z, y, x = np.indices(SHAPE)
    out = np.zeros(SHAPE, np.uint16)
    for i in range(n):
        cz, cy, cx = 8 + 15 * (i % 2), 8 + 11 * (i // 2 % 4), 10 + 30 * (i // 8)
        out[(z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 < 20] = i + 1
    return out


LOOK_WRONG = {
    "the sample image (250 values)": (lambda: load_nuclei()[0], "250 different values",
                                      "an image"),
    "the sample instances (51 objects)": (_instances, "51 different values",
                                          "an instance segmentation"),
    "12 filled balls, one value each": (lambda: _balls(12), "12 different values",
                                        "an instance segmentation"),
    "a dense 12-class volume": (lambda: _blocks(12), "12 different values", "100% of the volume"),
    "a float image with decimals": (lambda: load_nuclei()[0] / 7.0,
                                    "decimal values (dtype float64)", "an image"),
    "the sample image as int64": (lambda: load_nuclei()[0].astype(np.int64), "250 different",
                                  "an image"),
}
LOOK_RIGHT = {
    "the sample's simulated strokes": lambda: load_nuclei()[2],
    "the sample's dense truth (1, 2)": lambda: load_nuclei()[1],
    "a dense 5-class truth": lambda: _blocks(5),
    "strokes of 10 classes": lambda: _strokes(10),
    "thick strokes of 10 classes": lambda: _strokes(10, radius=3),
    "10 filled balls, one value each": lambda: _balls(10),
    "a float truth of whole numbers": lambda: load_nuclei()[1].astype(np.float32),
    "bool labels": lambda: ball_volume()[1],
    "nothing painted": lambda: np.zeros(SHAPE, np.uint8),
}


@pytest.mark.parametrize("case", LOOK_WRONG)
def test_labels_that_look_like_an_image_or_instances_warn(case):
    make, count, cause = LOOK_WRONG[case]
    sentence = labels_look_wrong(make())
    assert sentence is not None and count in sentence and cause in sentence, sentence
    assert sentence.endswith(".") and "\n" not in sentence


@pytest.mark.parametrize("case", LOOK_RIGHT)
def test_real_annotations_do_not_warn(case):
    assert labels_look_wrong(LOOK_RIGHT[case]()) is None


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.int32, np.int64, np.uint32,
                                   bool])
def test_distinct_nonzero_counts_like_unique(dtype):
    labels = _instances() % (2 if dtype is bool else 120)
    labels = labels.astype(dtype)
    if np.dtype(dtype).kind == "i":
        labels[0, 0, :3] = [-5, -1, 7]
    assert distinct_nonzero(labels) == np.unique(labels[labels != 0]).size


def test_solid_fraction_tells_strokes_from_objects():
    assert solid_fraction(load_nuclei()[2]) < 0.05  # thin strokes on single slices
    assert solid_fraction(_instances()) > 0.4  # filled nuclei
    assert solid_fraction(load_nuclei()[0]) < 0.05  # grey values change from voxel to voxel


# --- the command line -----------------------------------------------------------------------------

def _cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("labels, message", [
    ("image.tif", ("The labels hold 250 different values over 100% of the volume: they look "
                   "like an image")),
    ("instances.tif", ("The labels hold 51 different values over 38% of the volume: they look "
                       "like an instance segmentation (one value per object)")),
])
def test_the_command_line_refuses_implausible_labels(capsys, tmp_path, labels, message):
    code, _, err = _cli(capsys, "train", "--image", SAMPLE_DIR / "image.tif", "--labels",
                        SAMPLE_DIR / labels, "--out", tmp_path / "m.pt", *TINY)
    assert code == 2 and len(err.strip().splitlines()) == 1, (code, err)
    assert err.startswith(f"napari-seg3d train: error: {message}"), err
    assert "add --allow-many-classes to train on them anyway." in err
    assert not (tmp_path / "m.pt").exists()


def test_the_command_line_refuses_labels_with_decimals(capsys, tmp_path):
    labels = tmp_path / "image.npy"
    np.save(labels, load_nuclei()[0] / 7.0)
    for extra in ([], ["--allow-many-classes"]):  # decimals cannot train at all
        code, _, err = _cli(capsys, "train", "--image", SAMPLE_DIR / "image.tif", "--labels",
                            labels, "--out", tmp_path / "m.pt", *TINY, *extra)
        assert code == 2 and len(err.strip().splitlines()) == 1, (code, err)
    assert "Annotations must be integer labels, got dtype float64." in err
    code, _, err = _cli(capsys, "train", "--image", SAMPLE_DIR / "image.tif", "--labels",
                        labels, "--out", tmp_path / "m.pt", *TINY)
    assert err.strip().endswith("they look like an image, not annotations (0 = not annotated, "
                                "1, 2, ... = classes). Save the annotations as integers."), err


def test_allow_many_classes_trains_on_them(capsys, tmp_path):
    code, out, err = _cli(capsys, "train", "--image", SAMPLE_DIR / "image.tif", "--labels",
                          SAMPLE_DIR / "instances.tif", "--out", tmp_path / "m.pt", *TINY,
                          "--allow-many-classes")
    assert code == 0, err
    code, out, _ = _cli(capsys, "info", tmp_path / "m.pt")
    assert code == 0 and '"out_channels": 51' in out, out


# --- the Train widget -----------------------------------------------------------------------------

def _answer(button: str, seen: list[str], tries: int = 250) -> None:
    """Press ``button`` ("Cancel" or GO_ON) in the next message box, once it is shown."""
    box = QApplication.activeModalWidget()
    if isinstance(box, QMessageBox):
        seen.append(box.text())
        if button == "Cancel":
            box.button(QMessageBox.StandardButton.Cancel).click()
        else:
            next(b for b in box.buttons() if b.text() == button).click()
    elif tries:
        QTimer.singleShot(20, lambda: _answer(button, seen, tries - 1))


def _widget(make_napari_viewer, labels):
    viewer = make_napari_viewer()
    image, _, _ = load_nuclei()
    viewer.add_image(image, name="nuclei")
    widget = TrainWidget(PublicOnlyProxy(viewer))
    viewer.window.add_dock_widget(widget)
    for spin, p in zip(widget.patch_spins, (8, 16, 16)):
        spin.setValue(p)
    widget.iterations_spin.setValue(2)
    widget.batch_spin.setValue(2)
    widget.filters_spin.setValue(4)
    widget.levels_spin.setValue(2)
    widget.device_combo.setCurrentText("cpu")
    widget.quick_check.setChecked(False)  # random forests on 51 classes take 20 s
    widget.self_training_spin.setValue(0)
    widget.new_annotation_layer().data = labels
    return widget


def test_the_train_widget_asks_before_training_on_instances(make_napari_viewer, qtbot):
    widget = _widget(make_napari_viewer, _instances())
    seen: list[str] = []
    start = len(notification_manager.records)
    QTimer.singleShot(0, lambda: _answer("Cancel", seen))
    assert not widget.start_training() and widget.worker is None
    assert len(seen) == 1 and "51 different values" in seen[0], seen
    warnings = [n.message for n in notification_manager.records[start:]
                if n.severity == NotificationSeverity.WARNING]
    assert len(warnings) == 1 and "Training not started" in warnings[0], warnings
    assert f"choose '{GO_ON}'" in warnings[0]
    QTimer.singleShot(0, lambda: _answer(GO_ON, seen))
    assert widget.start_training()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    assert len(seen) == 2 and widget.model is not None
    assert len(widget.model.class_values) == 51


def test_the_train_widget_does_not_ask_about_strokes(make_napari_viewer, qtbot):
    widget = _widget(make_napari_viewer, load_nuclei()[2])
    seen: list[str] = []
    QTimer.singleShot(0, lambda: _answer("Cancel", seen, tries=0))  # a box would be seen
    assert widget.start_training()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    assert not seen and widget.model is not None
