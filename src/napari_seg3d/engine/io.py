"""Read and write volumes as TIFF, HDF5 or ``.npy`` files; every write is atomic.

An HDF5 dataset is named ``file.h5:/group/data``. Writes go to a hidden ``.part`` file beside the
target and are moved onto it only once complete, so a crash never leaves half a file behind.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import tifffile

from .errors import Seg3DError

log = logging.getLogger(__name__)

TIFF_SUFFIXES = (".tif", ".tiff")
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")
SUFFIXES = (*TIFF_SUFFIXES, *HDF5_SUFFIXES, ".npy")
DEFAULT_KEY = "/labels"
VOXEL_ATTRS = ("element_size_um", "voxel_size", "resolution")
_IMAGEJ_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))
_H5_SPEC = re.compile(r"^(.+?\.(?:h5|hdf5|hdf)):(.*)$", re.IGNORECASE | re.DOTALL)
# micrometres per TIFF ResolutionUnit: NONE (ImageJ, unit in its metadata), CM, MM, UM; not INCH.
_UM_PER_UNIT = {1: 1.0, 3: 1e4, 4: 1e3, 5: 1.0}

VoxelSize = tuple[float, float, float]


class VolumeError(Seg3DError, ValueError):
    """A volume file cannot be read or written; the message says why and what to do."""


@dataclass(eq=False)
class Volume:
    """A volume read by :func:`read_volume`; close it (or use ``with``) when read lazily.

    Attributes:
        data: ``(Z, Y, X)`` or ``(C, Z, Y, X)`` array (TIFF singleton axes are squeezed away),
            or an open ``h5py.Dataset`` / ``np.memmap`` when read lazily.
        voxel_size: ``(z, y, x)`` in the file's unit (micrometres by convention), or None.
        path: The file read.
        key: The HDF5 dataset path, or None for other formats.
    """

    data: np.ndarray | h5py.Dataset | np.memmap
    voxel_size: VoxelSize | None
    path: Path
    key: str | None = None
    _file: h5py.File | None = field(default=None, repr=False)

    def close(self) -> None:
        """Close the HDF5 file behind lazily read data; ``data`` cannot be read afterwards."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> Volume:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def split_path(spec: str | os.PathLike) -> tuple[Path, str | None]:
    """Split ``"file.h5:/group/data"`` into ``(Path("file.h5"), "/group/data")``.

    Other paths (``"C:\\data\\a.tif"``, ``"a.h5"``, an existing file with a colon in its name)
    come back unchanged with key None.
    """
    text = os.fspath(spec)
    match = _H5_SPEC.match(text)
    if match is None or Path(text).exists():
        return Path(text), None
    file, key = match.groups()
    return Path(file), ("/" + key.lstrip("/")) if key else None


def read_volume(spec: str | os.PathLike, *, lazy: bool = False) -> Volume:
    """Read a TIFF, HDF5 (``file.h5`` or ``file.h5:/key``) or ``.npy`` volume.

    Args:
        spec: The file, with ``:/dataset`` after an HDF5 file name to pick a dataset. Without a
            key, an HDF5 file must hold exactly one dataset with 3 or more dimensions.
        lazy: Leave the data on disk: an open ``h5py.Dataset`` (close the volume when done), or an
            ``np.memmap`` for ``.npy`` and uncompressed TIFF. Compressed TIFF is always read.

    Returns:
        The :class:`Volume`.

    Raises:
        VolumeError: The file is missing, damaged, of an unknown format, or ambiguous.
    """
    path, key = split_path(spec)
    suffix = _format_of(path)
    if not path.is_file():
        raise VolumeError(f"Cannot find the file {path}. Check the path and try again.")
    if suffix in HDF5_SUFFIXES:
        return _read_hdf5(path, key, lazy)
    with _unreadable(path):
        if suffix in TIFF_SUFFIXES:
            data, voxel_size = _read_tiff(path, lazy)
        else:
            data, voxel_size = np.load(path, mmap_mode="r" if lazy else None), None
    log.debug("Read %s: shape %s, %s, voxel size %s", path, data.shape, data.dtype, voxel_size)
    return Volume(data, voxel_size, path)


