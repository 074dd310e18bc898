"""The HDF5 reader and the Labels writer, on real files."""

import h5py
import numpy as np
import pytest

from napari_seg3d._reader import get_reader, is_labels
from napari_seg3d._writer import write_labels_h5
from napari_seg3d.engine.io import read_volume


@pytest.fixture
def multi_h5(tmp_path):
    path = tmp_path / "stack.h5"
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        raw = f.create_dataset("raw", data=rng.random((5, 6, 7), dtype=np.float32))
        raw.attrs["element_size_um"] = (2.0, 0.5, 0.5)
        f.create_dataset("group/seg_labels", data=rng.integers(0, 3, (5, 6, 7), dtype=np.uint8))
        f.create_dataset("group/counts", data=rng.integers(0, 3, (5, 6, 7), dtype=np.uint16))
        f.create_dataset("multi", data=np.zeros((2, 5, 6, 7), np.float32))
        f.create_dataset("flat", data=np.zeros((6, 7), np.uint8))
        f.create_dataset("group/mask_float", data=np.zeros((5, 6, 7), np.float32))
    return path


def test_reader_layer_types_names_and_scale(multi_h5):
    reader = get_reader(str(multi_h5))
    assert reader is not None
    layers = {kwargs["name"]: (data, kwargs, kind) for data, kwargs, kind in reader(str(multi_h5))}
    assert set(layers) == {"raw", "group/seg_labels", "group/counts", "multi", "group/mask_float"}
    kinds = {name: kind for name, (_, _, kind) in layers.items()}
    assert kinds == {"raw": "image", "group/seg_labels": "labels", "group/counts": "image",
                     "multi": "image", "group/mask_float": "image"}
    data, kwargs, _ = layers["raw"]
    assert isinstance(data, np.ndarray) and data.shape == (5, 6, 7)
    assert kwargs["scale"] == (2.0, 0.5, 0.5)
    assert kwargs["metadata"] == {"path": str(multi_h5), "key": "/raw"}
    assert "scale" not in layers["group/seg_labels"][1]
    assert layers["multi"][0].shape == (2, 5, 6, 7)


def test_reader_keeps_big_datasets_on_disk(multi_h5, monkeypatch):
    import dask.array as da

    monkeypatch.setattr("napari_seg3d._reader.LAZY_BYTES", 100)
    layers = get_reader(str(multi_h5))(str(multi_h5))
    raw = next(data for data, kwargs, _ in layers if kwargs["name"] == "raw")
    assert isinstance(raw, da.Array)
    with h5py.File(multi_h5, "r") as f:
        np.testing.assert_array_equal(raw.compute(), f["raw"][()])


@pytest.mark.parametrize("name", ["a.tif", "a.npy", "a.zarr", "missing.h5"])
def test_reader_declines_other_paths(tmp_path, name):
    path = tmp_path / name
    if name != "missing.h5":
        path.write_bytes(b"not hdf5")
    assert get_reader(str(path)) is None


def test_reader_declines_non_hdf5_with_h5_suffix(tmp_path):
    path = tmp_path / "fake.h5"
    path.write_bytes(b"random bytes")
    assert get_reader(str(path)) is None
    assert get_reader([str(path)]) is None


@pytest.mark.parametrize("key, dtype, expected", [
    ("/annotations", np.uint16, True), ("/Prediction", np.int32, True), ("/mask", bool, True),
    ("/raw", np.uint8, False), ("/labels", np.float32, False),
])
def test_is_labels(key, dtype, expected):
    assert is_labels(key, np.dtype(dtype)) is expected


def test_writer_round_trip(tmp_path):
    labels = np.random.default_rng(1).integers(0, 4, (5, 6, 7)).astype(np.uint8)
    path = tmp_path / "out.h5"
    written = write_labels_h5(str(path), labels, {"scale": (3.0, 1.0, 0.5), "name": "my labels"})
    assert written == [str(path)]
    volume = read_volume(f"{path}:/labels")
    np.testing.assert_array_equal(volume.data, labels)
    assert volume.voxel_size == (3.0, 1.0, 0.5)
    _data, kwargs, kind = get_reader(str(path))(str(path))[0]
    assert (kind, kwargs["name"], kwargs["scale"]) == ("labels", "labels", (3.0, 1.0, 0.5))
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_writer_keeps_other_datasets(tmp_path):
    path = tmp_path / "out.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("raw", data=np.ones((2, 3, 4), np.float32))
    write_labels_h5(str(path), np.ones((2, 3, 4), np.uint8), {"scale": (1, 1, 1)})
    with h5py.File(path, "r") as f:
        assert set(f) == {"raw", "labels"}


def test_viewer_saves_labels_through_the_plugin(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    layer = viewer.add_labels(np.arange(60, dtype=np.uint8).reshape(3, 4, 5), scale=(2, 1, 1))
    path = tmp_path / "saved.h5"
    viewer.layers.save(str(path), selected=False, plugin="napari-seg3d")
    np.testing.assert_array_equal(read_volume(f"{path}:/labels").data, layer.data)
    viewer.layers.clear()
    viewer.open(str(path), plugin="napari-seg3d")
    assert viewer.layers[0].__class__.__name__ == "Labels"
    assert tuple(viewer.layers[0].scale) == (2.0, 1.0, 1.0)
