"""A prediction on disk that stops before the end (cancelled, or failed) is finished in the
worker thread, not the GUI thread: an OME-Zarr store gets its image copy and pyramids there while
the viewer keeps processing events, and only then is it published under its partial name (real
viewer, tiny CPU model)."""

from __future__ import annotations

import copy
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from _ome_zarr_widget import SCALE, WAIT_MS, tiled_image, untrained_model
from conftest import catch_notifications
from napari.utils._proxies import PublicOnlyProxy
from qtpy.QtCore import QTimer

from napari_seg3d._widgets import predict as predict_module
from napari_seg3d._widgets.predict import PredictWidget
from napari_seg3d.engine.io import read_volume
from napari_seg3d.engine.io._ome_zarr_out import OmeZarrWriter
from napari_seg3d.engine.prediction import disk_stores


@pytest.fixture
def image(blobs):
    return tiled_image(blobs)


@pytest.fixture
def model(image):
    return untrained_model(image)


@pytest.fixture
def shown(monkeypatch):
    return catch_notifications(monkeypatch, predict_module)


@pytest.fixture
def viewer(make_napari_viewer, image, monkeypatch):
    monkeypatch.setattr(disk_stores, "MEMORY_FRACTION", 0.0)  # every prediction goes to disk
    monkeypatch.setattr(disk_stores, "BLOCK_SHAPE", (9, 36, 39))  # in 2 x 2 x 2 blocks
    viewer = make_napari_viewer()
    viewer.add_image(image, name="blobs", scale=SCALE)
    return viewer


def make_widget(viewer, model, folder, fmt="ome-zarr") -> PredictWidget:
    widget = PredictWidget(PublicOnlyProxy(viewer))
    viewer.window.add_dock_widget(widget)
    widget.device_combo.setCurrentText("cpu")
    widget.set_model(model)
    widget.large_folder_edit.setText(str(folder))
    widget.disk_format_combo.setCurrentText(fmt)
    return widget


class FinishProbe:
    """Wraps :meth:`OmeZarrWriter.finish`: records the thread it runs in and, off the main thread,
    holds it until the GUI thread has run a timer (so the event loop turned while it ran)."""

    def __init__(self, monkeypatch) -> None:
        self.threads: list[threading.Thread] = []
        self.started, self.go_on = threading.Event(), threading.Event()
        finish = OmeZarrWriter.finish

        def probed(writer):
            self.threads.append(threading.current_thread())
            self.started.set()
            if threading.current_thread() is not threading.main_thread():
                assert self.go_on.wait(WAIT_MS / 1000)
            finish(writer)

        monkeypatch.setattr(OmeZarrWriter, "finish", probed)

    def release_from_the_event_loop(self) -> list[str]:
        """Let the finishing go on from a timer of the GUI thread; returns what it ran."""
        ran = []

        def tick():
            ran.append(threading.current_thread().name)
            self.go_on.set()

        QTimer.singleShot(0, tick)
        return ran


