"""OME-Zarr outputs from the GUI (real viewer, tiny CPU model): the Predict widget's large
predictions and Batch predict write ``<name>_labels.ome.zarr``, the image with the segmentation
as NGFF labels, that ome-zarr-py reads back and ome-zarr-models validates; Batch takes
``.ome.zarr`` folders as inputs and writes the instances of their NGFF labels."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
from _ome_zarr_widget import SCALE, WAIT_MS, tiled_image, untrained_model
import zarr
from napari.utils._proxies import PublicOnlyProxy
from ome_zarr.io import parse_url
from ome_zarr.reader import Label, Reader
from ome_zarr_models.v05 import Image

from napari_seg3d._widgets import batch as batch_module
from napari_seg3d._widgets import predict as predict_module
from napari_seg3d._widgets._session import Session
from napari_seg3d._widgets.batch import BatchPredictWidget
from napari_seg3d._widgets.predict import PredictWidget
from napari_seg3d.engine import RegionDone, save_model
from napari_seg3d.engine.io import read_volume
from napari_seg3d.engine.io._ome_zarr_out import ome_writer
from napari_seg3d.engine.prediction import disk_stores


@pytest.fixture
def image(blobs):
    return tiled_image(blobs)


@pytest.fixture
def model(image):
    return untrained_model(image)


@pytest.fixture
def shown(monkeypatch):
    out = {"error": [], "warning": [], "info": []}
    for kind, messages in out.items():
        monkeypatch.setattr(predict_module, f"show_{kind}", messages.append)
        if kind != "warning":
            monkeypatch.setattr(batch_module, f"show_{kind}", messages.append)
    return out


def write_ome_image(path, image) -> Path:
    group = zarr.open_group(str(path), mode="w")
    ome_writer().write_image(image, group, axes="zyx", scale_factors=(2,),
                             scale=dict(zip("zyx", SCALE)))
    return Path(path)


def labels_of(path):
    """The NGFF labels node of an OME-Zarr output, read by ome-zarr-py (validated first)."""
    Image.from_zarr(zarr.open_group(str(path), mode="r"))
    return next(n for n in Reader(parse_url(str(path)))() if n.load(Label) is not None)


def check_output(path, image, labels) -> None:
    """``path`` holds ``image`` with ``labels`` as NGFF labels, both with their pyramids."""
    node = labels_of(path)
    assert [tuple(a.shape) for a in node.data] == [image.shape, (17, 36, 39)]
    assert node.metadata["coordinateTransformations"][0][0]["scale"] == list(SCALE)
    assert {v["name"] for v in node.metadata["properties"].values()} == {"background", "blob"}
    np.testing.assert_array_equal(np.asarray(node.data[0]), labels)
    again = read_volume(path, lazy=True)
    assert again.voxel_size == SCALE
    np.testing.assert_allclose(again.data[...], image)


# --- Predict: a prediction too large for memory -------------------------------------------------

@pytest.fixture
def predict_widget(make_napari_viewer, image, model, tmp_path, monkeypatch):
    monkeypatch.setattr(disk_stores, "MEMORY_FRACTION", 0.0)  # every prediction goes to disk
    viewer = make_napari_viewer()
    viewer.add_image(image, name="blobs", scale=SCALE)
    widget = PredictWidget(PublicOnlyProxy(viewer))
    viewer.window.add_dock_widget(widget)
    widget.device_combo.setCurrentText("cpu")
    widget.set_model(model)
    widget.large_folder_edit.setText(str(tmp_path))
    widget.disk_format_combo.setCurrentText("ome-zarr")
    return widget


def test_predict_writes_a_large_prediction_as_ome_zarr(qtbot, predict_widget, image, model,
                                                       shown, tmp_path):
    final = tmp_path / "blobs_labels.ome.zarr"
    seen = []
    assert predict_widget.start_prediction()
    predict_widget.worker.yielded.connect(  # while it streams: the store's labels, not final
        lambda region: isinstance(region, RegionDone) and seen.append((final.exists(), np.asarray(
            predict_widget.layer.data[region.slices]), region.labels)))
    qtbot.waitUntil(lambda: predict_widget.worker is None, timeout=WAIT_MS)
    assert not shown["error"] and not shown["warning"], shown
    assert str(final) in shown["info"][0]
    assert seen and not any(s[0] for s in seen)
    for _, on_disk, written in seen:
        np.testing.assert_array_equal(on_disk, written)
    expected = model.predict(image, device="cpu")
    check_output(final, image, expected)
    assert sorted(os.listdir(tmp_path)) == ["blobs_labels.ome.zarr"]  # nothing .part left
    layer = predict_widget.layer
    assert Path(layer.data.store.root) == final / "labels" / "segmentation" / "0"
    assert not layer.metadata["partial"] and not layer.data.read_only
    np.testing.assert_array_equal(layer.data[...], expected)
    assert layer.metadata["path"] == str(final) and str(final) in predict_widget.status.text()


def test_a_cancelled_ome_zarr_prediction_is_kept_complete_under_its_partial_name(
        qtbot, predict_widget, image, shown, tmp_path, monkeypatch):
    gate, written = threading.Event(), []
    write = disk_stores.DiskStores.write

    def gated_write(self, region):  # the worker waits before its second region
        written.append(region.slices)
        if len(written) > 1:
            gate.wait(WAIT_MS / 1000)
        write(self, region)

    monkeypatch.setattr(disk_stores.DiskStores, "write", gated_write)
    try:
        assert predict_widget.start_prediction()
        qtbot.waitUntil(lambda: len(written) > 1, timeout=WAIT_MS)
        predict_widget.cancel()
    finally:
        gate.set()
    qtbot.waitUntil(lambda: predict_widget.worker is None, timeout=WAIT_MS)
    partial = tmp_path / "blobs_labels_partial.ome.zarr"
    assert sorted(os.listdir(tmp_path)) == [partial.name]
    node = labels_of(partial)  # a valid OME-Zarr: the image, and the labels done so far
    assert node.data[0].shape == image.shape
    np.testing.assert_allclose(read_volume(partial).data, image)
    assert predict_widget.layer.metadata["partial"]
    assert any("cancelled" in message for message in shown["info"])


# --- Batch predict ------------------------------------------------------------------------------

@pytest.fixture
def batch_widget(make_napari_viewer, monkeypatch):
    monkeypatch.setattr(batch_module, "SESSION", Session())
    viewer = make_napari_viewer()
    widget = BatchPredictWidget(viewer)
    viewer.window.add_dock_widget(widget)
    return widget


def test_batch_predicts_ome_zarr_folders_into_ome_zarr(qtbot, batch_widget, image, model,
                                                        shown, tmp_path):
    folder = tmp_path / "in"
    a = write_ome_image(folder / "a.ome.zarr", image)
    write_ome_image(folder / "more" / "b.ome.zarr", image[:, :70, :66])
    batch_widget.set_inputs([a, folder / "more"])  # an image folder, a folder of images
    batch_widget.set_model_path(save_model(model, tmp_path / "model.pt"))
    batch_widget.set_output_dir(tmp_path / "out")
    batch_widget.set_options(fmt="ome-zarr", pattern="*.ome.zarr")
    batch_widget.run()
    qtbot.waitUntil(lambda: batch_widget.worker is None, timeout=WAIT_MS)
    assert [r.status for r in batch_widget.results] == ["done", "done"], batch_widget.results
    assert not shown["error"], shown
    outs = [tmp_path / "out" / "a_labels.ome.zarr", tmp_path / "out" / "b_labels.ome.zarr"]
    assert [r.output for r in batch_widget.results] == outs
    check_output(outs[0], image, model.predict(image, device="cpu"))
    assert labels_of(outs[1]).data[0].shape == (17, 70, 66)

    layers = batch_widget.open_results()
    assert [layer.name for layer in layers] == ["a_labels", "b_labels"]
    assert all(layer.multiscale and tuple(layer.scale) == SCALE for layer in layers)
    np.testing.assert_array_equal(np.asarray(layers[0].data[0]),
                                  model.predict(image, device="cpu"))


def test_batch_writes_the_instances_of_an_ome_zarr_output(qtbot, batch_widget, image, model,
                                                          shown, tmp_path):
    batch_widget.set_inputs([write_ome_image(tmp_path / "a.ome.zarr", image)])
    batch_widget.set_model_path(save_model(model, tmp_path / "model.pt"))
    batch_widget.set_output_dir(tmp_path / "out")
    batch_widget.set_options(fmt="ome-zarr")
    batch_widget._instances.check.setChecked(True)
    batch_widget._instances.class_edit.setText("blob")
    batch_widget._instances.method_combo.setCurrentText("connected components")
    batch_widget.run()
    qtbot.waitUntil(lambda: batch_widget.worker is None, timeout=WAIT_MS)
    assert [r.status for r in batch_widget.results] == ["done"], batch_widget.results
    assert not shown["error"], shown
    labels = np.asarray(labels_of(tmp_path / "out" / "a_labels.ome.zarr").data[0])
    ids = read_volume(tmp_path / "out" / "a_instances.zarr")  # from the NGFF labels
    assert ids.voxel_size == SCALE and ids.data.shape == image.shape
    assert 0 < (labels == 2).sum() < labels.size  # objects, and background
    np.testing.assert_array_equal(ids.data > 0, labels == 2)


def test_channel_layers_go_into_the_ome_zarr_as_its_channels(qtbot, make_napari_viewer, image,
                                                             shown, tmp_path, monkeypatch):
    """Two Image layers ticked as the channels of one input: the OME-Zarr holds both as its
    c axis (not the first layer alone) and labels c, z, y, x with one channel."""
    monkeypatch.setattr(disk_stores, "MEMORY_FRACTION", 0.0)
    second = (image.max() - image).astype(np.float32)
    both = np.stack([image, second])
    model = untrained_model(both, channel_names=("first", "second"))
    viewer = make_napari_viewer()
    viewer.add_image(both, channel_axis=0, name=["first", "second"], scale=SCALE)
    widget = PredictWidget(PublicOnlyProxy(viewer))
    viewer.window.add_dock_widget(widget)
    widget.device_combo.setCurrentText("cpu")
    widget.set_model(model)
    widget.large_folder_edit.setText(str(tmp_path))
    widget.disk_format_combo.setCurrentText("ome-zarr")
    widget.image_combo.setCurrentText("first")
    widget.channel_picker.set_ticked(["second"])
    assert widget.start_prediction(), shown
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    assert not shown["error"], shown
    final = tmp_path / "first_labels.ome.zarr"
    node = labels_of(final)
    assert tuple(node.data[0].shape) == (1, *image.shape)
    np.testing.assert_array_equal(np.asarray(node.data[0])[0],
                                  model.predict(both, device="cpu"))
    np.testing.assert_allclose(read_volume(final, lazy=True).data[...], both)
