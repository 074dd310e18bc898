"""Helpers the dock widgets share: which layers can be used, the annotation and output layers,
writes into a layer that refresh only the region that changed at a bounded rate, and the
plumbing of their background workers.

Writing a result with a full ``refresh()`` re-slices and re-uploads the whole displayed data:
hundreds of milliseconds in the 3D view. :class:`RegionWriter` copies each region into the layer's
array at once and refreshes the display at most every ``interval`` seconds, and for a Labels layer
only the union of the regions written since the last refresh (a partial texture upload).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import numpy as np
from napari.layers import Image, Labels
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QComboBox

from ..engine import PLANES, Seg3DError
from ..engine.training.trainer import MAX_CHANNELS

if TYPE_CHECKING:
    import napari

log = logging.getLogger(__name__)

AS_TRAINED = "as trained"
ROLE = "seg3d_role"  # layer.metadata key: "annotations", "preview", "prediction", "probabilities"
Region = tuple[slice, ...]


# --- layers ---------------------------------------------------------------------------------------

def unwrap(viewer):
    """The viewer itself when napari hands a dock widget a ``PublicOnlyProxy`` of it.

    Through the proxy every private attribute access warns, and the streaming writes need the
    Labels layer's partial refresh, which napari 0.9 keeps private; event sources are also the
    layers themselves, not their proxies, so identity checks need the real objects."""
    return getattr(viewer, "__wrapped__", viewer)


def is_volume_image(layer) -> bool:
    """An Image layer the engine can use: ``(Z, Y, X)`` or ``(C, Z, Y, X)`` with few channels."""
    if not isinstance(layer, Image) or layer.rgb:
        return False
    shape = layer.data.shape
    return len(shape) == 3 or (len(shape) == 4 and shape[0] <= MAX_CHANNELS)


def image_layers(viewer: napari.viewer.Viewer) -> list[Image]:
    return [layer for layer in viewer.layers if is_volume_image(layer)]


def annotation_candidates(viewer: napari.viewer.Viewer) -> list[Labels]:
    """Labels layers a user may have painted in: every one but the plugin's outputs."""
    outputs = ("preview", "prediction")
    return [layer for layer in viewer.layers
            if isinstance(layer, Labels) and layer.metadata.get(ROLE) not in outputs]


def layer_array(layer):
    """The full-resolution data of a layer (level 0 of a multiscale one)."""
    return layer.data[0] if layer.multiscale else layer.data


def spatial_shape(layer) -> tuple[int, int, int]:
    return tuple(int(s) for s in layer.data.shape[-3:])


def channels_of(layer) -> int:
    return int(layer.data.shape[0]) if len(layer.data.shape) == 4 else 1


def voxel_size(layer) -> tuple[float, float, float]:
    return tuple(float(s) for s in layer.scale[-3:])


def spatial_translate(layer) -> tuple[float, float, float]:
    return tuple(float(t) for t in layer.translate[-3:])


def find_layer(viewer: napari.viewer.Viewer, name: str):
    return viewer.layers[name] if name in viewer.layers else None


def _keep_active(viewer: napari.viewer.Viewer):
    """The active layer now, to give the selection back after adding a layer (so a brush stays
    on the annotation layer while outputs appear)."""
    active = viewer.layers.selection.active

    def restore() -> None:
        if active is not None and active in viewer.layers:
            viewer.layers.selection.active = active
    return restore


def make_annotation_layer(viewer: napari.viewer.Viewer, image: Image) -> Labels:
    """An empty uint8 Labels layer over ``image``, selected, with a brush ready to paint label 1."""
    shape = spatial_shape(image)
    layer = viewer.add_labels(
        np.zeros(shape, np.uint8), name=f"{image.name} annotations", scale=voxel_size(image),
        translate=spatial_translate(image), metadata={ROLE: "annotations", "image": image.name})
    viewer.layers.selection.active = layer
    layer.mode = "paint"
    layer.selected_label = 1
    layer.brush_size = int(np.clip(round(min(shape[1:]) / 40), 3, 20))
    return layer


BACKGROUND_NAMES = ("background", "bg")  # class names drawn transparent over the image


def show_classes(layer: Labels, class_values, class_names) -> None:
    """Colour a prediction like the annotations (napari's default colour of each label value)
    and draw a class named "background" transparent, so that the image shows through it."""
    from napari.utils.colormaps import DirectLabelColormap, label_colormap

    base = label_colormap(49, seed=0.5)  # what a new Labels layer (the annotations) uses
    clear = np.zeros(4, np.float32)
    colors = {0: clear, None: clear}
    for value, name in zip(class_values, tuple(class_names) + ("",) * len(class_values)):
        hidden = str(name).strip().lower() in BACKGROUND_NAMES
        colors[int(value)] = clear if hidden else base.map(np.array([int(value)]))[0]
    layer.colormap = DirectLabelColormap(color_dict=colors)


