"""Volume files: round trips, voxel sizes, HDF5 keys, damaged files, atomic writes, safe names."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile

from napari_seg3d.engine import io
from napari_seg3d.engine.io import (
    ChunkedWriter,
    Volume,
    VolumeError,
    list_datasets,
    output_path,
    read_volume,
    split_path,
    write_volume,
)

SHAPES = [(5, 6, 7), (2, 5, 6, 7)]
DTYPES = [np.uint8, np.uint16, np.float32, np.int32]
FORMATS = ["tif", "h5", "npy"]


def _volume(shape, dtype, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 200, size=shape).astype(dtype)


def _no_part_files(folder: Path) -> bool:
    return not list(folder.glob("*.part"))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip(tmp_path, fmt, shape, dtype):
    data = _volume(shape, dtype)
    path = write_volume(tmp_path / f"v.{fmt}", data)
    volume = read_volume(path)
    assert isinstance(volume.data, np.ndarray)
    assert volume.data.dtype == data.dtype
    np.testing.assert_array_equal(volume.data, data)
    assert volume.path == path
    assert _no_part_files(tmp_path)


@pytest.mark.parametrize("fmt, dtype", [("tif", np.uint8), ("tif", np.float32),
                                        ("tif", np.int32), ("h5", np.uint16)])
@pytest.mark.parametrize("shape", SHAPES)
def test_voxel_size_round_trip(tmp_path, fmt, dtype, shape):
    path = write_volume(tmp_path / f"v.{fmt}", _volume(shape, dtype), voxel_size=(2.5, 0.3, 0.4))
    assert read_volume(path).voxel_size == pytest.approx((2.5, 0.3, 0.4), rel=1e-6)


@pytest.mark.parametrize("fmt", FORMATS)
def test_no_voxel_size_reads_none(tmp_path, fmt):
    assert read_volume(write_volume(tmp_path / f"v.{fmt}", _volume((3, 4, 5), np.uint8))
                       ).voxel_size is None


@pytest.mark.parametrize("attr", ["element_size_um", "voxel_size", "resolution"])
def test_hdf5_voxel_size_attributes(tmp_path, attr):
    with h5py.File(tmp_path / "v.h5", "w") as f:
        f.create_dataset("raw", data=np.zeros((3, 4, 5), np.uint8)).attrs[attr] = [3.0, 1.0, 0.5]
    assert read_volume(tmp_path / "v.h5").voxel_size == (3.0, 1.0, 0.5)


@pytest.mark.parametrize("axes, shape, expected", [
    ("TZCYX", (1, 4, 3, 5, 6), (3, 4, 5, 6)),  # ImageJ hyperstack: channel first, T squeezed
    ("ZYX", (4, 5, 6), (4, 5, 6)),
    ("TYX", (4, 5, 6), (4, 5, 6)),  # frames saved instead of slices act as Z
    ("YX", (5, 6), (1, 5, 6)),
    ("ZCYX", (1, 2, 5, 6), (2, 1, 5, 6)),
])
def test_tiff_axes_become_zyx(tmp_path, axes, shape, expected):
    tifffile.imwrite(tmp_path / "h.tif", np.ones(shape, np.uint16), imagej=True,
                     metadata={"axes": axes})
    assert read_volume(tmp_path / "h.tif").data.shape == expected


def test_tiff_with_time_and_z_is_refused(tmp_path):
    tifffile.imwrite(tmp_path / "t.tif", np.ones((2, 3, 5, 6), np.uint8), imagej=True,
                     metadata={"axes": "TZYX"})
    with pytest.raises(VolumeError, match="channel group"):
        read_volume(tmp_path / "t.tif")


@pytest.mark.parametrize("spec, expected", [
    ("file.h5:/group/data", ("file.h5", "/group/data")),
    ("file.HDF5:group/data", ("file.HDF5", "/group/data")),
    ("dir/file.hdf:/x", ("dir/file.hdf", "/x")),
    ("C:\\data\\vol.h5:/raw", ("C:\\data\\vol.h5", "/raw")),
    ("C:\\data\\vol.tif", ("C:\\data\\vol.tif", None)),
    ("C:\\data\\vol.h5", ("C:\\data\\vol.h5", None)),
    ("file.h5", ("file.h5", None)),
    ("a:b.tif", ("a:b.tif", None)),
    (Path("x/v.npy"), ("x/v.npy", None)),
])
def test_split_path(spec, expected):
    assert split_path(spec) == (Path(expected[0]), expected[1])


def test_hdf5_key_syntax_and_other_datasets_kept(tmp_path):
    raw, labels = _volume((3, 4, 5), np.uint16), _volume((3, 4, 5), np.uint8, seed=1)
    write_volume(f"{tmp_path / 'f.h5'}:/group/raw", raw)
    write_volume(f"{tmp_path / 'f.h5'}:/group/labels", labels)
    volume = read_volume(f"{tmp_path / 'f.h5'}:/group/raw")
    assert volume.key == "/group/raw"
    np.testing.assert_array_equal(volume.data, raw)
    assert list_datasets(tmp_path / "f.h5") == [("/group/labels", (3, 4, 5), "uint8"),
                                                ("/group/raw", (3, 4, 5), "uint16")]


def test_hdf5_default_key_is_labels(tmp_path):
    write_volume(tmp_path / "f.h5", _volume((3, 4, 5), np.uint8))
    assert read_volume(tmp_path / "f.h5").key == "/labels"


def test_several_datasets_without_key_lists_them(tmp_path):
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f["raw"] = np.zeros((3, 4, 5), np.uint8)
        f["seg/labels"] = np.zeros((3, 4, 5), np.uint32)
    with pytest.raises(VolumeError) as error:
        read_volume(tmp_path / "f.h5")
    message = str(error.value)
    assert "/raw" in message and "/seg/labels" in message and "f.h5:/" in message


def test_missing_key_lists_datasets(tmp_path):
    write_volume(tmp_path / "f.h5", _volume((3, 4, 5), np.uint8))
    with pytest.raises(VolumeError, match="/labels"):
        read_volume(f"{tmp_path / 'f.h5'}:/nope")


def test_only_volume_is_found(tmp_path):
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f["meta/table"] = np.zeros((4, 2))
        f["scalar"] = 3
        f["deep/volume"] = _volume((3, 4, 5), np.float32)
    volume = read_volume(tmp_path / "f.h5")
    assert volume.key == "/deep/volume"
    np.testing.assert_array_equal(volume.data, _volume((3, 4, 5), np.float32))


def test_lazy_hdf5_is_an_open_dataset(tmp_path):
    data = _volume((4, 5, 6), np.uint16)
    write_volume(tmp_path / "f.h5", data)
    with read_volume(tmp_path / "f.h5", lazy=True) as volume:
        assert isinstance(volume.data, h5py.Dataset)
        np.testing.assert_array_equal(volume.data[1:3, :, 2], data[1:3, :, 2])
    assert not volume.data.id.valid  # the file is closed on leaving the block


@pytest.mark.parametrize("fmt, compression", [("npy", True), ("tif", False)])
def test_lazy_npy_and_uncompressed_tiff_are_memory_mapped(tmp_path, fmt, compression):
    data = _volume((2, 4, 5, 6), np.uint16)
    write_volume(tmp_path / f"v.{fmt}", data, compression=compression)
    volume = read_volume(tmp_path / f"v.{fmt}", lazy=True)
    assert isinstance(volume.data, np.memmap)
    np.testing.assert_array_equal(volume.data, data)
    del volume


@pytest.mark.parametrize("fmt, dtype, compression", [
    ("tif", np.uint8, False), ("tif", np.uint8, True), ("tif", np.int32, False),
    ("tif", np.int32, True), ("h5", np.uint8, False), ("npy", np.uint8, False)])
def test_truncated_file_is_a_volume_error(tmp_path, fmt, dtype, compression):
    path = write_volume(tmp_path / f"v.{fmt}", _volume((8, 32, 32), dtype),
                        compression=compression)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    for lazy in (False, True):
        with pytest.raises(VolumeError, match="v."):
            read_volume(path, lazy=lazy)


@pytest.mark.parametrize("suffix", io.SUFFIXES)
def test_random_bytes_are_a_volume_error(tmp_path, suffix):
    path = tmp_path / f"noise{suffix}"
    path.write_bytes(np.random.default_rng(1).bytes(4000))
    with pytest.raises(VolumeError):
        read_volume(path)


@pytest.mark.parametrize("name", ["missing.tif", "missing.h5", "missing.h5:/raw", "missing.npy"])
def test_missing_file_is_a_volume_error(tmp_path, name):
    with pytest.raises(VolumeError, match="Cannot find"):
        read_volume(f"{tmp_path}/{name}")


def test_unknown_format_is_a_volume_error(tmp_path):
    (tmp_path / "v.png").write_bytes(b"x")
    with pytest.raises(VolumeError, match=r"\.tif"):
        read_volume(tmp_path / "v.png")
    with pytest.raises(VolumeError, match=r"\.npy"):
        write_volume(tmp_path / "v.png", np.zeros((2, 2, 2)))


@pytest.mark.parametrize("fmt, target, name", [
    ("tif", tifffile, "imwrite"), ("h5", h5py.Group, "create_dataset"), ("npy", np, "save")])
def test_failed_write_keeps_previous_file(tmp_path, monkeypatch, fmt, target, name):
    old = _volume((3, 4, 5), np.uint8)
    path = write_volume(tmp_path / f"v.{fmt}", old)

    def half_write_then_fail(destination, *args, **kwargs):
        if isinstance(destination, (str, Path)):
            Path(destination).write_bytes(b"half a file")
        elif hasattr(destination, "write"):
            destination.write(b"half a file")
        assert not _no_part_files(tmp_path)  # dies once the temporary file exists
        raise OSError("disk full")

    monkeypatch.setattr(target, name, half_write_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_volume(path, _volume((3, 4, 5), np.uint8, seed=2))
    monkeypatch.undo()
    np.testing.assert_array_equal(read_volume(path).data, old)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


@pytest.mark.parametrize("dtype, imagej", [(np.uint8, True), (np.uint16, True),
                                           (np.float32, True), (np.int32, False)])
def test_tiff_is_imagej_when_the_dtype_allows(tmp_path, dtype, imagej):
    path = write_volume(tmp_path / "v.tif", _volume((2, 3, 4, 5), dtype))
    with tifffile.TiffFile(path) as tif:
        assert tif.is_imagej == imagej


def test_hdf5_is_chunked_compressed_with_element_size(tmp_path):
    write_volume(tmp_path / "v.h5", _volume((3, 70, 5), np.uint8), voxel_size=(2, 1, 1))
    with h5py.File(tmp_path / "v.h5", "r") as f:
        dataset = f["labels"]
        assert dataset.chunks == (3, 64, 5) and dataset.compression == "gzip"
        assert tuple(dataset.attrs["element_size_um"]) == (2.0, 1.0, 1.0)


def _regions(shape, step=3):
    for z in range(0, shape[-3], step):
        yield (..., slice(z, z + step), slice(None), slice(None))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("shape", SHAPES)
def test_chunked_writer_commit(tmp_path, fmt, shape):
    data = _volume(shape, np.uint16)
    with ChunkedWriter(tmp_path / f"out.{fmt}", shape, np.uint16, voxel_size=(2, 1, 1),
                       chunks=(2,) * len(shape)) as writer:
        for slices in _regions(shape):
            writer.write(slices, data[slices])
            assert not (tmp_path / f"out.{fmt}").exists()
        assert writer.commit() == tmp_path / f"out.{fmt}"
    volume = read_volume(tmp_path / f"out.{fmt}")
    np.testing.assert_array_equal(volume.data, data)
    assert volume.voxel_size == (None if fmt == "npy" else (2.0, 1.0, 1.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"out.{fmt}"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_chunked_writer_abort_keeps_previous_file(tmp_path, fmt):
    old = write_volume(tmp_path / f"out.{fmt}", _volume((4, 5, 6), np.uint8))
    with pytest.raises(RuntimeError, match="tile failed"):
        with ChunkedWriter(old, (4, 5, 6), np.uint8) as writer:
            writer.write((slice(0, 2),), np.full((2, 5, 6), 7, np.uint8))
            raise RuntimeError("tile failed")
    np.testing.assert_array_equal(read_volume(old).data, _volume((4, 5, 6), np.uint8))
    assert sorted(p.name for p in tmp_path.iterdir()) == [old.name]
    with pytest.raises(RuntimeError, match="aborted"):
        writer.write((slice(0, 1),), 0)


def test_chunked_writer_without_commit_writes_nothing(tmp_path):
    with ChunkedWriter(tmp_path / "out.h5", (2, 3, 4), np.uint8):
        pass
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_overwrite_false_refuses_existing_file(tmp_path, fmt):
    path = write_volume(tmp_path / f"v.{fmt}", _volume((3, 4, 5), np.uint8))
    with pytest.raises(VolumeError, match="already exists"):
        write_volume(path, _volume((3, 4, 5), np.uint8, seed=3), overwrite=False)
    np.testing.assert_array_equal(read_volume(path).data, _volume((3, 4, 5), np.uint8))


def test_overwrite_false_allows_a_new_hdf5_dataset(tmp_path):
    write_volume(tmp_path / "v.h5", _volume((3, 4, 5), np.uint8), overwrite=False)
    write_volume(f"{tmp_path / 'v.h5'}:/other", _volume((3, 4, 5), np.uint8), overwrite=False)
    assert [name for name, _, _ in list_datasets(tmp_path / "v.h5")] == ["/labels", "/other"]


@pytest.mark.parametrize("spec, fmt, expected", [
    ("data/cells.tif", "tif", "cells_labels.tif"),
    ("../../evil.tif", "h5", "evil_labels.h5"),
    ("..\\..\\evil.tif", "tif", "evil_labels.tif"),
    (".hidden.tif", "npy", "hidden_labels.npy"),
    ("a:b.tif", "tif", "a_b_labels.tif"),
    ("raw.h5:/group/../../x", ".tiff", "raw_x_labels.tiff"),
    ("stack.h5:/volumes/raw", "h5", "stack_raw_labels.h5"),
    ("...", "tif", "volume_labels.tif"),
])
def test_output_path_stays_in_out_dir(tmp_path, spec, fmt, expected):
    out = output_path(tmp_path, spec, fmt)
    assert out == tmp_path / expected
    assert out.parent == tmp_path and not out.name.startswith(".")


def test_output_path_rejects_unknown_format(tmp_path):
    with pytest.raises(VolumeError, match="tif"):
        output_path(tmp_path, "a.tif", "png")


def test_volume_is_a_plain_record(tmp_path):
    volume = Volume(np.zeros((1, 2, 3)), None, tmp_path / "x.npy")
    volume.close()
    assert volume.key is None
