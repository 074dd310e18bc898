"""Checks that a TIFF file is whole and agrees with its own metadata before it is read.

tifffile reads what it can of a truncated or damaged file and only logs the rest, so a file cut
short would come back as fewer images (a 2D slice instead of a volume) without an error. Two
checks close that: :func:`check_tiff_structure` walks the raw file (header, every page's tag
list, tag values and image data must lie inside the file, the page list must end), and
:func:`check_tiff_series` compares the series tifffile found with the shape the file's ImageJ,
tifffile (shaped) or OME metadata describes.
"""

from __future__ import annotations

import functools
import math
import struct
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import VolumeError

AGAIN = "Copy or export the file again."
# bytes per value of each TIFF field type (BYTE, ASCII, SHORT, LONG, RATIONAL, ..., LONG8, IFD8)
# (index 19 and 0 stand for unknown types, whose size is not checked)
_TYPE_TABLE = np.array([0, 1, 1, 2, 4, 8, 1, 1, 2, 4, 8, 4, 8, 4, 0, 0, 8, 8, 8, 0], np.float64)
_INT_TYPES = {3: "u2", 4: "u4", 13: "u4", 16: "u8", 18: "u8"}
_DATA_TAGS = ((273, 279), (324, 325))  # StripOffsets/StripByteCounts, TileOffsets/TileByteCounts
_DATA_CODES = {code for pair in _DATA_TAGS for code in pair}
_LSM_INFO = 34412  # Zeiss LSM files store the uncompressed size in StripByteCounts


@dataclass(frozen=True)
class _Format:
    """The layout of classic TIFF (32-bit offsets) or BigTIFF (64-bit)."""

    order: str  # "<" or ">"
    offset: str  # struct code of an offset: "I" or "Q"
    count: str  # struct code of the number of tags: "H" or "Q"

    @property
    def offset_size(self) -> int:
        return struct.calcsize(self.offset)

    @property
    def count_size(self) -> int:
        return struct.calcsize(self.count)

    @functools.cached_property
    def entry(self) -> np.dtype:
        """One entry of a page's tag list: tag code, field type, count, value or offset."""
        return np.dtype([("code", self.order + "u2"), ("type", self.order + "u2"),
                         ("n", f"{self.order}u{self.offset_size}"),
                         ("value", f"{self.order}u{self.offset_size}")])


def check_tiff_structure(path: Path) -> None:
    """Raise a :class:`VolumeError` if the TIFF at ``path`` ends before its header, a page, a tag
    value or image data ends, or if its page list loops. Files that do not start like a TIFF are
    left to tifffile, which says what they are not."""
    with open(path, "rb") as fh:
        buf = _File(fh)
        if buf.size < 8:
            raise VolumeError(f"{path} is truncated: it ends after {buf.size} bytes, inside its "
                              f"TIFF header. {AGAIN}")
        header = _header(buf, path)
        if header is not None:
            _walk_pages(buf, *header, path)


class _File:
    """Reads pieces of an open file by offset."""

    def __init__(self, fh: Any) -> None:
        self.fh, self.size = fh, fh.seek(0, 2)

    def read(self, offset: int, n: int) -> bytes:
        self.fh.seek(offset)
        return self.fh.read(n)

    def unpack(self, fmt: str, offset: int) -> Any:
        return struct.unpack(fmt, self.read(offset, struct.calcsize(fmt)))[0]


def _header(buf: _File, path: Path) -> tuple[_Format, int] | None:
    """The format and the offset of the first page, or None if this is no TIFF we know."""
    order = {b"II": "<", b"MM": ">"}.get(buf.read(0, 2))
    if order is None:
        return None
    version = buf.unpack(order + "H", 2)
    if version == 42:
        return _Format(order, "I", "H"), buf.unpack(order + "I", 4)
    if version == 43:
        if buf.size < 16:
            raise VolumeError(f"{path} is truncated: it ends after {buf.size} bytes, inside its "
                              f"BigTIFF header. {AGAIN}")
        return _Format(order, "Q", "Q"), buf.unpack(order + "Q", 8)
    return None


def _walk_pages(buf: _File, fmt: _Format, offset: int, path: Path) -> None:
    size, seen, page = buf.size, set(), 0
    check_data = True
    while offset:
        page += 1
        if offset in seen:
            raise VolumeError(f"{path} is damaged: its list of pages loops back at page {page}. "
                              f"{AGAIN}")
        seen.add(offset)
        if offset + fmt.count_size > size:
            raise VolumeError(f"{path} is truncated: page {page} would start at byte {offset} "
                              f"but the file has {size} bytes. {AGAIN}")
        n = buf.unpack(fmt.order + fmt.count, offset)
        entry = fmt.entry
        end = offset + fmt.count_size + n * entry.itemsize + fmt.offset_size
        if end > size:
            raise VolumeError(f"{path} is truncated: the tags of page {page} end at byte {end} "
                              f"but the file has {size} bytes. {AGAIN}")
        entries = np.frombuffer(buf.read(offset + fmt.count_size, n * entry.itemsize), entry)
        values = _tag_values(buf, fmt, entries, path, page)
        check_data = check_data and _LSM_INFO not in entries["code"]
        if check_data:
            _check_data_extents(values, size, path)
        offset = buf.unpack(fmt.order + fmt.offset, end - fmt.offset_size)


