"""OME-Zarr (NGFF 0.4 and 0.5) in and out: an OME-Zarr image trains and predicts from the
command line, ``predict --format ome-zarr`` writes the image with its segmentation as NGFF
labels that ome-zarr-py reads back, and napari opens OME-Zarr images as multiscale layers."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import zarr
from conftest import ball_volume
from ome_zarr.format import FormatV04, FormatV05
from ome_zarr.io import parse_url
from ome_zarr.reader import Label, Reader

from napari_seg3d.cli import main
from napari_seg3d.engine.io import read_volume, write_volume
from napari_seg3d.engine.io._ome_zarr_out import ome_writer
from napari_seg3d.engine.training.scribbles import simulate_scribbles

TINY = ["--patch-size", "8", "16", "16", "--base-filters", "4", "--levels", "2", "--quiet",
        "--device", "cpu"]
VOXEL = (2.0, 0.5, 0.5)
SHAPE = (13, 70, 66)  # y and x large enough for a second pyramid level


def write_ome_image(path, image, fmt=None) -> None:
    """``image`` ``(Z, Y, X)`` as an OME-Zarr image with two levels and :data:`VOXEL`."""
    fmt = fmt or FormatV05()
    group = zarr.open_group(str(path), mode="w", zarr_format=fmt.zarr_format)
    ome_writer().write_image(image, group, axes="zyx", fmt=fmt, scale_factors=(2,),
                             scale=dict(zip("zyx", VOXEL)))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """An OME-Zarr image (0.5) and a model trained on it from the command line."""
    folder = tmp_path_factory.mktemp("omezarr")
    image, balls = ball_volume(SHAPE)
    truth = np.where(balls, 7, 3).astype(np.uint8)
    scribbles = simulate_scribbles(balls, slices_per_axis=2, strokes_per_class=2, length=8)
    write_ome_image(folder / "image.ome.zarr", image)
    write_volume(folder / "labels.tif", np.array([0, 3, 7], np.uint8)[scribbles])
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(["train", "--image", str(folder / "image.ome.zarr"), "--labels",
                     str(folder / "labels.tif"), "--out", str(folder / "model.pt"),
                     "--iterations", "2", "--batch-size", "2", *TINY])
    assert code == 0
    return folder, image


@pytest.mark.parametrize("fmt", [FormatV04(), FormatV05()], ids=["0.4", "0.5"])
def test_read_volume_opens_the_full_resolution_level_lazily_with_its_voxel_size(tmp_path, fmt):
    image = np.random.default_rng(0).random(SHAPE, dtype=np.float32)
    write_ome_image(tmp_path / "x.ome.zarr", image, fmt)
    volume = read_volume(tmp_path / "x.ome.zarr", lazy=True)
    assert isinstance(volume.data, zarr.Array)
    assert volume.data.shape == SHAPE and volume.voxel_size == VOXEL
    np.testing.assert_array_equal(volume.data[...], image)


def test_a_channel_axis_is_read_as_c_z_y_x(tmp_path):
    image = np.random.default_rng(1).random((2, *SHAPE), dtype=np.float32)
    group = zarr.open_group(str(tmp_path / "c.ome.zarr"), mode="w")
    ome_writer().write_image(image, group, axes="czyx", scale_factors=(2,),
                             scale={"c": 1.0, **dict(zip("zyx", VOXEL))})
    volume = read_volume(tmp_path / "c.ome.zarr")
    assert volume.data.shape == (2, *SHAPE) and volume.voxel_size == VOXEL


def _labels_node(path):
    nodes = list(Reader(parse_url(str(path)))())
    return [n for n in nodes if n.load(Label) is not None]


def test_predict_ome_zarr_writes_ngff_labels_beside_the_image(workspace, tmp_path):
    folder, image = workspace
    model, source = str(folder / "model.pt"), str(folder / "image.ome.zarr")
    assert main(["predict", source, "--model", model, "--out", str(tmp_path / "o"),
                 "--format", "ome-zarr", "--quiet", "--device", "cpu"]) == 0
    assert main(["predict", source, "--model", model, "--out", str(tmp_path / "t"),
                 "--quiet", "--device", "cpu"]) == 0
    out = tmp_path / "o" / "image_labels.ome.zarr"
    assert out.is_dir() and not [p for p in (tmp_path / "o").iterdir() if ".part" in p.name]
    [labels] = _labels_node(out)
    assert labels.metadata["name"] == "segmentation"
    assert [tuple(a.shape) for a in labels.data] == [SHAPE, (SHAPE[0], 35, 33)]
    assert labels.metadata["coordinateTransformations"][0] == [{"type": "scale",
                                                                 "scale": list(VOXEL)}]
    assert {v["name"] for v in labels.metadata["properties"].values()} == {"class 3", "class 7"}
    full = np.asarray(labels.data[0])
    np.testing.assert_array_equal(full, read_volume(tmp_path / "t" / "image_labels.tif").data)
    np.testing.assert_array_equal(np.asarray(labels.data[1]), full[:, ::2, ::2])
    again = read_volume(out, lazy=True)  # the image written beside the labels
    assert again.voxel_size == VOXEL
    np.testing.assert_allclose(again.data[...], image)


@pytest.mark.parametrize("make, message", [
    (lambda p: zarr.open_group(str(p), mode="w"), "is not an OME-Zarr image"),
    (lambda p: (p.mkdir(), (p / "zarr.json").write_text("{broken")), "is not an OME-Zarr image"),
], ids=["no-multiscales", "broken-metadata"])
def test_a_store_that_is_not_an_ome_zarr_image_fails_its_file_with_exit_3(workspace, tmp_path, capsys,
                                                                          make, message):
    folder, _ = workspace
    bad = tmp_path / "bad.ome.zarr"
    make(bad)
    capsys.readouterr()
    code = main(["predict", str(bad), "--model", str(folder / "model.pt"), "--out",
                 str(tmp_path / "o"), "--format", "ome-zarr", "--quiet", "--device", "cpu"])
    printed = capsys.readouterr()
    assert code == 3 and message in printed.out + printed.err
    assert not (tmp_path / "o" / "bad_labels.ome.zarr").exists()


def test_ome_zarr_with_scheduler_or_instances_is_refused_with_exit_2(workspace, tmp_path,
                                                                      capsys):
    folder, _ = workspace
    code = main(["predict", str(folder / "image.ome.zarr"), "--model", str(folder / "model.pt"),
                 "--out", str(tmp_path / "o"), "--format", "ome-zarr", "--instances", "7",
                 "--quiet"])
    assert code == 2 and "cannot be combined" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_napari_opens_an_ome_zarr_image_and_its_labels_as_multiscale_layers(
        workspace, tmp_path, make_napari_viewer):
    folder, _ = workspace
    assert main(["predict", str(folder / "image.ome.zarr"), "--model", str(folder / "model.pt"),
                 "--out", str(tmp_path), "--format", "ome-zarr", "--quiet",
                 "--device", "cpu"]) == 0
    viewer = make_napari_viewer()
    layers = viewer.open(str(tmp_path / "image_labels.ome.zarr"), plugin="napari-seg3d")
    image = next(layer for layer in layers if layer._type_string == "image")
    labels = next(layer for layer in layers if layer._type_string == "labels")
    for layer in (image, labels):
        assert layer.multiscale and len(layer.data) == 2
        assert tuple(layer.scale) == VOXEL
        assert layer.data[0].shape == SHAPE
    assert labels.name == "segmentation"
    assert {v["name"] for v in labels.metadata["classes"].values()} == {"class 3", "class 7"}
