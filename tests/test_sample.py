"""The nuclei sample: an image, a sparse two-class annotation layer, and its licence notice."""

import numpy as np
import pytest

from napari_seg3d._sample_data import (
    SAMPLE_DIR,
    load_nuclei,
    nuclei3d_sample,
    nuclei_scale,
    write_sample,
)
from napari_seg3d.cli import main
from napari_seg3d.engine.errors import OutputError
from napari_seg3d.engine.io import read_volume


def test_load_nuclei_arrays():
    image, truth, scribbles = load_nuclei()
    assert image.shape == truth.shape == scribbles.shape == (31, 61, 57)
    assert set(np.unique(truth)) == {1, 2}
    assert set(np.unique(scribbles)) == {0, 1, 2}
    assert 0 < np.count_nonzero(scribbles) < 0.005 * scribbles.size  # under 0.5% annotated
    painted = scribbles > 0
    np.testing.assert_array_equal(scribbles[painted], truth[painted])


def test_sample_layers():
    (image, image_kw, image_type), (labels, labels_kw, labels_type) = nuclei3d_sample()
    assert (image_type, labels_type) == ("image", "labels")
    assert (image_kw["name"], labels_kw["name"]) == ("nuclei", "nuclei annotations")
    assert image.shape == labels.shape and image_kw["scale"] == labels_kw["scale"]
    assert labels_kw["metadata"]["class_names"] == {1: "background", 2: "nucleus"}


def test_licence_ships_with_the_data():
    assert "Uwe Schmidt, Martin Weigert" in (SAMPLE_DIR / "LICENSE-stardist.txt").read_text()
    assert (SAMPLE_DIR / "SOURCE.md").is_file()


def test_open_sample_in_viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-seg3d", "nuclei3d")
    assert [layer.name for layer in viewer.layers] == ["nuclei", "nuclei annotations"]
    image, labels = viewer.layers
    assert type(labels).__name__ == "Labels" and type(image).__name__ == "Image"
    assert image.data.shape == labels.data.shape
    assert set(np.unique(labels.data)) == {0, 1, 2}


def test_write_sample_writes_what_the_napari_sample_shows(tmp_path, capsys):
    """``napari-seg3d demo --write-sample DIR``: the image, the exact strokes of the napari
    sample and the truth, with the voxel size, and the licence notice beside them."""
    assert main(["demo", "--write-sample", str(tmp_path / "sample")]) == 0
    assert "image.tif, scribbles.tif, truth.tif" in capsys.readouterr().out
    image, truth, scribbles = load_nuclei()
    (_, image_kw, _), (layer_strokes, _, _) = nuclei3d_sample()
    for name, expected in [("image", image), ("scribbles", layer_strokes), ("truth", truth)]:
        volume = read_volume(tmp_path / "sample" / f"{name}.tif")
        np.testing.assert_array_equal(volume.data, expected)
        assert volume.data.dtype == expected.dtype
        assert volume.voxel_size == nuclei_scale() == tuple(image_kw["scale"])
    np.testing.assert_array_equal(layer_strokes, scribbles)
    notice = (tmp_path / "sample" / "LICENSE-stardist.txt").read_text()
    assert notice == (SAMPLE_DIR / "LICENSE-stardist.txt").read_text()


def test_write_sample_keeps_existing_files(tmp_path):
    (tmp_path / "scribbles.tif").write_bytes(b"mine")
    with pytest.raises(OutputError, match="scribbles.tif already exists; choose an empty folder"):
        write_sample(tmp_path)
    assert (tmp_path / "scribbles.tif").read_bytes() == b"mine"
    assert not (tmp_path / "image.tif").exists()
