"""OME-Zarr (NGFF 0.5) outputs: :class:`OmeZarrWriter` writes a segmentation block by block
into ``<name>.ome.zarr`` beside the image it was predicted from, as NGFF asks: the image's
pyramid in the root group and the segmentation as the labels group ``labels/<name>``, a
nearest-neighbour (strided) pyramid with the class names in its ``image-label`` metadata. The
metadata is written by ome-zarr-py.

The labels have the image's axes, as NGFF asks ("each dimension of the label should be either
the same as the corresponding dimension of the image, or 1 if that dimension of the label is
irrelevant"): ``z, y, x`` for a ``(Z, Y, X)`` image, ``c, z, y, x`` with one channel for a
``(C, Z, Y, X)`` one, with the image's voxel size (1 on ``c``) and as many levels as its
pyramid. The store is filled under a hidden temporary name and moved onto its final name when
complete, like every output (see :class:`.ChunkedWriter`).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from . import _zarr
from ._chunked import writing_or_abort
from ._folders import missing_folders, remove_empty
from ._paths import voxel_tuple
from ._space import cannot_write, check_free_space, expected_bytes, writing
from ._temps import fresh_temp

log = logging.getLogger(__name__)

OME_ZARR_SUFFIX = ".ome.zarr"
LABELS_NAME = "segmentation"
MIN_SIZE = 32  # a pyramid level is halved again while its y and x stay at least this big
MAX_LEVELS = 5
CHUNKS = (32, 256, 256)
#: the ``rgba`` of the class values 1, 2, ... in the ``image-label`` ``colors`` (matplotlib tab10)
PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))


def ome_writer() -> Any:
    """``ome_zarr.writer``, imported without the DeprecationWarning its import raises (a
    deprecated ``Scaler`` default argument, unused here)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Call to deprecated class Scaler", DeprecationWarning)
        from ome_zarr import writer
    return writer


def pyramid_factors(shape: Sequence[int]) -> list[dict[str, int]]:
    """The downsampling factors of the levels below full resolution of a ``(Z, Y, X)`` shape:
    y and x halved each level, z too while it stays at least :data:`MIN_SIZE`."""
    z, y, x = (int(n) for n in shape[-3:])
    factors, f, fz = [], 1, 1
    while len(factors) < MAX_LEVELS - 1 and min(y, x) // (2 * f) >= MIN_SIZE:
        f *= 2
        fz = fz * 2 if z // (2 * fz) >= MIN_SIZE else fz
        factors.append({"z": fz, "y": f, "x": f})
    return factors


def _scale(voxel, factor: dict[str, int], channel: bool = False) -> list[float]:
    return [1.0] * channel + [float(v) * factor[a] for v, a in zip(voxel, "zyx")]


def _chunks(shape: Sequence[int]) -> tuple[int, ...]:
    return tuple(max(1, min(c, int(n))) for c, n in zip(CHUNKS, shape))