def list_datasets(path: str | os.PathLike) -> list[tuple[str, tuple[int, ...], str]]:
    """List the datasets of an HDF5 file as ``(name, shape, dtype)``, e.g. ``("/raw", (9, 8, 7),
    "uint8")``; a ``:/key`` after the file name is ignored."""
    file_path = split_path(path)[0]
    if not file_path.is_file():
        raise VolumeError(f"Cannot find the file {file_path}. Check the path and try again.")
    with _unreadable(file_path), h5py.File(file_path, "r") as file:
        return [(ds.name, ds.shape, str(ds.dtype)) for ds in _datasets(file)]


def write_volume(spec: str | os.PathLike, data: Any, *, voxel_size: Sequence[float] | None = None,
                 compression: bool = True, overwrite: bool = True) -> Path:
    """Write a volume atomically as TIFF, HDF5 or ``.npy``, chosen by the suffix.

    TIFF is an ImageJ hyperstack for uint8, uint16 and float32 (compressed files open in Fiji
    through Bio-Formats), otherwise a plain TIFF. HDF5 goes to ``file.h5:/key`` (default
    ``/labels``), chunked and gzip-compressed; other datasets of an existing file are kept.

    Args:
        spec: Target file, optionally ``file.h5:/key``.
        data: ``(Z, Y, X)`` or ``(C, Z, Y, X)`` array.
        voxel_size: ``(z, y, x)`` in micrometres, stored as ImageJ spacing and resolution or as the
            HDF5 attribute ``element_size_um``; ignored for ``.npy``.
        compression: Compress TIFF (zlib) and HDF5 (gzip).
        overwrite: If False, raise when the file (HDF5: the dataset) already exists.

    Returns:
        The path written.
    """
    path, key = split_path(spec)
    suffix = _format_of(path)
    data, voxel = np.asarray(data), _voxel_tuple(voxel_size)
    if not overwrite and _target_exists(path, key):
        raise VolumeError(f"{os.fspath(spec)} already exists. Choose another output name or "
                          "allow overwriting.")
    path.parent.mkdir(parents=True, exist_ok=True)
    with _atomic_temp(path) as tmp:
        if suffix in TIFF_SUFFIXES:
            _write_tiff(tmp, data, voxel, compression)
        elif suffix in HDF5_SUFFIXES:
            with _open_h5_copy(path, tmp) as file:
                dataset = _create_dataset(file, key or DEFAULT_KEY, data.shape, data.dtype,
                                          voxel, compression=compression)
                dataset[...] = data
        else:
            with open(tmp, "xb") as fh:
                np.save(fh, data, allow_pickle=False)
    log.info("Wrote %s %s to %s", data.shape, data.dtype, os.fspath(spec))
    return path


