"""The Train widget tests' shared parts: a viewer with blobs, a tiny widget, notifications caught."""

import pytest
from conftest import catch_notifications
from napari.utils._proxies import PublicOnlyProxy

from napari_seg3d._widgets import _train_models as train_models
from napari_seg3d._widgets import train as train_module
from napari_seg3d._widgets.train import TrainWidget

WAIT_MS = 30_000


@pytest.fixture
def shown(monkeypatch):
    """Notifications the widget shows, by kind."""
    out = catch_notifications(monkeypatch, train_module)
    for kind in ("error", "info"):  # Save model and Load model
        monkeypatch.setattr(train_models, f"show_{kind}", out[kind].append)
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