class OmeZarrWriter:
    """Write a ``(Z, Y, X)`` segmentation region by region into an OME-Zarr image.

    Args:
        path: the target ``<name>.ome.zarr``.
        shape, dtype: of the segmentation, ``(Z, Y, X)``.
        voxel_size: ``(z, y, x)``, the scale of the full-resolution level (1 when None).
        image: the image predicted, ``(Z, Y, X)`` or ``(C, Z, Y, X)`` (read lazily, copied
            with its pyramid into the root group).
        classes: ``{label value: class name}``, written as the labels' ``properties``.
        what: what the segmentation is, for the sentences (``"the labels"``).
    """

    def __init__(self, path: str | Path, shape: Sequence[int], dtype: Any, *,
                 voxel_size: Sequence[float] | None = None, image: Any = None,
                 classes: dict[int, str] | None = None, what: str = "the labels") -> None:
        self.path = Path(path)
        self.shape, self.dtype = tuple(int(n) for n in shape), np.dtype(dtype)
        self._voxel = voxel_tuple(voxel_size) or (1.0, 1.0, 1.0)
        self._image, self._classes = image, dict(classes or {})
        self._lead = cannot_write(what, self.path)
        self._factors = pyramid_factors(self.shape)
        self._channel = image is not None and len(image.shape) == 4  # labels c, z, y, x
        self._tmp: Path | None = None
        self._done = False
        self._created = missing_folders(self.path.parent)
        needed = expected_bytes(self.shape, self.dtype, ".zarr") * 8 // 7
        if image is not None:
            needed += expected_bytes(image.shape, image.dtype, ".zarr") * 8 // 7
        check_free_space(self.path, needed, self._lead)
        with writing_or_abort(self, self._lead):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._tmp = fresh_temp(self.path)
            self._root = zarr.open_group(str(self._tmp), mode="w", zarr_format=3)
            self._labels = self._root.create_group("labels").create_group(LABELS_NAME)
            self._level0 = self._label_level("0", self.shape)

    @property
    def array(self) -> Any:
        """The full-resolution labels being written (a zarr array, ``(1, Z, Y, X)`` beside a
        ``(C, Z, Y, X)`` image, else ``(Z, Y, X)``)."""
        return self._level0

    def _label_level(self, name: str, shape: tuple[int, ...]) -> Any:
        lead = (1,) * self._channel
        return self._labels.create_array(name, shape=lead + shape, dtype=self.dtype,
                                         chunks=lead + _chunks(shape), fill_value=0,
                                         dimension_names=tuple("czyx"[1 - self._channel:]))

    def write(self, slices: tuple[slice, ...], block: Any) -> None:
        """Write ``block`` ``(z, y, x)`` into the region ``slices`` of the full-resolution
        labels."""
        if self._done:
            raise RuntimeError(f"The writer for {self.path} is already committed or aborted.")
        with writing(self._lead):
            self._level0[(0,) * self._channel + tuple(slices)] = block

    def commit(self) -> Path:
        self.finish()
        return self.publish()

    def finish(self) -> None:
        """Write the image, the labels' lower levels and the metadata into the temporary
        store: what can fail on a full disk fails here."""
        with writing_or_abort(self, self._lead):
            self._write_image()
            self._write_label_levels()
            self._write_label_metadata()

    def publish(self) -> Path:
        """Move the finished store onto its final name; returns that path."""
        with writing_or_abort(self, self._lead):
            _zarr.replace(self._tmp, self.path)
        self._done = True
        log.info("Wrote %s %s to %s", self.shape, self.dtype, self.path)
        return self.path

    def abort(self) -> None:
        """Delete the temporary store and the folders this writer created (if empty)."""
        if self._done:
            return
        self._done = True
        if self._tmp is not None:
            _zarr.remove(self._tmp)
        remove_empty(self._created)

    def __enter__(self) -> OmeZarrWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.abort()

    # --- the parts ------------------------------------------------------------------------------

    def _write_image(self) -> None:
        import dask.array as da
        from ome_zarr.format import FormatV05

        image = self._image
        if image is None:  # NGFF wants an image beside the labels: an empty one of their shape
            image = da.zeros(self.shape, dtype=np.uint8, chunks=_chunks(self.shape))
        elif not isinstance(image, da.Array):
            lead = (1,) * (image.ndim - 3)
            image = da.from_array(image, chunks=lead + _chunks(image.shape[-3:]), asarray=True)
        axes = "czyx" if image.ndim == 4 else "zyx"
        scale = {**({"c": 1.0} if image.ndim == 4 else {}), **dict(zip("zyx", self._voxel))}
        factors = [{**({"c": 1} if image.ndim == 4 else {}), **f} for f in self._factors]
        ome_writer().write_image(
            image, self._root, scale_factors=factors, fmt=FormatV05(), axes=axes, scale=scale,
            name=self.path.name[:-len(OME_ZARR_SUFFIX)] or "image",
            storage_options={"chunks": (1,) * (image.ndim - 3) + _chunks(image.shape[-3:])})

    def _write_label_levels(self) -> None:
        """Level k is level 0 taken every ``factor`` voxels (nearest), slab by slab in z so
        memory stays one slab of level 0."""
        lead = (0,) * self._channel
        for k, factor in enumerate(self._factors, start=1):
            fz, fy, fx = factor["z"], factor["y"], factor["x"]
            shape = (-(-self.shape[0] // fz), -(-self.shape[1] // fy), -(-self.shape[2] // fx))
            level = self._label_level(str(k), shape)
            step = max(1, CHUNKS[0])
            for z0 in range(0, shape[0], step):
                z1 = min(shape[0], z0 + step)
                level[(*lead, slice(z0, z1))] = self._level0[
                    (*lead, slice(z0 * fz, z1 * fz, fz), slice(None, None, fy),
                     slice(None, None, fx))]

    def _write_label_metadata(self) -> None:
        from ome_zarr.format import FormatV05

        writer = ome_writer()
        fmt = FormatV05()
        levels = [{"z": 1, "y": 1, "x": 1}, *self._factors]
        datasets = [{"path": str(k), "coordinateTransformations":
                     [{"type": "scale", "scale": _scale(self._voxel, f, self._channel)}]}
                    for k, f in enumerate(levels)]
        axes = ([{"name": "c", "type": "channel"}] * self._channel
                + [{"name": a, "type": "space"} for a in "zyx"])
        writer.write_multiscales_metadata(self._labels, datasets, fmt=fmt, axes=axes,
                                          name=LABELS_NAME)
        properties = [{"label-value": int(v), "name": str(n)} for v, n in self._classes.items()]
        colors = [{"label-value": int(v), "rgba": [*PALETTE[k % len(PALETTE)], 255]}
                  for k, v in enumerate(self._classes)]
        labels_group = self._root["labels"]
        writer.write_label_metadata(labels_group, LABELS_NAME, colors=colors,
                                    properties=properties or None, fmt=fmt,
                                    source={"image": "../../"})
        # NGFF 0.5 wants the version in every group's "ome" attributes; ome-zarr-py 0.18 leaves
        # it out of the "labels" group (ome-zarr-models refuses the image without it)
        writer.add_metadata(labels_group, {"version": fmt.version}, fmt=fmt)