class ChunkedWriter:
    """Write a large volume region by region, then publish it atomically with :meth:`commit`.

    HDF5 targets fill a chunked, gzip-compressed dataset in a temporary file and ``.npy`` targets
    a memory-mapped temporary file, so neither holds the volume in memory. TIFF cannot be filled
    region by region when compressed, so a TIFF target is collected in memory and written by
    :func:`write_volume` on commit: prefer HDF5 for outputs larger than memory.

    Leaving the ``with`` block without ``commit()`` (for instance on an exception) deletes the
    temporary file and leaves any earlier file untouched::

        with ChunkedWriter("out.h5:/labels", (64, 512, 512), np.uint8) as writer:
            for slices, block in regions:
                writer.write(slices, block)
            writer.commit()
    """

    def __init__(self, spec: str | os.PathLike, shape: Sequence[int], dtype: Any, *,
                 voxel_size: Sequence[float] | None = None,
                 chunks: tuple[int, ...] | None = None) -> None:
        self.path, key = split_path(spec)
        suffix = _format_of(self.path)
        self.shape, self.dtype = tuple(int(n) for n in shape), np.dtype(dtype)
        self._voxel = _voxel_tuple(voxel_size)
        self._tmp: Path | None = None
        self._file: h5py.File | None = None
        self._done = False
        self._data: Any = None
        if suffix in TIFF_SUFFIXES:
            self._data = np.zeros(self.shape, self.dtype)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = _temp_path(self.path)
        try:
            if suffix in HDF5_SUFFIXES:
                self._file = _open_h5_copy(self.path, self._tmp)
                self._data = _create_dataset(self._file, key or DEFAULT_KEY, self.shape,
                                             self.dtype, self._voxel, chunks=chunks)
            else:
                self._data = np.lib.format.open_memmap(self._tmp, "w+", self.dtype, self.shape)
        except BaseException:
            self.abort()
            raise

    def write(self, slices: tuple[slice, ...], block: Any) -> None:
        """Write ``block`` into the region ``slices`` of the output."""
        if self._done:
            raise RuntimeError(f"The writer for {self.path} is already committed or aborted; "
                               "create a new ChunkedWriter.")
        self._data[slices] = block

    def commit(self) -> Path:
        """Move the finished output onto its final name and return that path."""
        if self._done:
            raise RuntimeError(f"The writer for {self.path} is already committed or aborted.")
        if self._tmp is None:
            write_volume(self.path, self._data, voxel_size=self._voxel)
        else:
            self._release()
            try:
                _commit_temp(self._tmp, self.path)
            except BaseException:
                self._tmp.unlink(missing_ok=True)
                raise
        self._done = True
        log.info("Wrote %s %s to %s", self.shape, self.dtype, self.path)
        return self.path

    def abort(self) -> None:
        """Drop everything written so far and delete the temporary file."""
        if not self._done:
            self._release()
            if self._tmp is not None:
                self._tmp.unlink(missing_ok=True)
            self._done = True

    def _release(self) -> None:
        if isinstance(self._data, np.memmap):
            self._data.flush()
        self._data = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> ChunkedWriter:
        return self

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        if not self._done and exc_type is None:
            log.warning("Nothing written to %s: the ChunkedWriter closed without commit().",
                        self.path)
        self.abort()


def output_path(out_dir: str | os.PathLike, input_spec: str | os.PathLike, fmt: str) -> Path:
    """Return ``out_dir / "<stem>_labels.<fmt>"`` for an input (``<stem>_<key>`` for HDF5 keys).

    The name is sanitised (no separators, ``..`` or leading dots), so it stays inside ``out_dir``.
    """
    suffix = "." + fmt.lower().lstrip(".")
    if suffix not in SUFFIXES:
        raise VolumeError(f"Unknown output format {fmt!r}. Use one of: "
                          f"{', '.join(s[1:] for s in SUFFIXES)}.")
    path, key = split_path(input_spec)
    name = _safe_name(path.stem)
    if key:
        name = "_".join(filter(None, (name, _safe_name(key.rstrip("/").rsplit("/", 1)[-1]))))
    return Path(out_dir) / f"{name or 'volume'}_labels{suffix}"


def _safe_name(text: str) -> str:
    name = re.sub(r"\.{2,}", ".", re.sub(r"[^\w.-]+", "_", text))
    return name.strip("._-")


def _format_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise VolumeError(f"Cannot tell the format of {path} from its suffix "
                          f"{suffix or '(none)'}. Use one of: {', '.join(SUFFIXES)}.")
    return suffix


def _voxel_tuple(voxel_size: Sequence[float] | None) -> VoxelSize | None:
    if voxel_size is None:
        return None
    values = tuple(float(v) for v in voxel_size)
    if len(values) != 3 or not all(v > 0 for v in values):
        raise VolumeError(f"The voxel size {voxel_size!r} is not three positive numbers (z, y, x).")
    return values  # type: ignore[return-value]


@contextmanager
def _unreadable(path: Path) -> Iterator[None]:
    """Turn any parser failure into a VolumeError naming the file."""
    try:
        yield
    except (VolumeError, MemoryError):
        raise
    except Exception as exc:  # parsers of damaged files raise struct, zlib, OS, Index... errors
        raise VolumeError(f"Cannot read {path}: {exc}. The file may be truncated or damaged; "
                          "export it again or choose another file.") from exc


def _read_tiff(path: Path, lazy: bool) -> tuple[np.ndarray, VoxelSize | None]:
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        _check_tiff_complete(tif, series, path)
        if lazy and series.dataoffset is not None:
            dtype = np.dtype(series.dtype).newbyteorder(tif.byteorder)
            data = np.memmap(path, dtype, "r", series.dataoffset, series.shape)
        else:
            data = series.asarray()
        return _to_zyx(data, series.axes, path), _tiff_voxel_size(tif)


