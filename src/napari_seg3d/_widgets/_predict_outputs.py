"""The optional Image layers of a prediction, ``<image> probabilities`` and ``<image> uncertainty``:
each is created at the first region that carries it, written region by region, and renamed
``... (partial)`` when the prediction stops before the end, like the prediction layer."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from napari.layers import Labels

from ..engine import RegionDone
from . import _layers

if TYPE_CHECKING:
    import napari

REFRESH_S = 1.0  # an Image layer has no partial refresh: redraw it less often
DISK_REFRESH_S = 1.0  # a layer on disk is redrawn (read again) at most once a second
PARTIAL = " (partial)"
ROLES = ("probabilities", "uncertainty")
_STYLE = {"contrast_limits": (0.0, 1.0), "colormap": "magma", "blending": "additive",
          "opacity": 0.7}


class OutputLayers:
    """The probabilities and uncertainty layers of one prediction run. GUI thread only.

    Args:
        viewer: the viewer.
        image_name: the predicted image layer, whose grid the layers take.
    """

    def __init__(self, viewer: napari.viewer.Viewer, image_name: str) -> None:
        self.viewer, self.image_name = viewer, image_name
        self.layers: dict[str, object] = {}
        self._writers: dict[str, _layers.RegionWriter] = {}

    def write(self, region: RegionDone) -> None:
        """Write the probabilities ``(K, z, Y, X)`` and uncertainty ``(z, Y, X)`` the region has."""
        for role in ROLES:
            values = getattr(region, role, None)
            if values is None:
                continue
            writer = self._writer(role, lambda image, v=values: np.zeros(
                v.shape[:-3] + _layers.spatial_shape(image), np.float32))
            if writer is not None:
                lead = (slice(None),) * (values.ndim - 3)
                writer.write(lead + tuple(region.slices), values)

    def mark(self, arrays: dict, region: RegionDone) -> None:
        """Show ``region`` of ``arrays`` (by role), written by someone else: the stores on disk of
        a large prediction. A layer is created at the first region its array is there."""
        for role in ROLES:
            data = arrays.get(role)
            if data is None:
                continue
            writer = self._writer(role, lambda image, d=data: d, interval=DISK_REFRESH_S)
            if writer is not None:
                lead = (slice(None),) * (len(data.shape) - 3)
                writer.mark(lead + tuple(region.slices))

    def repoint(self, arrays: dict, paths: dict) -> None:
        """Show ``arrays`` (by role) in the layers instead of their data, which moved to
        ``paths``."""
        for role, layer in self.layers.items():
            if role in arrays and layer in self.viewer.layers:
                layer.data = arrays[role]
                layer.metadata["path"] = str(paths[role])

    def _writer(self, role: str, data_for, interval: float = REFRESH_S,
                ) -> _layers.RegionWriter | None:
        """The writer of the layer ``<image> <role>``, made (replacing a layer of that name or
        its partial name) with ``data_for(image_layer)`` as its data when there is none."""
        writer = self._writers.get(role)
        if writer is not None and writer.layer in self.viewer.layers:
            return writer
        image = _layers.find_layer(self.viewer, self.image_name)
        if image is None:
            return None
        name = f"{image.name} {role}"
        old = _layers.find_layer(self.viewer, name + PARTIAL)
        if old is not None and old.metadata.get(_layers.ROLE) == role:
            self.viewer.layers.remove(old)
        layer = _layers.output_image_layer(self.viewer, name, image, data_for(image), role,
                                           **_STYLE)
        layer.metadata["partial"] = False
        self.layers[role] = layer
        self._writers[role] = _layers.RegionWriter(layer, interval=interval)
        return self._writers[role]

    def close(self, complete: bool) -> None:
        """Show everything written; mark the layers partial unless the prediction ``complete``d."""
        for writer in self._writers.values():
            writer.close()
        for layer in self.layers.values():
            if layer not in self.viewer.layers:
                continue
            layer.metadata["partial"] = not complete
            if not complete and not layer.name.endswith(PARTIAL):
                layer.name += PARTIAL


def source_path(layer) -> str | None:
    """The file a layer was read from (napari's ``layer.source.path``, or the ``path`` our HDF5
    reader keeps in the metadata), or None."""
    path = getattr(getattr(layer, "source", None), "path", None)
    return str(path) if path else layer.metadata.get("path")


def disk_labels_layer(viewer: napari.viewer.Viewer, name: str, like, data, *,
                      reuse_names: tuple[str, ...] = ()):
    """A Labels layer ``name`` showing ``data`` (a store on disk) over the grid of ``like``: the
    first Labels layer named ``name`` or one of ``reuse_names`` takes the data (what it held is
    neither cleared nor written: it may be an earlier store). The active layer stays active."""
    restore = _layers._keep_active(viewer)
    layer = None
    for candidate in (name,) + tuple(reuse_names):
        old = _layers.find_layer(viewer, candidate)
        if isinstance(old, Labels) and not old.multiscale:
            layer = old
            break
    if layer is None:
        layer = viewer.add_labels(data, name=name, scale=_layers.voxel_size(like),
                                  translate=_layers.spatial_translate(like))
    else:
        layer.data = data
        layer.name = name
        layer.scale, layer.translate = _layers.voxel_size(like), _layers.spatial_translate(like)
    layer.metadata.update({_layers.ROLE: "prediction", "image": like.name, "partial": False})
    restore()
    return layer
