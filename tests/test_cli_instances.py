"""``napari-seg3d predict --instances CLASS``: ``<stem>_instances.<ext>`` beside the labels, the
same ids as the engine gives the written labels, and one-line refusals before any file."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from conftest import ball_volume

from napari_seg3d._cli_instances import METHOD_NAMES
from napari_seg3d.cli import main
from napari_seg3d.engine.io import read_volume, write_volume
from napari_seg3d.engine.prediction.instance_files import METHODS
from napari_seg3d.engine.prediction.instances import instances
from napari_seg3d.engine.prediction.output_names import MANIFEST, read_manifest
from napari_seg3d.engine.training.scribbles import simulate_scribbles

VOXEL = (2.0, 1.0, 1.0)
TINY = ["--patch-size", "8", "16", "16", "--base-filters", "4", "--levels", "2", "--quiet",
        "--device", "cpu"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """The image of three balls (voxels 2 x 1 x 1) and a model trained on strokes of the balls
    (7) and the background (3)."""
    folder = tmp_path_factory.mktemp("cli-instances")
    image, balls = ball_volume()
    strokes = simulate_scribbles(balls, slices_per_axis=2, strokes_per_class=2, length=8)
    write_volume(folder / "image.tif", image, voxel_size=VOXEL)
    write_volume(folder / "labels.tif", np.array([0, 3, 7], np.uint8)[strokes], voxel_size=VOXEL)
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", "--image", str(folder / "image.tif"), "--labels",
                     str(folder / "labels.tif"), "--out", str(folder / "model.pt"),
                     "--iterations", "30", "--no-report", *TINY]) == 0
    return folder


def _predict(workspace, out, *extra) -> int:
    return main(["predict", str(workspace / "image.tif"), "--model", str(workspace / "model.pt"),
                 "--out", str(out), "--quiet", "--device", "cpu", *extra])


def test_instances_are_written_beside_the_labels(workspace, tmp_path, capsys):
    out = tmp_path / "out"
    assert _predict(workspace, out, "--instances", "7") == 0
    assert capsys.readouterr().out.startswith("done")
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "image_instances.tif",
                                                     "image_labels.tif"]
    labels = read_volume(out / "image_labels.tif")
    written = read_volume(out / "image_instances.tif")
    expected = instances(np.asarray(labels.data), class_value=7, voxel_size=VOXEL)
    assert expected.max() >= 1
    np.testing.assert_array_equal(written.data, expected)
    np.testing.assert_allclose(written.voxel_size, VOXEL)
    assert np.array_equal(np.unique(written.data), np.arange(int(expected.max()) + 1))
    assert read_manifest(out)["image_instances.tif"]["role"] == "instances"


def test_the_probability_method_by_class_name_into_hdf5(workspace, tmp_path):
    out = tmp_path / "out"
    assert _predict(workspace, out, "--instances", "CLASS 7", "--instance-method", "probability",
                    "--probabilities", "--format", "h5", "--min-size", "5") == 0
    written = read_volume(out / "image_instances.h5")
    assert written.key == "/instances"
    labels = np.asarray(read_volume(out / "image_labels.h5").data)
    probability = np.asarray(read_volume(out / "image_probabilities.h5").data)[1]
    expected = instances(labels, class_value=7, seeds="probability", probability=probability,
                         voxel_size=VOXEL, min_size=5)
    np.testing.assert_array_equal(written.data, expected)


def test_components_with_a_given_diameter(workspace, tmp_path):
    out = tmp_path / "out"
    assert _predict(workspace, out, "--instances", "7", "--instance-method", "components",
                    "--object-diameter", "6", "--format", "npy") == 0
    labels = np.load(out / "image_labels.npy")
    np.testing.assert_array_equal(np.load(out / "image_instances.npy"),
                                  instances(labels, class_value=7, method="components"))


@pytest.mark.parametrize(("extra", "words"), [
    (["--instances", "nucleus"], ("The model has no class 'nucleus'; choose one of its classes "
                                  "by value or name: 3 (class 3), 7 (class 7).")),
    (["--instance-method", "components"], "--instance-method only applies with --instances"),
    (["--min-size", "3", "--object-diameter", "4"],
     "--min-size, --object-diameter only apply with --instances"),
    (["--instances", "7", "--instance-method", "probability"], "add --probabilities"),
    (["--instances", "7", "--min-size", "-1"], "must be 0 or more voxels"),
    (["--instances", "7", "--object-diameter", "0"], "must be positive"),
])
def test_wrong_instance_options_are_refused_before_any_file(workspace, tmp_path, capsys, extra,
                                                            words):
    out = tmp_path / "out"
    assert _predict(workspace, out, *extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("napari-seg3d predict: error: ") and words in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists() or not any(out.iterdir())


def test_instances_never_land_on_an_input(workspace, tmp_path, capsys):
    folder = tmp_path / "data"
    folder.mkdir()
    image = read_volume(workspace / "image.tif").data
    write_volume(folder / "a.tif", image)
    write_volume(folder / "a_instances.tif", image)  # what a.tif's instances would be named
    code = main(["predict", str(folder), "--model", str(workspace / "model.pt"), "--out",
                 str(folder), "--quiet", "--device", "cpu", "--instances", "7"])
    assert code == 2
    assert "a_instances.tif" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == ["a.tif", "a_instances.tif"]


def test_a_file_whose_instances_fail_is_reported_and_keeps_its_labels(workspace, tmp_path,
                                                                       capsys):
    out = tmp_path / "out"
    (out / "image_instances.tif").mkdir(parents=True)  # a folder where the file would go
    assert _predict(workspace, out, "--instances", "7") == 3
    captured = capsys.readouterr()
    assert captured.out.startswith("failed")
    assert "labels written to" in captured.out and "but no instances" in captured.out
    assert (out / "image_labels.tif").is_file()


def test_the_parser_offers_the_engine_methods():
    assert METHOD_NAMES == tuple(METHODS)
