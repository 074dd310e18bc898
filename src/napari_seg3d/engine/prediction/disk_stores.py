"""Predictions too large for memory (the Predict widget's): when to predict on disk, where to,
and the zarr stores the prediction is written into block by block while a viewer shows them.

The stores are written by the worker thread (:meth:`DiskStores.write`) and read by
the layers in the GUI thread through their own read-only views (zarr writes each chunk file
atomically, so a layer never reads a half-written chunk). Each store lives under a hidden
temporary name (``.<name>.<token>.part``, see :class:`ChunkedWriter`) until the GUI thread,
once the worker has stopped, moves it onto its final name (``<image>_labels.zarr``) when the
prediction is complete, or onto ``<image>_labels_partial.zarr`` when it was cancelled or failed:
the part done is kept, and nothing half-written ever stands under the final name.

With ``fmt="ome-zarr"`` the labels become ``<image>_labels.ome.zarr``: the image with the
segmentation as NGFF labels (see :class:`.OmeZarrWriter`); the layer shows its
full-resolution labels while they are written, and :meth:`DiskStores.finish` (the worker's
last step, also when the prediction was cancelled or failed: see :meth:`DiskStores.finish_partial`)
writes the image and the pyramids, so publishing only moves folders
(``<image>_labels_partial.ome.zarr`` for a partial one). Probabilities and uncertainty stay zarr.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ..errors import Seg3DError
from ..io import OME_ZARR_SUFFIX, ChunkedWriter, _zarr
from ..io._ome_zarr_out import LABELS_NAME, OmeZarrWriter
from ..io.no_overwrite import ReadFiles
from .blocks import DEFAULT_BLOCK_SHAPE

log = logging.getLogger(__name__)

MEMORY_FRACTION = 0.25  # outputs larger than this share of the physical memory go to disk
BLOCK_SHAPE = DEFAULT_BLOCK_SHAPE  # the blocks a prediction on disk is computed in
CHUNKS = (8, 256, 256)  # thin in z: a 2D view reads 8 planes of the chunks it shows
PARTIAL = "_partial"
ROLES = ("labels", "probabilities", "uncertainty")
FORMATS = ("zarr", "ome-zarr")  # of the labels


# --- when and where -------------------------------------------------------------------------------

def physical_memory() -> int:
    """The physical memory of this computer, in bytes."""
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except (ImportError, OSError):  # pragma: no cover - psutil comes with napari
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def output_bytes(shape: Sequence[int], label_dtype: Any, classes: int, *, probabilities: bool,
                 uncertainty: bool) -> int:
    """Bytes of the layers a prediction of a ``(Z, Y, X)`` ``shape`` fills in memory: the labels,
    and ``classes`` float32 probability channels and a float32 uncertainty map when shown."""
    voxels = int(np.prod([int(s) for s in shape], dtype=np.int64))
    floats = classes * probabilities + uncertainty
    return voxels * (np.dtype(label_dtype).itemsize + 4 * floats)


def in_memory(data: Any) -> bool:
    """Whether ``data`` is an array held in memory (not dask, zarr, h5py or a memory map)."""
    return isinstance(data, np.ndarray) and not isinstance(data, np.memmap)


def disk_reason(data: Any, nbytes: int, memory: int | None = None) -> str | None:
    """Why a prediction of ``data`` whose layers take ``nbytes`` goes to disk, or None when it
    fits in memory: ``data`` is not in memory, or ``nbytes`` is more than
    :data:`MEMORY_FRACTION` of ``memory`` (default: the physical memory)."""
    if not in_memory(data):
        return f"the image is read from disk ({type(data).__module__.split('.')[0]} array)"
    memory = physical_memory() if memory is None else memory
    if nbytes > MEMORY_FRACTION * memory:
        return (f"its layers would take {human_size(nbytes)}, more than "
                f"{MEMORY_FRACTION:.0%} of this computer's memory ({human_size(memory)})")
    return None


def human_size(nbytes: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes:.0f} {unit}" if unit == "bytes" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return ""  # pragma: no cover


def cache_folder() -> Path:
    """Where predictions of images that are not from a file go: the user's cache folder
    (not the system temporary folder, which is often held in memory)."""
    try:
        from platformdirs import user_cache_dir

        base = Path(user_cache_dir("napari-seg3d"))
    except ImportError:  # pragma: no cover - platformdirs comes with napari
        base = Path.home() / ".cache" / "napari-seg3d"
    return base / "predictions"


def default_folder(source: str | os.PathLike | None) -> Path:
    """The folder of the image's file ``source`` when it can be written to, else
    :func:`cache_folder`."""
    if source:
        folder = Path(source).expanduser().parent
        if folder.is_dir() and os.access(folder, os.W_OK | os.X_OK):
            return folder
    return cache_folder()


def choose_folder(text: str, source: str | os.PathLike | None) -> Path:
    """The folder typed in the widget (``text``), or the default for the image."""
    text = text.strip()
    return Path(text).expanduser() if text else default_folder(source)


def safe_name(text: str) -> str:
    """``text`` as a file name: no separators, spaces, ``..`` or leading dots."""
    name = re.sub(r"\.{2,}", ".", re.sub(r"[^\w.-]+", "_", text)).strip("._-")
    return name or "image"


def store_path(folder: Path, base: str, role: str, partial: bool = False,
               fmt: str = "zarr") -> Path:
    """``folder/<base>_<role>.zarr``, or ``<base>_<role>_partial.zarr``; the labels of
    ``fmt="ome-zarr"`` end in ``.ome.zarr``."""
    suffix = OME_ZARR_SUFFIX if fmt == "ome-zarr" and role == "labels" else ".zarr"
    return Path(folder) / f"{base}_{role}{PARTIAL if partial else ''}{suffix}"


def store_base(folder: Path, image_name: str, source: str | os.PathLike | None,
               opened: Sequence[str | os.PathLike] = ()) -> str:
    """The stem of the stores of ``image_name``: its safe name, made different when a store of
    that name would replace the image's own file or one of the files ``opened`` in the viewer
    (links included, see :class:`.ReadFiles`)."""
    base = safe_name(image_name)
    read = ReadFiles({f"file {i}": path for i, path in enumerate([source, *opened]) if path})
    while any(read.hit(store_path(folder, base, role, partial, fmt)) is not None
              for role in ROLES for partial in (False, True) for fmt in FORMATS):
        base += "_seg3d"
    return base


def chunks_for(shape: Sequence[int]) -> tuple[int, ...]:
    """:data:`CHUNKS` on the last three axes, 1 on a leading class axis."""
    lead = len(shape) - 3
    return (1,) * lead + tuple(min(c, int(n)) for c, n in zip(CHUNKS, shape[lead:]))


# --- the stores -----------------------------------------------------------------------------------

class DiskStores:
    """The zarr stores of one prediction: labels from the start, probabilities and uncertainty
    from the first region that carries them.

    Args:
        folder: where the stores go (created if missing).
        base: their stem (see :func:`store_base`): ``<base>_labels.zarr`` and so on.
        shape: ``(Z, Y, X)`` of the image.
        label_dtype: the dtype of the painted label values.
        voxel_size: ``(z, y, x)`` stored as the ``element_size_um`` attribute, or None.
        fmt: ``"zarr"`` or ``"ome-zarr"`` (the labels with ``image``, see the module).
        image: the image predicted, ``(Z, Y, X)`` or ``(C, Z, Y, X)`` (``"ome-zarr"`` only).
        classes: ``{label value: class name}`` (``"ome-zarr"`` only).

    Raises:
        OSError, VolumeError: the folder cannot be written to.
    """

    def __init__(self, folder: Path, base: str, shape: Sequence[int], label_dtype: Any,
                 voxel_size: Sequence[float] | None = None, *, fmt: str = "zarr",
                 image: Any = None, classes: dict[int, str] | None = None) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"Unknown format {fmt!r}; choose one of {', '.join(FORMATS)}.")
        self.folder, self.base, self.fmt = Path(folder), base, fmt
        self.shape = tuple(int(s) for s in shape)
        self.voxel = tuple(voxel_size) if voxel_size and min(voxel_size) > 0 else None
        self._writers: dict[str, Any] = {}
        self._views: dict[str, Any] = {}
        self._finished = False
        self._problems: list[str] = []  # what finish_partial could not do, for publish
        self.stale: list[Path] = []  # older stores publish moved aside, for delete_stores
        self.where: dict[str, Path] = {}  # where each store is now
        if fmt == "ome-zarr":
            self._open_ome_zarr(label_dtype, image, classes)
        else:
            self._open("labels", self.shape, label_dtype)

    def path(self, role: str, partial: bool = False) -> Path:
        return store_path(self.folder, self.base, role, partial, self.fmt)

    def _open(self, role: str, shape: tuple[int, ...], dtype: Any) -> None:
        writer = ChunkedWriter(self.path(role), shape, dtype, voxel_size=self.voxel,
                               chunks=chunks_for(shape))
        try:
            tmp = Path(writer.array.store.root)
            self._views[role] = zarr.open_array(str(tmp), mode="r")
        except BaseException:
            writer.abort()
            raise
        self._writers[role], self.where[role] = writer, tmp

    def _open_ome_zarr(self, dtype: Any, image: Any, classes: dict[int, str] | None) -> None:
        writer = OmeZarrWriter(self.path("labels"), self.shape, dtype, voxel_size=self.voxel,
                               image=image, classes=classes)
        try:
            tmp = Path(writer.array.store.root)
            self._views["labels"] = _labels_view(tmp, "r")
        except BaseException:
            writer.abort()
            raise
        self._writers["labels"], self.where["labels"] = writer, tmp

    def write(self, region) -> None:
        """Write a region's labels, probabilities and uncertainty (those it has). Worker only."""
        self._writers["labels"].write(tuple(region.slices), region.labels)
        for role in ROLES[1:]:
            values = getattr(region, role, None)
            if values is None:
                continue
            if role not in self._writers:
                self._open(role, values.shape[:-3] + self.shape, np.float32)
            lead = (slice(None),) * (values.ndim - 3)
            self._writers[role].write(lead + tuple(region.slices), values)

    def finish(self) -> None:
        """Write what the stores need beside what the regions wrote (for ``"ome-zarr"``, the
        image and the pyramids); the worker's last step, so :meth:`publish` only moves them."""
        if self.unfinished:
            self._finished = True
            self._writers["labels"].finish()

    @property
    def unfinished(self) -> bool:
        """Whether :meth:`finish` has work left (an OME-Zarr's image and pyramids)."""
        return self.fmt == "ome-zarr" and not self._finished

    def finish_partial(self) -> None:
        """:meth:`finish` for a prediction that stopped before the end (worker only): a failure
        is kept as a sentence that :meth:`publish` returns instead of raised (the writer deleted
        its store)."""
        try:
            self.finish()
        except (OSError, Seg3DError) as e:
            self._problems.append(str(e))

    def views(self) -> dict[str, Any]:
        """The stores as arrays for the layers, by role: read-only while they are written,
        writable once published."""
        return dict(self._views)

    def publish(self, complete: bool) -> list[str]:
        """Move each store onto its final name when the prediction is ``complete``, else onto
        its partial name; call once the worker has stopped. It only renames folders: an older
        store of that name is moved aside under a hidden name, listed in :attr:`stale` for
        :func:`delete_stores` (off the GUI thread). The labels go last, so a final labels store
        always has its companions. Returns a sentence for each store that could not be moved
        (it stays where it was, see :attr:`where`)."""
        self.finish_partial()  # a no-op: the worker finished them (see PredictJob.run)
        problems, self._problems = self._problems, []
        for role in ("probabilities", "uncertainty", "labels"):
            if role not in self._writers or not self.where[role].exists():
                continue
            tmp, target = self.where[role], self.path(role, partial=not complete)
            try:
                # not ChunkedWriter.commit(): a move that fails there deletes the store
                old = _zarr.replace(tmp, target, delete_old=False)
                self.where[role] = target
                if old is not None:
                    self.stale.append(old)
            except OSError as e:
                log.warning("Could not move %s to %s", tmp, target, exc_info=True)
                problems.append(f"Could not move the {role} to {target} ({e.strerror or e}); "
                                f"they stay in {tmp}.")
            if role == "labels" and self.fmt == "ome-zarr":
                self._views[role] = _labels_view(self.where[role], "r+")
            else:
                self._views[role] = zarr.open_array(str(self.where[role]), mode="r+")
        self._writers.clear()
        return problems


def delete_stores(paths: Sequence[Path]) -> None:
    """Delete the older stores :meth:`DiskStores.publish` moved aside (a long deletion on a large
    store: call it in a worker thread). One that cannot be deleted is left, under its hidden
    ``.part`` name, for the next write of its store to remove."""
    for path in paths:
        try:
            shutil.rmtree(path)
        except OSError as e:
            log.warning("Could not delete the older store %s: %s", path, e)


def _labels_view(store: Path, mode: str) -> Any:
    """The full-resolution labels of an OME-Zarr store written by :class:`.OmeZarrWriter`,
    ``(Z, Y, X)``: the zarr array itself, or a lazy (dask) view of its one channel beside a
    ``(C, Z, Y, X)`` image."""
    array = zarr.open_array(str(Path(store) / "labels" / LABELS_NAME / "0"), mode=mode)
    if array.ndim == 3:
        return array
    import dask.array as da

    return da.from_zarr(array)[0]