def stop_after_first_region(monkeypatch, widget) -> list:
    """The worker waits before its second region until the widget was cancelled."""
    written, write = [], disk_stores.DiskStores.write

    def gated_write(self, region):
        written.append(region.slices)
        if len(written) > 1:
            job = widget._job
            for _ in range(WAIT_MS // 10):
                if job is None or job.cancelled:
                    break
                threading.Event().wait(0.01)
        write(self, region)

    monkeypatch.setattr(disk_stores.DiskStores, "write", gated_write)
    return written


def test_a_cancelled_ome_zarr_is_finished_off_the_gui_thread(qtbot, viewer, model, image, shown,
                                                           tmp_path, monkeypatch):
    probe = FinishProbe(monkeypatch)
    widget = make_widget(viewer, model, tmp_path)
    written = stop_after_first_region(monkeypatch, widget)
    partial = tmp_path / "blobs_labels_partial.ome.zarr"
    assert widget.start_prediction()
    qtbot.waitUntil(lambda: len(written) > 1, timeout=WAIT_MS)
    widget.cancel()
    qtbot.waitUntil(lambda: probe.started.is_set() and "saving" in widget.status.text(),
                    timeout=WAIT_MS)  # the worker said so (a queued signal) and began

    # the finishing runs: in a worker thread, with the viewer's event loop turning meanwhile
    assert probe.threads and probe.threads[0] is not threading.main_thread()
    assert widget.worker is not None and not widget.predict_button.isEnabled()
    assert "saving the partial prediction" in widget.status.text()
    assert all(name.startswith(".") for name in names(tmp_path))  # only temporary names yet
    assert np.asarray(widget.layer.data[written[0]]).any()  # the layer shows what was done
    ran = probe.release_from_the_event_loop()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    assert ran == [threading.main_thread().name]
    assert len(probe.threads) == 1  # not finished again by the GUI thread

    assert names(tmp_path) == [partial.name]
    np.testing.assert_allclose(read_volume(partial).data, image)  # the image was copied
    assert (partial / "labels" / "segmentation" / "1").is_dir()  # and the pyramid built
    layer = widget.layer
    assert layer.name == "blobs prediction (partial)" and layer.metadata["partial"]
    assert Path(layer.data.store.root) == partial / "labels" / "segmentation" / "0"
    assert np.asarray(layer.data[written[0]]).any()
    assert not shown["error"] and not shown["warning"], shown
    message = shown["info"][-1]
    assert "cancelled" in message and str(partial) in message
    assert widget.predict_button.isEnabled()


def test_a_failed_ome_zarr_is_finished_off_the_gui_thread(qtbot, viewer, model, shown, tmp_path,
                                                        monkeypatch):
    probe = FinishProbe(monkeypatch)
    broken = copy.deepcopy(model)
    forward, calls = broken.network.forward, []

    def fail_later(x):
        calls.append(1)
        if len(calls) > 4:
            raise RuntimeError("CUDA error, say")
        return forward(x)

    broken.network.forward = fail_later
    widget = make_widget(viewer, broken, tmp_path)
    assert widget.start_prediction()
    qtbot.waitUntil(lambda: probe.started.is_set() and "saving" in widget.status.text(),
                    timeout=WAIT_MS)
    assert probe.threads[0] is not threading.main_thread()
    assert "saving the partial prediction" in widget.status.text()
    ran = probe.release_from_the_event_loop()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    assert ran == [threading.main_thread().name] and len(probe.threads) == 1

    partial = tmp_path / "blobs_labels_partial.ome.zarr"
    assert names(tmp_path) == [partial.name]
    assert (partial / "labels" / "segmentation" / "1").is_dir()
    assert len(shown["error"]) == 1 and "CUDA error, say" in shown["error"][0]
    assert "before the error" in shown["info"][-1] and str(partial) in shown["info"][-1]
    assert "CUDA error, say" in widget.status.text() and widget.predict_button.isEnabled()
    assert widget.layer.name == "blobs prediction (partial)"


def test_a_partial_finish_that_fails_keeps_nothing_and_names_no_store(
        qtbot, viewer, model, shown, tmp_path, monkeypatch):
    def no_space(writer):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(OmeZarrWriter, "_write_image", no_space)
    widget = make_widget(viewer, model, tmp_path)
    written = stop_after_first_region(monkeypatch, widget)
    assert widget.start_prediction()
    qtbot.waitUntil(lambda: len(written) > 1, timeout=WAIT_MS)
    widget.cancel()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    assert names(tmp_path) == []  # the writer removed its temporary store
    assert len(shown["warning"]) == 1 and "the disk is full" in shown["warning"][0], shown
    message = shown["info"][-1]
    assert "cancelled" in message and "kept in" not in message
    assert widget.predict_button.isEnabled()


def test_a_cancelled_zarr_prediction_only_moves_folders_in_the_gui_thread(
        qtbot, viewer, model, shown, tmp_path, monkeypatch):
    """Plain zarr stores need no finishing: the GUI thread only renames them, and an older
    partial store it replaces is deleted by a worker thread."""
    deleted = []
    rmtree = disk_stores.delete_stores

    def recorded(paths):
        deleted.append((threading.current_thread(), [Path(p).exists() for p in paths]))
        return rmtree(paths)

    monkeypatch.setattr(disk_stores, "delete_stores", recorded)
    partial = tmp_path / "blobs_labels_partial.zarr"
    widget = make_widget(viewer, model, tmp_path, fmt="zarr")
    widget.probabilities_check.setChecked(True)
    written = stop_after_first_region(monkeypatch, widget)
    for _ in range(2):  # the second replaces the first's partial stores
        written.clear()
        assert widget.start_prediction()
        qtbot.waitUntil(lambda: len(written) > 1, timeout=WAIT_MS)
        widget.cancel()
        qtbot.waitUntil(lambda: widget.worker is None and widget.cleaner is None,
                        timeout=WAIT_MS)
        assert names(tmp_path) == ["blobs_labels_partial.zarr",
                                   "blobs_probabilities_partial.zarr"]
        assert Path(widget.layer.data.store.root) == partial
        assert str(partial) in shown["info"][-1]
    assert len(deleted) == 1 and deleted[0][0] is not threading.main_thread()
    assert deleted[0][1] == [True, True]  # the two older stores, now under hidden names
    assert not shown["error"] and not shown["warning"], shown


def names(folder) -> list[str]:
    return sorted(os.listdir(folder))


def test_cancel_while_a_complete_run_writes_its_pyramids_says_it_cannot(
        qtbot, viewer, model, image, shown, tmp_path, monkeypatch):
    probe = FinishProbe(monkeypatch)
    widget = make_widget(viewer, model, tmp_path)
    assert widget.start_prediction()
    qtbot.waitUntil(lambda: probe.started.is_set() and "pyramids" in widget.status.text(),
                    timeout=WAIT_MS)  # every window done: the store is being completed
    widget.cancel()
    assert "cannot be cancelled" in shown["info"][-1]
    assert "Cancelling" not in widget.status.text() and not widget._job.cancelled
    probe.release_from_the_event_loop()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    assert names(tmp_path) == ["blobs_labels.ome.zarr"]
    assert widget.status.text().startswith("Done") and not widget.layer.metadata["partial"]