def _tag_values(buf: _File, fmt: _Format, entries: np.ndarray, path: Path,
                page: int) -> dict[int, np.ndarray]:
    """Check that every tag value stored outside the tag list lies inside the file; return the
    values of the strip and tile offset and byte count tags."""
    nbytes = entries["n"].astype(np.float64) * _TYPE_TABLE[np.minimum(entries["type"], 19)]
    outside = nbytes > fmt.offset_size
    ends = entries["value"].astype(np.float64) + nbytes
    if np.any(outside & (ends > buf.size)):
        end = int(np.max(ends[outside]))
        raise VolumeError(f"{path} is truncated: the tags of page {page} need {end} bytes but "
                          f"the file has {buf.size}. {AGAIN}")
    values: dict[int, np.ndarray] = {}
    for i in (i for i, code in enumerate(entries["code"].tolist()) if code in _DATA_CODES):
        code, kind, n, _ = entries[i].tolist()
        if kind in _INT_TYPES:
            raw = (entries["value"][i:i + 1].tobytes() if not outside[i]
                   else buf.read(int(entries["value"][i]), int(nbytes[i])))
            dtype = np.dtype(fmt.order + _INT_TYPES[kind])
            values[code] = np.frombuffer(raw, dtype, n).astype(np.int64)
    return values


def _check_data_extents(values: dict[int, np.ndarray], size: int, path: Path) -> None:
    for offsets_tag, counts_tag in _DATA_TAGS:
        offsets, counts = values.get(offsets_tag), values.get(counts_tag)
        if offsets is None or counts is None or len(offsets) != len(counts) or not len(offsets):
            continue
        end = int(np.max(offsets + counts))
        if end > size:
            raise VolumeError(f"{path} is truncated: its image data needs {end} bytes but the "
                              f"file has {size}. {AGAIN}")


def check_tiff_series(tif: Any, series: Any, path: Path) -> None:
    """Raise a :class:`VolumeError` if the series tifffile read (``series``, from the open
    ``tifffile.TiffFile`` ``tif``) has missing pages or data beyond the end of the file, or holds
    fewer values than the file's ImageJ, shaped or OME metadata describes."""
    missing = sum(page is None for page in series.pages)
    if missing:
        raise VolumeError(f"{path} is truncated or damaged: {missing} of the "
                          f"{len(series.pages)} pages of its image are missing. {AGAIN}")
    if series.dataoffset is not None:
        end = series.dataoffset + series.nbytes
    else:
        end = max((offset + count for page in series.pages
                   for offset, count in zip(page.dataoffsets, page.databytecounts)), default=0)
    if end > tif.filehandle.size:
        raise VolumeError(f"{path} is truncated: its image data needs {end} bytes but the file "
                          f"has {tif.filehandle.size}. {AGAIN}")
    described = _described(tif, series)
    if described is not None and described[1] != math.prod(series.shape):
        what, _ = described
        raise VolumeError(f"{path} is truncated or damaged: its {what} but its pages hold shape "
                          f"{tuple(series.shape)}. {AGAIN}")


def _described(tif: Any, series: Any) -> tuple[str, int] | None:
    """What the file's own metadata says the first series holds, in words, and its number of
    values; None without such metadata."""
    if tif.is_imagej and tif.imagej_metadata:
        meta = tif.imagej_metadata
        plane = math.prod(n for ax, n in zip(series.axes, series.shape) if ax in "YXS")
        planes = math.prod(series.shape) // max(plane, 1)
        counts = [int(meta["images"])] if "images" in meta else []
        if any(k in meta for k in ("channels", "slices", "frames")):
            counts.append(math.prod(int(meta.get(k, 1)) for k in ("channels", "slices", "frames")))
        wrong = next((n for n in counts if n != planes), None)
        if wrong is not None:
            return f"ImageJ metadata describes {wrong} images", wrong * plane
    if tif.is_shaped and tif.shaped_metadata and "shape" in tif.shaped_metadata[0]:
        shape = tuple(int(n) for n in tif.shaped_metadata[0]["shape"])
        return f"metadata describes shape {shape}", math.prod(shape)
    if tif.is_ome and tif.ome_metadata:
        shape = _ome_shape(tif.ome_metadata)
        if shape is not None:
            return f"OME metadata describes shape {shape} (T, C, Z, Y, X)", math.prod(shape)
    return None


def _ome_shape(xml: str) -> tuple[int, ...] | None:
    """``(T, C, Z, Y, X)`` of the first image in OME-XML, or None if it cannot be parsed."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    pixels = next((el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return None
    try:
        return tuple(int(pixels.get(f"Size{ax}", 1)) for ax in "TCZYX")
    except ValueError:
        return None
