"""OME-Zarr outputs as NGFF asks, and the napari reader's choice of folders: the labels of a
``c, z, y, x`` image keep its axes (one channel) and voxel size, ome-zarr-py reads them back and
ome-zarr-models validates the store; a folder that is no OME-Zarr image, or a damaged one, is
declined by the reader instead of failing in napari."""

from __future__ import annotations

import contextlib
import io
import shutil

import numpy as np
import pytest
import zarr
from conftest import ball_volume
from ome_zarr.io import parse_url
from ome_zarr.reader import Label, Multiscales, Reader
from ome_zarr_models.v05 import Image

from napari_seg3d import _reader
from napari_seg3d.cli import main
from napari_seg3d.engine.io import read_volume, write_volume
from napari_seg3d.engine.io._ome_zarr_out import ome_writer
from napari_seg3d.engine.training.scribbles import simulate_scribbles

TINY = ["--patch-size", "8", "16", "16", "--base-filters", "4", "--levels", "2", "--quiet",
        "--device", "cpu"]
VOXEL = (2.0, 0.5, 0.5)
SHAPE = (13, 70, 66)  # y and x large enough for a second pyramid level


def write_channel_image(path, image) -> None:
    """``image`` ``(C, Z, Y, X)`` as an OME-Zarr 0.5 image with two levels and :data:`VOXEL`."""
    group = zarr.open_group(str(path), mode="w")
    ome_writer().write_image(image, group, axes="czyx", scale_factors=(2,),
                             scale={"c": 1.0, **dict(zip("zyx", VOXEL))})


@pytest.fixture(scope="module")
def channels(tmp_path_factory):
    """A two-channel OME-Zarr image, a two-channel tiny model trained on it from the command
    line, and its prediction with ``--format ome-zarr`` and as TIFF."""
    folder = tmp_path_factory.mktemp("channels")
    image, balls = ball_volume(SHAPE)
    two = np.stack([image, 1.0 - image]).astype(np.float32)
    write_channel_image(folder / "c.ome.zarr", two)
    scribbles = simulate_scribbles(balls, slices_per_axis=2, strokes_per_class=2, length=8)
    write_volume(folder / "labels.tif", np.array([0, 1, 2], np.uint8)[scribbles])
    source, model = str(folder / "c.ome.zarr"), str(folder / "model.pt")
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", "--image", source, "--labels", str(folder / "labels.tif"),
                     "--out", model, "--iterations", "2", "--batch-size", "2", *TINY]) == 0
        for out, fmt in (("o", "ome-zarr"), ("t", "tif")):
            assert main(["predict", source, "--model", model, "--out", str(folder / out),
                         "--format", fmt, "--quiet", "--device", "cpu"]) == 0
    return folder, two


def _nodes(path):
    return list(Reader(parse_url(str(path)))())


def test_the_labels_of_a_channel_image_keep_its_axes_with_one_channel(channels):
    folder, two = channels
    out = folder / "o" / "c_labels.ome.zarr"
    image = next(n for n in _nodes(out) if n.load(Label) is None and n.load(Multiscales))
    [labels] = [n for n in _nodes(out) if n.load(Label) is not None]
    names = [a["name"] for a in labels.metadata["axes"]]
    assert names == [a["name"] for a in image.metadata["axes"]] == ["c", "z", "y", "x"]
    assert [tuple(a.shape) for a in labels.data] == [(1, *SHAPE), (1, SHAPE[0], 35, 33)]
    assert len(labels.data) == len(image.data)  # as many levels as the image
    scales = [t[0]["scale"] for t in labels.metadata["coordinateTransformations"]]
    assert scales == [[1.0, *VOXEL], [1.0, VOXEL[0], 1.0, 1.0]]
    assert image.metadata["coordinateTransformations"][0][0]["scale"] == [1.0, *VOXEL]
    truth = read_volume(folder / "t" / "c_labels.tif").data
    full = np.asarray(labels.data[0])
    np.testing.assert_array_equal(full[0], truth)
    np.testing.assert_array_equal(np.asarray(labels.data[1])[0], full[0][:, ::2, ::2])
    np.testing.assert_allclose(np.asarray(image.data[0]), two)
    dims = zarr.open_array(str(out / "labels" / "segmentation" / "0"), mode="r")
    assert dims.metadata.dimension_names == ("c", "z", "y", "x")


