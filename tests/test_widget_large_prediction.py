"""The Predict widget on predictions too large for memory: computed block by block into zarr
stores on disk, which the layers show while they are written (real viewer, tiny CPU model)."""

import copy
import os
import threading
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
from conftest import catch_notifications
import torch
import zarr
from napari.utils._proxies import PublicOnlyProxy

from napari_seg3d import _reader
from napari_seg3d._widgets import predict as predict_module
from napari_seg3d._widgets.predict import PredictWidget
from napari_seg3d.engine import (
    SegmentationModel,
    TrainConfig,
    build_model,
    compute_normalization,
    default_model_config,
    uncertainty_map,
)
from napari_seg3d.engine.io import write_volume
from napari_seg3d.engine.prediction import disk_stores as large

WAIT_MS = 30_000
SCALE = (2.0, 1.0, 1.0)
_CACHE = {}


@pytest.fixture
def model(blobs):
    """A tiny two-class model, untrained (what it predicts does not matter here, only where)."""
    if "model" not in _CACHE:
        torch.manual_seed(0)
        cfg = TrainConfig(patch_size=(8, 16, 16), batch_size=2, device="cpu")
        mc = default_model_config(1, 2, cfg.patch_size, SCALE, base_filters=4, levels=2)
        _CACHE["model"] = SegmentationModel(
            network=build_model(mc.architecture, **mc.kwargs).eval(), model_config=mc,
            train_config=cfg, class_values=(1, 2),
            normalization=compute_normalization(blobs[0][None]), voxel_size=SCALE)
    return _CACHE["model"]


@pytest.fixture
def expected(model, blobs):
    """The in-memory prediction of the blobs: labels and probabilities."""
    if "expected" not in _CACHE:
        image = np.asarray(blobs[0])
        _CACHE["expected"] = (model.predict(image, device="cpu"),
                              model.predict(image, device="cpu", probabilities=True))
    return _CACHE["expected"]


@pytest.fixture
def shown(monkeypatch):
    return catch_notifications(monkeypatch, predict_module)


@pytest.fixture
def on_disk(monkeypatch):
    """Every prediction is too big for memory, and is cut into 2 x 2 x 2 blocks."""
    monkeypatch.setattr(large, "MEMORY_FRACTION", 0.0)
    monkeypatch.setattr(large, "BLOCK_SHAPE", (9, 12, 13))


@pytest.fixture
def viewer(make_napari_viewer, blobs):
    viewer = make_napari_viewer()
    viewer.add_image(blobs[0], name="blobs", scale=SCALE)
    return viewer


def make_widget(viewer, model, folder=None):
    widget = PredictWidget(PublicOnlyProxy(viewer))
    viewer.window.add_dock_widget(widget)
    widget.device_combo.setCurrentText("cpu")
    widget.set_model(model)
    if folder is not None:
        widget.large_folder_edit.setText(str(folder))
    return widget


def wait(qtbot, widget):
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)


def root(array) -> Path:
    """The folder of the store a zarr array reads."""
    return Path(array.store.root)


def names(folder) -> list[str]:
    return sorted(os.listdir(folder))


def test_too_big_for_memory_streams_into_a_store_on_disk(qtbot, viewer, model, expected, shown,
                                                        on_disk, tmp_path, monkeypatch):
    labels, probs = expected
    widget = make_widget(viewer, model, tmp_path)
    widget.probabilities_check.setChecked(True)
    widget.uncertainty_check.setChecked(True)
    final = tmp_path / "blobs_labels.zarr"
    seen = []

    def look(region):  # while the prediction streams
        data = widget.layer.data
        seen.append((type(data), root(data), data.read_only, final.exists(),
                     np.asarray(data[region.slices]), region.labels))

    assert widget.start_prediction()
    widget.worker.yielded.connect(look)
    wait(qtbot, widget)
    assert not shown["error"] and not shown["warning"], shown
    assert "on disk" in shown["info"][0] and str(final) in shown["info"][0]
    assert len(seen) > 8  # several regions in each of the 8 blocks
    kind, store, read_only, final_exists, _, _ = seen[0]
    assert kind is zarr.Array and read_only and not final_exists
    assert store.parent == tmp_path and store.name.startswith(".blobs_labels.zarr.")
    assert store.name.endswith(".part")
    assert {s[1] for s in seen} == {store}  # one store, written while the layer showed it
    for *_, shown_there, written in seen:
        np.testing.assert_array_equal(shown_there, written)  # each region is on disk at once

    layer = viewer.layers["blobs prediction"]
    assert widget.layer is layer and root(layer.data) == final and not layer.data.read_only
    np.testing.assert_array_equal(layer.data[...], labels)  # as predicted in memory
    np.testing.assert_array_equal(zarr.open_array(final, mode="r")[...], labels)
    assert zarr.open_array(final, mode="r").attrs["element_size_um"] == list(SCALE)
    assert names(tmp_path) == ["blobs_labels.zarr", "blobs_probabilities.zarr",
                               "blobs_uncertainty.zarr"]  # nothing .part left
    assert layer.metadata["path"] == str(final) and not layer.metadata["partial"]
    assert str(final) in widget.status.text() and widget.status.toolTip() == str(final)
    z = int(np.rint(layer.world_to_data(viewer.dims.point)[0]))
    np.testing.assert_array_equal(layer._slice.image.raw, labels[z])  # on screen: the result
    assert viewer.layers.selection.active.name == "blobs"

    prob_layer, unc_layer = widget.probabilities_layer, widget.uncertainty_layer
    assert root(prob_layer.data) == tmp_path / "blobs_probabilities.zarr"
    assert root(unc_layer.data) == tmp_path / "blobs_uncertainty.zarr"
    np.testing.assert_allclose(prob_layer.data[...], probs, atol=1e-5)
    np.testing.assert_allclose(unc_layer.data[...], uncertainty_map(probs), atol=1e-5)
    assert not prob_layer.metadata["partial"] and not unc_layer.metadata["partial"]

    # an in-memory prediction into the same layer leaves the store on disk as it is
    monkeypatch.setattr(large, "MEMORY_FRACTION", 0.25)
    widget.probabilities_check.setChecked(False)
    widget.uncertainty_check.setChecked(False)
    assert widget.start_prediction()
    wait(qtbot, widget)
    assert widget.layer is layer and type(layer.data) is np.ndarray and "path" not in layer.metadata
    np.testing.assert_array_equal(layer.data, labels)
    np.testing.assert_array_equal(zarr.open_array(final, mode="r")[...], labels)


