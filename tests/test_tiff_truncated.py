"""Truncated TIFFs, and TIFFs whose pages disagree with their own metadata, are errors (issue 19).

Real files written by tifffile in the layouts users meet (ImageJ hyperstack, OME-TIFF, plain
multipage without metadata, zlib-compressed, written page by page like the bundled sample,
BigTIFF), cut in the middle of the header, of a page's tag list, of a page's image data, and just
before the last page; each read must raise a VolumeError naming the file, lazily or not, where
tifffile alone would log a warning and return fewer images. The same volumes whole read back
exactly. Through the command line and the Batch widget the cases in _bad_input_cases.UNREADABLE
cover the same checks (test_bad_input_cli.py, test_bad_input_widgets.py).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_seg3d._sample_data import SAMPLE_DIR
from napari_seg3d.engine.errors import VolumeError
from napari_seg3d.engine.io import read_volume

VOLUME = np.random.default_rng(0).integers(0, 60_000, (6, 2, 20, 24), dtype=np.uint16)  # ZCYX


def _imagej(path: Path) -> np.ndarray:
    tifffile.imwrite(path, VOLUME, imagej=True, metadata={"axes": "ZCYX"})
    return np.moveaxis(VOLUME, 1, 0)


def _ome(path: Path) -> np.ndarray:
    tifffile.imwrite(path, VOLUME, ome=True, metadata={"axes": "ZCYX"})
    return np.moveaxis(VOLUME, 1, 0)


def _plain(path: Path) -> np.ndarray:
    tifffile.imwrite(path, VOLUME[:, 0], metadata=None, photometric="minisblack")
    return VOLUME[:, 0]


def _compressed(path: Path) -> np.ndarray:
    tifffile.imwrite(path, VOLUME[:, 0], compression="zlib", photometric="minisblack")
    return VOLUME[:, 0]


def _page_by_page(path: Path) -> np.ndarray:
    """Each page's tags, then its data, as many microscope programs write (and the sample)."""
    with tifffile.TiffWriter(path) as tif:
        for plane in VOLUME[:, 0]:
            tif.write(plane, contiguous=False, photometric="minisblack", metadata=None)
    return VOLUME[:, 0]


def _bigtiff(path: Path) -> np.ndarray:
    tifffile.imwrite(path, VOLUME[:, 0], bigtiff=True, photometric="minisblack")
    return VOLUME[:, 0]


KINDS = {"ImageJ hyperstack": _imagej, "OME-TIFF": _ome, "plain multipage": _plain,
         "zlib-compressed": _compressed, "page by page": _page_by_page, "BigTIFF": _bigtiff}


def _layout(path: Path) -> tuple[list[int], list[tuple[int, int]]]:
    """Where each page's tag list starts, and each page's image data ``(start, end)``."""
    with tifffile.TiffFile(path) as tif:
        pages = list(tif.pages)
        return ([page.offset for page in pages],
                [(page.dataoffsets[0], page.dataoffsets[-1] + page.databytecounts[-1])
                 for page in pages])


def _cut(path: Path, where: str) -> int:
    """The length to cut ``path`` to, for a cut ``where``."""
    ifds, data = _layout(path)
    middle = len(ifds) // 2
    return {"mid-header": 5,
            "mid-tag-list": ifds[middle] + 11,
            "mid-page": (data[middle][0] + data[middle][1]) // 2,
            "last page missing": min(ifds[-1], data[-1][0])}[where]


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, tuple[Path, np.ndarray]]:
    """Each kind of file, whole, and the ``(Z, Y, X)`` or ``(C, Z, Y, X)`` data it holds."""
    folder = tmp_path_factory.mktemp("tiffs")
    files = {}
    for kind, write in KINDS.items():
        path = folder / f"{kind.replace(' ', '_')}.{'ome.tif' if 'OME' in kind else 'tif'}"
        files[kind] = (path, write(path))
    return files


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("lazy", [False, True])
def test_a_whole_file_reads_back_exactly(written, kind, lazy):
    path, expected = written[kind]
    with read_volume(path, lazy=lazy) as volume:
        np.testing.assert_array_equal(np.asarray(volume.data), expected)