def output_labels_layer(viewer: napari.viewer.Viewer, name: str, like, dtype, role: str,
                        *, reuse_names: tuple[str, ...] = (), **kwargs) -> Labels:
    """A zeroed Labels layer ``name`` over the grid of ``like``: an existing layer of that name
    (or one of ``reuse_names``) with the same shape is reused, one of another shape replaced.
    The active layer stays active."""
    shape = spatial_shape(like)
    restore = _keep_active(viewer)
    layer = None
    for candidate in (name,) + tuple(reuse_names):
        old = find_layer(viewer, candidate)
        if isinstance(old, Labels) and old.data.shape == shape and not old.multiscale:
            layer = old
            break
        if old is not None and old.metadata.get(ROLE) == role:
            viewer.layers.remove(old)
    if layer is None:
        layer = viewer.add_labels(np.zeros(shape, dtype), name=name, scale=voxel_size(like),
                                  translate=spatial_translate(like), metadata={ROLE: role},
                                  **kwargs)
    else:
        if type(layer.data) is np.ndarray and layer.data.dtype == np.dtype(dtype):
            layer.data[...] = 0  # in memory only: never clear a store on disk it may show
            layer.refresh()
        else:
            layer.data = np.zeros(shape, dtype)
        layer.name = name
        layer.scale, layer.translate = voxel_size(like), spatial_translate(like)
    layer.metadata.update({ROLE: role, "image": like.name, "partial": False})
    restore()
    return layer


def output_image_layer(viewer: napari.viewer.Viewer, name: str, like, data: np.ndarray,
                       role: str, **kwargs) -> Image:
    """An Image layer ``name`` holding ``data`` ``(K, Z, Y, X)`` over the grid of ``like``,
    replacing an earlier one of that name. The active layer stays active."""
    restore = _keep_active(viewer)
    old = find_layer(viewer, name)
    if old is not None:
        viewer.layers.remove(old)
    lead = data.ndim - 3
    layer = viewer.add_image(data, name=name, scale=(1.0,) * lead + voxel_size(like),
                             translate=(0.0,) * lead + spatial_translate(like),
                             metadata={ROLE: role, "image": like.name}, **kwargs)
    restore()
    return layer


def data_point(layer, viewer: napari.viewer.Viewer, world_yx=None) -> np.ndarray:
    """The viewer's current position (``world_yx`` replacing the last two world axes) in the
    data coordinates of ``layer``'s last three axes."""
    point = np.asarray(viewer.dims.point, float)
    if world_yx is not None:
        point[-2:] = world_yx
    return np.asarray(layer.world_to_data(point))[-3:]


def displayed_z(layer, viewer: napari.viewer.Viewer) -> int:
    """The z slice of ``layer`` (its last three axes) the viewer shows."""
    n = spatial_shape(layer)[0]
    return int(np.clip(round(float(data_point(layer, viewer)[0])), 0, n - 1))


def view_region(layer, viewer: napari.viewer.Viewer, depth: int, width: int) -> Region:
    """The ``(z, y, x)`` region of ``layer``'s last three axes around what is on screen:
    ``depth`` slices around the displayed z, and ``width`` voxels in y and x around the camera
    centre (the whole plane when it is no larger than ``width**2``)."""
    shape = spatial_shape(layer)
    z = displayed_z(layer, viewer)
    out = [window(z, depth, shape[0])]
    centre = data_point(layer, viewer, viewer.camera.center[-2:])
    for axis in (1, 2):
        if shape[1] * shape[2] <= width**2:
            out.append(slice(0, shape[axis]))
        else:
            out.append(window(int(round(float(centre[axis]))), width, shape[axis]))
    return tuple(out)