def test_a_lazily_read_image_is_predicted_beside_its_file(qtbot, make_napari_viewer, blobs, model,
                                                          expected, shown, tmp_path, monkeypatch):
    monkeypatch.setattr(_reader, "LAZY_BYTES", 0)  # the HDF5 reader leaves it on disk
    write_volume(f"{tmp_path / 'blobs.h5'}:/raw", blobs[0], voxel_size=SCALE)
    viewer = make_napari_viewer()
    viewer.open(tmp_path / "blobs.h5", plugin="napari-seg3d")
    assert isinstance(viewer.layers["raw"].data, da.Array)
    widget = make_widget(viewer, model)  # no folder chosen: beside the file
    assert widget.start_prediction()
    wait(qtbot, widget)
    assert not shown["error"] and "read from disk (dask array)" in shown["info"][0], shown
    final = tmp_path / "raw_labels.zarr"
    layer = viewer.layers["raw prediction"]
    assert root(layer.data) == final
    np.testing.assert_array_equal(layer.data[...], expected[0])
    assert names(tmp_path) == ["blobs.h5", "raw_labels.zarr"]


def test_cancel_keeps_the_part_done_under_a_partial_name(qtbot, viewer, model, expected, shown,
                                                         on_disk, tmp_path, monkeypatch):
    gate, written = threading.Event(), []
    write = large.DiskStores.write

    def gated_write(self, region):  # the worker waits before the second region
        written.append(region.slices)
        if len(written) > 1:
            gate.wait(WAIT_MS / 1000)
        write(self, region)

    monkeypatch.setattr(large.DiskStores, "write", gated_write)
    final, partial = tmp_path / "blobs_labels.zarr", tmp_path / "blobs_labels_partial.zarr"
    widget = make_widget(viewer, model, tmp_path)
    try:
        assert widget.start_prediction()
        qtbot.waitUntil(lambda: widget.layer.data[written[0]].all() if written else False,
                        timeout=WAIT_MS)  # the first region is on screen
        widget.cancel()
    finally:
        gate.set()
    wait(qtbot, widget)
    assert len(written) in (1, 2)  # the region in flight, if any, is written; no more
    assert not final.exists() and names(tmp_path) == ["blobs_labels_partial.zarr"]
    layer = widget.layer
    assert layer.name == "blobs prediction (partial)" and layer.metadata["partial"]
    assert root(layer.data) == partial and layer.metadata["path"] == str(partial)
    done = np.zeros(expected[0].shape, bool)
    for region in written:
        done[region] = True
    stored = zarr.open_array(partial, mode="r")[...]
    np.testing.assert_array_equal(stored[done], expected[0][done])
    assert not stored[~done].any()
    message = shown["info"][-1]
    assert "cancelled" in message and str(partial) in message and str(final) in message
    assert widget.predict_button.isEnabled() and not shown["error"]

    assert widget.start_prediction()  # the viewer goes on: a new prediction completes
    wait(qtbot, widget)
    assert widget.layer is layer and layer.name == "blobs prediction"
    assert root(layer.data) == final
    np.testing.assert_array_equal(layer.data[...], expected[0])
    assert names(tmp_path) == ["blobs_labels.zarr", "blobs_labels_partial.zarr"]