def _check_tiff_complete(tif: tifffile.TiffFile, series: Any, path: Path) -> None:
    """Raise if pages or pixels are missing (tifffile may only log that and read what is left)."""
    if (tif.is_imagej or tif.is_shaped) and series.kind.lower() in ("generic", "uniform"):
        raise VolumeError(f"{path} is truncated or damaged: its metadata describes images that "
                          "are missing. Copy or export the file again.")
    if series.dataoffset is not None:
        end = series.dataoffset + series.nbytes
    else:
        end = max((offset + count for page in series.pages if page is not None
                   for offset, count in zip(page.dataoffsets, page.databytecounts)), default=0)
    if end > tif.filehandle.size:
        raise VolumeError(f"{path} is truncated: its image data needs {end} bytes but the file "
                          f"has {tif.filehandle.size}. Copy or export the file again.")


def _to_zyx(data: np.ndarray, axes: str, path: Path) -> np.ndarray:
    """Squeeze singleton axes; return ``(Z, Y, X)`` or ``(C, Z, Y, X)`` with the channel first."""
    keep = [i for i, (ax, n) in enumerate(zip(axes, data.shape)) if n > 1 or ax in "YX"]
    kept = "".join(axes[i] for i in keep)
    channel = [i for i, ax in enumerate(kept) if ax in "CS"]
    spatial = [i for i, ax in enumerate(kept) if ax not in "CS"]
    if len(channel) > 1 or len(spatial) > 3:
        raise VolumeError(f"{path} has axes {axes} of shape {data.shape}; only (Z, Y, X) volumes "
                          "with at most one channel axis can be used. Save one time point or "
                          "channel group and try again.")
    data = np.squeeze(data, axis=tuple(i for i in range(data.ndim) if i not in keep))
    data = np.transpose(data, channel + spatial)
    for _ in range(3 - len(spatial)):
        data = np.expand_dims(data, len(channel))
    return data


def _tiff_voxel_size(tif: tifffile.TiffFile) -> VoxelSize | None:
    meta = tif.imagej_metadata or next(iter(tif.shaped_metadata or ()), {})
    page = tif.pages[0]
    scale = _UM_PER_UNIT.get(int(page.tags.valueof("ResolutionUnit", 1)))
    y, x = (_pixel_size(page.tags.valueof(name), scale) for name in ("YResolution", "XResolution"))
    z = meta.get("spacing")
    if z is None and y is None and x is None:
        return None
    return float(z or 1.0), y or 1.0, x or 1.0


def _pixel_size(resolution: tuple[int, int] | None, scale: float | None) -> float | None:
    """Pixel size from a TIFF rational resolution (pixels per unit); None if unset or (1, 1)."""
    if resolution is None or scale is None or resolution[0] in (0, resolution[1]):
        return None
    return scale * resolution[1] / resolution[0]


def _write_tiff(tmp: Path, data: np.ndarray, voxel: VoxelSize | None, compression: bool) -> None:
    axes = {2: "YX", 3: "ZYX", 4: "CZYX"}.get(data.ndim)
    if axes is None:
        raise VolumeError(f"Cannot write an array of shape {data.shape} as TIFF. Give (Z, Y, X) "
                          "or (C, Z, Y, X) data, or write HDF5 or .npy.")
    imagej = data.dtype in _IMAGEJ_DTYPES
    if imagej and data.ndim == 4:  # ImageJ hyperstacks are stored in TZCYXS order
        data, axes = np.moveaxis(data, 0, 1), "ZCYX"
    metadata: dict[str, Any] = {"axes": axes}
    resolution, unit = None, None
    if voxel is not None:
        metadata.update(spacing=voxel[0], unit="um")
        per_unit = 1.0 if imagej else 1e4  # ImageJ: pixels per micrometre; plain: per centimetre
        resolution = (per_unit / voxel[2], per_unit / voxel[1])
        unit = "NONE" if imagej else "CENTIMETER"
    tifffile.imwrite(tmp, data, imagej=imagej, metadata=metadata, photometric="minisblack",
                     resolution=resolution, resolutionunit=unit,
                     compression="zlib" if compression else None,
                     bigtiff=not imagej and data.nbytes > 2**31)