@pytest.mark.parametrize("where", ["mid-header", "mid-tag-list", "mid-page", "last page missing"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_cut_file_is_an_error(written, tmp_path, kind, where):
    source = written[kind][0]
    cut = tmp_path / f"cut{''.join(source.suffixes)}"
    cut.write_bytes(source.read_bytes()[: _cut(source, where)])
    for lazy in (False, True):
        with pytest.raises(VolumeError) as error:
            read_volume(cut, lazy=lazy)
        message = str(error.value)
        assert message.startswith(f"{cut} is truncated"), message
        assert message.endswith("Copy or export the file again.") and "\n" not in message


def test_the_cut_sample_of_the_issue_is_an_error(tmp_path):
    """The sample cut to 60,000 of 138,925 bytes was read as one (61, 57) slice."""
    path = tmp_path / "image.tif"
    path.write_bytes((SAMPLE_DIR / "image.tif").read_bytes()[:60_000])
    with pytest.raises(VolumeError, match="is truncated: its image data needs 62920 bytes but "
                                          "the file has 60000"):
        read_volume(path)


def _patched(tmp_path: Path, write, old: bytes, new: bytes) -> Path:
    """A whole file whose metadata claims more than its pages hold (a writer that stopped
    early but closed the file, or an edited description)."""
    path = tmp_path / "short.tif"
    write(path)
    data = path.read_bytes()
    assert old in data
    path.write_bytes(data.replace(old, new))
    return path


@pytest.mark.parametrize("write, old, new, message", [
    (lambda p: tifffile.imwrite(p, VOLUME[:, 0], imagej=True), b"images=6", b"images=9",
     "its ImageJ metadata describes 9 images but its pages hold shape (6, 20, 24)"),
    (lambda p: tifffile.imwrite(p, VOLUME, imagej=True, metadata={"axes": "ZCYX"}),
     b"slices=6", b"slices=7",
     "its ImageJ metadata describes 14 images but its pages hold shape (12, 20, 24)"),
    (lambda p: tifffile.imwrite(p, VOLUME[:, 0], compression="zlib"), b'"shape": [6,',
     b'"shape": [9,', "its metadata describes shape (9, 20, 24) but its pages hold shape"),
    (lambda p: tifffile.imwrite(p, VOLUME[:, 0]), b'"shape": [6,', b'"shape": [9,',
     "is truncated: its image data needs"),
    (lambda p: tifffile.imwrite(p, VOLUME[:, 0], ome=True, metadata={"axes": "ZYX"}),
     b'SizeZ="6"', b'SizeZ="9"', "3 of the 9 pages of its image are missing"),
], ids=["ImageJ images=", "ImageJ slices=", "shaped, compressed", "shaped, contiguous", "OME"])
def test_pages_that_disagree_with_the_metadata_are_an_error(tmp_path, write, old, new, message):
    path = _patched(tmp_path, write, old, new)
    with pytest.raises(VolumeError) as error:
        read_volume(path)
    text = str(error.value)
    assert text.startswith(f"{path} is ") and message in text, text
    assert text.endswith("Copy or export the file again."), text


def test_a_page_list_that_loops_is_an_error(tmp_path):
    path = tmp_path / "loop.tif"
    tifffile.imwrite(path, VOLUME[:, 0], metadata=None, photometric="minisblack")
    ifds, _ = _layout(path)
    data = bytearray(path.read_bytes())
    count = struct.unpack_from("<H", data, ifds[-1])[0]
    struct.pack_into("<I", data, ifds[-1] + 2 + 12 * count, ifds[1])  # last page -> page 2
    path.write_bytes(bytes(data))
    with pytest.raises(VolumeError, match="is damaged: its list of pages loops back at page 7"):
        read_volume(path)