def test_an_unwritable_folder_is_refused_before_starting(viewer, model, shown, on_disk, tmp_path):
    (tmp_path / "a file").write_text("")
    widget = make_widget(viewer, model, tmp_path / "a file" / "sub")
    assert not widget.start_prediction()
    assert widget.worker is None and widget.predict_button.isEnabled()
    assert "Large predictions folder" in shown["error"][0] and "a file" in shown["error"][0]
    assert "blobs prediction" not in viewer.layers


def test_when_and_where_a_prediction_goes_to_disk(tmp_path, monkeypatch):
    small = np.zeros((4, 5, 6), np.float32)
    nbytes = large.output_bytes(small.shape, np.uint8, 3, probabilities=True, uncertainty=True)
    assert nbytes == 120 * (1 + 4 * 4)
    assert large.disk_reason(small, nbytes, memory=10 * nbytes) is None
    assert "25% of this computer's memory" in large.disk_reason(small, nbytes, memory=nbytes)
    assert "dask" in large.disk_reason(da.from_array(small), 1, memory=1 << 40)
    np.save(tmp_path / "a.npy", small)
    assert not large.in_memory(np.load(tmp_path / "a.npy", mmap_mode="r"))

    image = tmp_path / "data" / "nuclei x12.tif"
    image.parent.mkdir()
    assert large.default_folder(str(image)) == image.parent
    assert large.default_folder(None) == large.cache_folder()
    assert large.default_folder(tmp_path / "missing" / "a.tif") == large.cache_folder()
    assert large.choose_folder("  ", str(image)) == image.parent
    assert large.choose_folder(str(tmp_path), None) == tmp_path
    assert large.store_base(image.parent, "nuclei x12", str(image)) == "nuclei_x12"
    own = image.parent / "raw_labels.zarr"  # an image read from a store of the output's name
    assert large.store_base(image.parent, "raw", str(own)) == "raw_seg3d"
    assert large.store_path(tmp_path, "raw", "labels", partial=True).name == \
        "raw_labels_partial.zarr"
    assert large.chunks_for((2, 5, 300, 300)) == (1, 5, 256, 256)


def test_an_error_keeps_the_part_done_under_a_partial_name(qtbot, viewer, model, shown, on_disk,
                                                           tmp_path, monkeypatch):
    broken = copy.deepcopy(model)
    forward, calls = broken.network.forward, []

    def fail_later(x):
        calls.append(1)
        if len(calls) > 6:
            raise RuntimeError("CUDA error, say")
        return forward(x)

    broken.network.forward = fail_later
    widget = make_widget(viewer, broken, tmp_path)
    assert widget.start_prediction()
    wait(qtbot, widget)
    assert len(shown["error"]) == 1 and "CUDA error, say" in shown["error"][0]
    partial = tmp_path / "blobs_labels_partial.zarr"
    assert names(tmp_path) == ["blobs_labels_partial.zarr"]
    assert widget.layer.name == "blobs prediction (partial)" and root(widget.layer.data) == partial
    assert zarr.open_array(partial, mode="r")[...].any()  # the blocks done before the error
    assert "before the error" in shown["info"][-1] and str(partial) in shown["info"][-1]
    assert "CUDA error, say" in widget.status.text() and widget.predict_button.isEnabled()


def test_a_prediction_on_disk_never_replaces_a_file_open_in_the_viewer(
        qtbot, make_napari_viewer, blobs, model, expected, shown, tmp_path, monkeypatch):
    """The user's annotations, ``raw_labels.zarr`` beside the image and open in the viewer,
    have the name of the prediction's store: the prediction goes to ``raw_seg3d_labels.zarr``."""
    monkeypatch.setattr(_reader, "LAZY_BYTES", 0)
    write_volume(f"{tmp_path / 'blobs.h5'}:/raw", blobs[0], voxel_size=SCALE)
    write_volume(tmp_path / "raw_labels.zarr", blobs[2])
    viewer = make_napari_viewer()
    viewer.open(tmp_path / "blobs.h5", plugin="napari-seg3d")
    viewer.open(tmp_path / "raw_labels.zarr", plugin="napari", layer_type="labels")
    kept = {p: p.read_bytes() for p in (tmp_path / "raw_labels.zarr").rglob("*") if p.is_file()}
    widget = make_widget(viewer, model)
    assert widget.start_prediction()
    wait(qtbot, widget)
    assert not shown["error"], shown
    assert root(viewer.layers["raw prediction"].data) == tmp_path / "raw_seg3d_labels.zarr"
    np.testing.assert_array_equal(viewer.layers["raw prediction"].data[...], expected[0])
    assert {p: p.read_bytes() for p in kept} == kept
    assert names(tmp_path) == ["blobs.h5", "raw_labels.zarr", "raw_seg3d_labels.zarr"]
    other = tmp_path / "elsewhere" / "ann.zarr"
    os.makedirs(other.parent)
    os.symlink(tmp_path / "raw_labels.zarr", other)
    assert large.store_base(tmp_path, "raw", None, [other]) == "raw_seg3d"  # through a link
    assert large.store_base(tmp_path, "raw", None, [tmp_path / "raw.zarr"]) == "raw"