def _read_hdf5(path: Path, key: str | None, lazy: bool) -> Volume:
    with _unreadable(path):
        file = h5py.File(path, "r")
    try:
        dataset = _find_dataset(file, path, key)
        volume = Volume(dataset, _h5_voxel_size(dataset), path, dataset.name, file)
        if not lazy:
            with _unreadable(path):
                volume.data = dataset[()]
            volume.close()
        return volume
    except BaseException:
        file.close()
        raise


def _datasets(group: h5py.Group) -> list[h5py.Dataset]:
    names: list[str] = []
    group.visit(names.append)
    return [node for node in map(group.get, names) if isinstance(node, h5py.Dataset)]


def _find_dataset(file: h5py.File, path: Path, key: str | None) -> h5py.Dataset:
    if key is not None:
        node = file.get(key)
        if not isinstance(node, h5py.Dataset):
            raise VolumeError(f"{path} has no dataset {key}. Its datasets: "
                              f"{_describe(_datasets(file))}.")
        return node
    volumes = [d for d in _datasets(file) if d.ndim >= 3]
    if len(volumes) == 1:
        return volumes[0]
    if not volumes:
        raise VolumeError(f"{path} holds no dataset with 3 or more dimensions (its datasets: "
                          f"{_describe(_datasets(file))}). Choose a file that holds a volume.")
    raise VolumeError(f"{path} holds several volumes: {_describe(volumes)}. Name the one to use "
                      f"as {path}:/path/to/dataset, e.g. {path}:{volumes[0].name}")


def _describe(datasets: list[h5py.Dataset], limit: int = 10) -> str:
    """``"/raw (9, 8, 7) uint8; /labels ..."``, at most ``limit`` entries."""
    text = "; ".join(f"{d.name} {d.shape} {d.dtype}" for d in datasets[:limit]) or "none"
    return text + (f"; and {len(datasets) - limit} more" if len(datasets) > limit else "")


def _h5_voxel_size(dataset: h5py.Dataset) -> VoxelSize | None:
    for name in VOXEL_ATTRS:
        try:
            values = np.ravel(np.asarray(dataset.attrs.get(name, ()), dtype=float))
        except (TypeError, ValueError):
            continue
        if values.size >= 3:
            return tuple(float(v) for v in values[-3:])  # type: ignore[return-value]
    return None


def _open_h5_copy(path: Path, tmp: Path) -> h5py.File:
    """Open ``tmp`` for writing, starting as a copy of ``path`` so its other datasets survive."""
    if path.exists():
        shutil.copy2(path, tmp)
    try:
        return h5py.File(tmp, "a")
    except OSError as exc:
        raise VolumeError(f"Cannot add a dataset to {path}: it is not a readable HDF5 file "
                          f"({exc}). Choose another output file or delete this one.") from exc


def _create_dataset(file: h5py.File, key: str, shape: tuple[int, ...], dtype: Any,
                    voxel: VoxelSize | None, *, chunks: tuple[int, ...] | None = None,
                    compression: bool = True) -> h5py.Dataset:
    if key in file:
        del file[key]
    if 0 in shape or not shape:
        chunks = None  # HDF5 cannot chunk an empty dataset
    else:
        chunks = chunks or tuple(64 if i >= len(shape) - 3 else 1 for i in range(len(shape)))
        chunks = tuple(max(1, min(c, n)) for c, n in zip(chunks, shape))
    dataset = file.create_dataset(key, shape=shape, dtype=dtype, chunks=chunks,
                                  compression="gzip" if compression and chunks else None)
    if voxel is not None:
        dataset.attrs["element_size_um"] = np.asarray(voxel, dtype=np.float64)
    return dataset


def _target_exists(path: Path, key: str | None) -> bool:
    if not path.exists() or path.suffix.lower() not in HDF5_SUFFIXES:
        return path.exists()
    try:
        with h5py.File(path, "r") as file:
            return (key or DEFAULT_KEY) in file
    except OSError:
        return True


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")


def _commit_temp(tmp: Path, path: Path) -> None:
    """Flush ``tmp`` to disk and move it onto ``path`` in one step."""
    with open(tmp, "r+b") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    if os.name == "posix":  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextmanager
def _atomic_temp(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` on success, else delete it."""
    tmp = _temp_path(path)
    try:
        yield tmp
        _commit_temp(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