def test_ome_zarr_models_validates_the_output(channels):
    folder, _ = channels
    model = Image.from_zarr(zarr.open_group(str(folder / "o" / "c_labels.ome.zarr"), mode="r"))
    assert model.labels.label_paths == ["segmentation"]
    [label] = model.labels.attributes.ome.labels
    assert label == "segmentation" and model.labels.attributes.ome.version == "0.5"


def test_napari_shows_the_labels_of_a_channel_image_like_one_channel(channels,
                                                                     make_napari_viewer):
    folder, _ = channels
    viewer = make_napari_viewer()
    layers = viewer.open(str(folder / "o" / "c_labels.ome.zarr"), plugin="napari-seg3d")
    images = [layer for layer in layers if layer._type_string == "image"]
    [labels] = [layer for layer in layers if layer._type_string == "labels"]
    assert len(images) == 2 and all(tuple(layer.scale) == VOXEL for layer in images)
    assert labels.multiscale and labels.data[0].shape == SHAPE
    assert tuple(labels.scale) == VOXEL


def test_instances_of_an_ome_zarr_output_come_from_its_ngff_labels(channels, tmp_path):
    folder, _ = channels
    assert main(["predict", str(folder / "c.ome.zarr"), "--model", str(folder / "model.pt"),
                 "--out", str(tmp_path), "--format", "ome-zarr", "--instances", "2",
                 "--instance-method", "components", "--quiet", "--device", "cpu"]) == 0
    ids = read_volume(tmp_path / "c_instances.zarr")
    labels = read_volume(folder / "t" / "c_labels.tif").data
    assert ids.voxel_size == VOXEL and ids.data.shape == SHAPE
    assert 0 < (labels == 2).sum() < labels.size  # objects, and background
    np.testing.assert_array_equal(ids.data > 0, labels == 2)


def _ome_image(path):
    write_channel_image(path, np.zeros((1, *SHAPE), np.float32))


def _missing_level(path):
    _ome_image(path)
    shutil.rmtree(path / "s0")


def _time_series(path):
    group = zarr.open_group(str(path), mode="w")
    ome_writer().write_image(np.zeros((2, 1, 4, 8, 8), np.uint8), group, axes="tczyx",
                             scale_factors=())


@pytest.mark.parametrize("make", [
    lambda p: (p.mkdir(), (p / "notes.txt").write_text("not zarr")),
    lambda p: zarr.open_group(str(p), mode="w"),
    lambda p: (p.mkdir(), (p / "zarr.json").write_text("{broken")),
    lambda p: zarr.create_array(str(p), shape=(4, 8, 8), dtype=np.uint8),
    _missing_level,
    _time_series,
], ids=["plain-folder", "no-multiscales", "broken-metadata", "plain-array", "missing-level",
        "time-series"])
def test_the_reader_declines_a_folder_it_cannot_open(tmp_path, make):
    bad = tmp_path / "bad.ome.zarr"
    make(bad)
    assert _reader.get_reader(str(bad)) is None
    assert _reader.get_reader([str(bad)]) is None


def test_the_reader_takes_an_ome_zarr_image(tmp_path):
    _ome_image(tmp_path / "good.ome.zarr")
    reader = _reader.get_reader(str(tmp_path / "good.ome.zarr"))
    assert reader is _reader.read_ome_zarr
    [(data, kwargs, kind)] = reader(str(tmp_path / "good.ome.zarr"))
    assert kind == "image" and data[0].shape == (1, *SHAPE) and kwargs["multiscale"]
