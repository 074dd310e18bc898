"""OME-Zarr (NGFF 0.4 and 0.5) images in, read with ome-zarr-py: find the multiscale image of a
store, its full-resolution level (lazily, a ``zarr.Array``), its pyramid and its voxel size.

An OME-Zarr image is a zarr group with ``multiscales`` metadata (``x.ome.zarr``); its axes end
with ``z, y, x`` (or ``y, x``) and may have a channel axis ``c`` before them. The voxel size is
the ``scale`` coordinate transformation of the first dataset, on ``z, y, x``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import zarr

from ..errors import VolumeError

log = logging.getLogger(__name__)

SPATIAL = ("z", "y", "x")


def is_ome_zarr(path: Path) -> bool:
    """Whether the folder ``path`` is a zarr group with NGFF ``multiscales`` metadata."""
    location = _location(path)
    return location is not None and "multiscales" in location.root_attrs


def _location(path: Path) -> Any:
    from ome_zarr.io import parse_url

    if not Path(path).is_dir():
        return None
    try:
        return parse_url(str(path), mode="r")
    except Exception as e:  # noqa: BLE001 - a damaged store is not an OME-Zarr image
        log.debug("Not an OME-Zarr store %s: %s", path, e)
        return None


def image_node(path: Path) -> Any:
    """The ome-zarr-py reader node of the multiscale image at ``path``.

    Raises:
        VolumeError: ``path`` is no OME-Zarr image, or its metadata is invalid.
    """
    from ome_zarr.reader import Multiscales, Reader

    location = _location(path)
    if location is None or "multiscales" not in location.root_attrs:
        raise VolumeError(f"{path} is not an OME-Zarr image: it has no NGFF multiscales "
                          "metadata. Choose the image's .ome.zarr folder, or an array in the "
                          "store as store.zarr:/name.")
    try:
        for node in Reader(location)():
            if node.load(Multiscales) is not None:
                return node
    except Exception as e:
        raise VolumeError(f"Cannot read the OME-Zarr image {path}: {e}. Its metadata may be "
                          "damaged; write it again or choose another file.") from e
    raise VolumeError(f"{path} holds no OME-Zarr multiscale image. Choose another file.")


def axis_names(node: Any) -> list[str]:
    return [str(a["name"] if isinstance(a, dict) else a).lower() for a in node.metadata["axes"]]


def check_axes(path: Path, names: list[str]) -> None:
    """Refuse axes other than an optional ``c`` before ``z, y, x`` (or ``y, x``)."""
    spatial = [n for n in names if n in SPATIAL]
    extra = [n for n in names if n not in (*SPATIAL, "c")]
    if extra or spatial not in (list(SPATIAL), ["y", "x"]) or names[-len(spatial):] != spatial:
        raise VolumeError(f"Cannot use the OME-Zarr image {path} with axes "
                          f"{', '.join(names)}: only (c,) z, y, x images are supported. Export "
                          "one time point as an image with axes c, z, y, x or z, y, x.")


def voxel_size(node: Any, names: list[str], level: int = 0) -> tuple[float, float, float] | None:
    """The ``scale`` of dataset ``level`` on ``z, y, x`` (1 for a missing z), or None."""
    transforms = (node.metadata.get("coordinateTransformations") or [])
    if len(transforms) <= level or not transforms[level]:
        return None
    for transform in transforms[level]:
        if transform.get("type") == "scale":
            scale = dict(zip(names, (float(s) for s in transform["scale"])))
            values = tuple(scale.get(a, 1.0) for a in SPATIAL)
            return values if all(v > 0 for v in values) else None  # type: ignore[return-value]
    return None


def read_image(path: Path) -> tuple[Any, tuple[float, float, float] | None]:
    """The full-resolution level of the OME-Zarr image at ``path`` (a lazy ``zarr.Array``,
    ``(Z, Y, X)``, ``(C, Z, Y, X)`` or 2D) and its voxel size ``(z, y, x)``."""
    from ome_zarr.reader import Multiscales

    node = image_node(path)
    names = axis_names(node)
    check_axes(path, names)
    first = node.load(Multiscales).datasets[0]
    array = zarr.open_array(str(Path(path) / first), mode="r")
    return array, voxel_size(node, names)


def pyramid_layers(path: Path) -> list[tuple[Any, dict[str, Any], str]]:
    """napari layer data of the OME-Zarr image at ``path``: the image as a multiscale layer
    (its levels as dask arrays, read lazily) and each of its NGFF labels as a Labels layer."""
    from ome_zarr.reader import Label, Multiscales, Reader

    location = _location(path)
    if location is None:
        return []
    layers = []
    for node in Reader(location)():
        if node.load(Multiscales) is None or not node.data:
            continue
        names = axis_names(node)
        voxel = voxel_size(node, names)
        is_label = node.load(Label) is not None
        kwargs: dict[str, Any] = {"name": node.metadata.get("name") or Path(path).name,
                                  "multiscale": len(node.data) > 1,
                                  "metadata": {"path": str(path)}}
        data = node.data if len(node.data) > 1 else node.data[0]
        spatial = [n for n in names if n in SPATIAL]
        if "c" in names and not is_label:
            kwargs["channel_axis"] = names.index("c")
        if voxel is not None:
            scale = dict(zip(SPATIAL, voxel))
            kwargs["scale"] = tuple(scale[a] for a in spatial)
            if "c" not in names or is_label:
                kwargs["scale"] = (1.0,) * (len(names) - len(spatial)) + kwargs["scale"]
        if is_label and node.metadata.get("properties"):
            props = node.metadata["properties"]
            kwargs["metadata"]["classes"] = {int(k): v for k, v in props.items()}
        layers.append((data, kwargs, "labels" if is_label else "image"))
    return layers