def window(centre: int, size: int, n: int) -> slice:
    """``size`` voxels around ``centre`` inside ``[0, n)``."""
    start = int(np.clip(centre - size // 2, 0, max(n - size, 0)))
    return slice(start, min(start + size, n))


def painted_values(labels: np.ndarray) -> list[int]:
    """The label values present in ``labels`` other than 0, read from the painted z slices only
    (a bincount of the whole layer made an int64 copy of it: 3.8 GiB and seconds of the GUI
    thread for the strokes of a 794^3 volume, when the Train widget was docked)."""
    from ..engine.training.instant import painted_values as painted

    labels = np.asarray(labels)
    if labels.ndim != 3:
        return [int(v) for v in np.unique(labels[labels != 0])]
    return [int(v) for v in painted(labels)]


# --- widgets and workers --------------------------------------------------------------------------

class WorkerFailed:
    """What a widget's worker generator returns instead of raising: superqt drops a
    RuntimeError from a generator (torch's OutOfMemoryError is one) without emitting
    ``finished``, so the widget would never be ready again."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


def error_message(error: BaseException, what: str) -> str:
    """The sentence of a user error, or what failed and why for anything else."""
    if isinstance(error, (Seg3DError, ValueError)):
        return str(error)
    return f"{what} failed: {type(error).__name__}: {error}"


def fill_combo(combo, names: list[str]) -> bool:
    """Replace the items of a QComboBox without emitting signals, keeping the current one when
    it is still there; returns whether the current item changed."""
    current = combo.currentText()
    if [combo.itemText(i) for i in range(combo.count())] != names:
        combo.blockSignals(True)
        combo.clear()
        combo.addItems(names)
        if current in names:
            combo.setCurrentText(current)
        combo.blockSignals(False)
    return combo.currentText() != current


def advance(bar, n: int) -> None:
    """Move a napari progress bar to ``n`` (its update runs processEvents: call it last)."""
    if bar is not None and n != bar.n:
        bar.update(n - bar.n)


# --- region writes --------------------------------------------------------------------------------

def clip_region(region: Region, shape) -> Region:
    return tuple(slice(*s.indices(int(n))[:2]) for s, n in zip(region, shape))


def overlap(a: Region, b: Region) -> Region | None:
    """The region both ``a`` and ``b`` cover, or None."""
    out = tuple(slice(max(s.start, t.start), min(s.stop, t.stop)) for s, t in zip(a, b))
    return out if all(s.stop > s.start for s in out) else None


def union(a: Region | None, b: Region) -> Region:
    if a is None:
        return b
    return tuple(slice(min(s.start, t.start), max(s.stop, t.stop)) for s, t in zip(a, b))


def refresh_region(layer, region: Region) -> None:
    """Show what changed in ``region`` of ``layer.data``: a partial texture update for a numpy
    Labels layer, else a full refresh."""
    region = clip_region(region, layer.data.shape)
    done = False
    if isinstance(layer, Labels):
        try:
            done = _partial_labels_refresh(layer, region)
        except (AttributeError, IndexError, KeyError, TypeError, ValueError):  # internals moved
            log.debug("Partial refresh failed; refreshing %s fully", layer.name, exc_info=True)
    if not done:
        layer.refresh()


def _partial_labels_refresh(layer: Labels, region: Region) -> bool:
    """Recolour ``region`` in the displayed slice of ``layer`` and upload only that part.

    Uses what ``Labels.paint`` uses (``_accumulate_updated_slice`` and
    ``_partial_labels_refresh``): napari 0.9 has no public way to refresh a region. Returns
    False when the caller must refresh fully."""
    if not layer.visible:
        return True  # napari refreshes a layer when it is shown again
    if layer.multiscale or not isinstance(layer.data, np.ndarray):
        return False
    if not layer._slicing_state.loaded or layer._slice.empty:
        return True  # the pending slice reads the data as it is now
    raw, view = layer._slice.image.raw, layer._slice.image.view
    if not np.shares_memory(layer.data, raw):
        return False
    for axis, position in layer._get_pt_not_disp().items():
        if not region[axis].start <= position < region[axis].stop:
            return True  # the region is not on screen
    displayed = list(layer._slice_input.displayed)
    shown = tuple(region[d] for d in displayed)
    if layer.contour == 0:
        view[shown] = layer.colormap._data_to_texture(raw[shown])
    layer._accumulate_updated_slice(region)
    layer._partial_labels_refresh()
    return True


def update_thumbnail(layer) -> None:
    try:
        layer._update_thumbnail()
    except AttributeError:
        layer.refresh()


class RegionWriter:
    """Writes regions into ``layer.data`` at once; refreshes the display of the regions written
    at most every ``interval`` seconds (the last one by a timer), so a stream of results never
    floods the event loop. Use from the GUI thread only.

    Args:
        layer: a Labels layer (partial refresh) or any layer (full refresh).
        interval: shortest time between two refreshes, in seconds.
    """

    def __init__(self, layer, interval: float = 0.1) -> None:
        self.layer = layer
        self.interval = interval
        self._dirty: Region | None = None
        self._last = -np.inf
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self.flush)

    def write(self, region: Region, values: np.ndarray) -> None:
        """``layer.data[region] = values``; ``region`` covers every axis of the data."""
        self.layer.data[region] = values
        self.mark(region)

    def mark(self, region: Region) -> None:
        """Schedule the display of ``region``, written by the caller."""
        self._dirty = union(self._dirty, clip_region(region, self.layer.data.shape))
        wait = self._last + self.interval - time.monotonic()
        if wait <= 0:
            self.flush()
        elif not self._timer.isActive():
            self._timer.start(int(wait * 1000) + 1)

    def flush(self) -> None:
        """Refresh what was written and not yet shown."""
        self._timer.stop()
        region, self._dirty = self._dirty, None
        if region is not None:
            self._last = time.monotonic()
            refresh_region(self.layer, region)

    def close(self) -> None:
        """Show everything written and update the layer's thumbnail."""
        self.flush()
        update_thumbnail(self.layer)


def planes_combo() -> QComboBox:
    """The choice of how a 2.5D model predicts: as trained, or one of :data:`PLANES`."""
    combo = QComboBox()
    combo.addItems([AS_TRAINED, *PLANES])
    combo.setToolTip("2.5D models (a 2D network on slices): fast = along z; three = along z, y "
                     "and x, probabilities averaged; best = the three axes x four in-plane "
                     "rotations (12 passes). 3D models ignore it.")
    return combo


def planes_choice(combo: QComboBox) -> str | None:
    """The planes chosen in a :func:`planes_combo`; None for *as trained*."""
    text = combo.currentText()
    return None if text == AS_TRAINED else text
