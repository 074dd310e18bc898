"""Several Image layers as the channels of one input (what napari makes of a multichannel
file, or of ``viewer.add_image(data, channel_axis=0)``: one layer per channel).

:class:`ChannelPicker` is the *More channels* list of the Train and Predict widgets: the other
3D Image layers, each with a tick box. :func:`image_input` stacks the chosen Image layer and the
ticked ones, in the order listed, into one ``(C, Z, Y, X)`` array without copying them (a
``dask.array`` that reads only the part indexed: a training patch, a sliding window), and
refuses layers of different sizes or voxel sizes in a sentence.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QLabel, QListWidget, QListWidgetItem

from ..engine import AnnotationError
from ..engine.prediction.disk_stores import in_memory
from ..engine.training.trainer import MAX_CHANNELS
from . import _layers

LABEL = "More channels"
TOOLTIP = ("Tick other image layers to add them as further channels of the Image, in the order "
           "listed (the Image is the first channel): e.g. the layers napari opens from one "
           "multichannel file, one per channel. They must have the Image's size and voxel "
           "size; a model trained on several channels predicts on as many, in the same order.")


@dataclass(frozen=True)
class ImageInput:
    """The image layers that make one input, in channel order (``layers[0]`` is the Image)."""

    layers: tuple

    @property
    def layer(self):
        """The first layer: its grid (shape, scale, translate) and name are the input's."""
        return self.layers[0]

    @property
    def name(self) -> str:
        return self.layer.name

    @property
    def channels(self) -> int:
        return sum(_layers.channels_of(layer) for layer in self.layers)

    @property
    def channel_names(self) -> tuple[str, ...]:
        """One name a channel: the layer's, with ``[c]`` for each channel of a (C, Z, Y, X) one."""
        names = []
        for layer in self.layers:
            n = _layers.channels_of(layer)
            names += [layer.name] if len(layer.data.shape) == 3 else \
                [f"{layer.name} [{c}]" for c in range(n)]
        return tuple(names)

    @property
    def data(self):
        """``(Z, Y, X)`` or ``(C, Z, Y, X)``: the layer's own array for one layer, else the
        layers stacked lazily."""
        arrays = [_layers.layer_array(layer) for layer in self.layers]
        if len(arrays) == 1:
            return arrays[0]
        import dask.array as da

        parts = [a if isinstance(a, da.Array) else da.from_array(a, chunks=a.shape, asarray=False)
                 for a in arrays]
        return da.concatenate([p if p.ndim == 4 else p[None] for p in parts], axis=0)

    @property
    def probe(self):
        """An array that is in memory exactly when every layer's is (for the choice of a
        prediction in memory or on disk)."""
        arrays = [_layers.layer_array(layer) for layer in self.layers]
        return next((a for a in arrays if not in_memory(a)), arrays[0])


def image_input(image, extra=()) -> ImageInput:
    """The input of ``image`` and the ``extra`` channel layers; raises an
    :class:`AnnotationError` with a sentence when they do not fit together."""
    layers = (image, *[layer for layer in extra if layer is not image])
    first = layers[0]
    for layer in layers[1:]:
        if _layers.spatial_shape(layer) != _layers.spatial_shape(first):
            raise AnnotationError(
                f"The channel layer '{layer.name}' is {_layers.spatial_shape(layer)} voxels but "
                f"the image '{first.name}' is {_layers.spatial_shape(first)}; channels must "
                "have the same size: untick it under More channels.")
        if not np.allclose(_layers.voxel_size(layer), _layers.voxel_size(first)):
            raise AnnotationError(
                f"The channel layer '{layer.name}' has voxels of {_layers.voxel_size(layer)} but "
                f"the image '{first.name}' has {_layers.voxel_size(first)}; channels must have "
                "the same voxel size (layer scale): untick it, or give both the same scale.")
    out = ImageInput(layers)
    if out.channels > MAX_CHANNELS:
        raise AnnotationError(f"The image and the channels ticked make {out.channels} channels; "
                              f"at most {MAX_CHANNELS} are possible: untick some.")
    return out


def mismatch(model, source: ImageInput, listed: int = 0) -> str | None:
    """Why ``model`` cannot predict ``source`` (another number of channels), or None;
    ``listed``: the layers under *More channels* (none: nothing to tick is suggested)."""
    if source.channels == model.in_channels:
        return None
    names = getattr(model, "channel_names", ())
    trained = f" ({', '.join(names)})" if names else ""
    more, ticked = model.in_channels - source.channels, len(source.layers) - 1
    has = (f"'{source.name}' has {source.channels} channel(s)" if not ticked else
           f"'{source.name}' and the {ticked} layer(s) ticked under More channels give "
           f"{source.channels}")
    what = ("tick " + ("more" if ticked else f"{more} more") + " layer(s) under More channels, in "
            "the order trained, or " if more > 0 and listed else
            "untick layers under More channels, or " if ticked else "")
    return (f"The model was trained on {model.in_channels}-channel images{trained} but {has}; "
            f"{what}choose another image or model.")


class ChannelPicker(QListWidget):
    """The *More channels* list: every 3D Image layer but the Image, each with a tick box; the
    ticks stay with the layers' names while layers come and go. Hidden (with its ``label``)
    when there is no other layer."""

    def __init__(self) -> None:
        super().__init__()
        self.label = QLabel(LABEL)
        self.setToolTip(TOOLTIP)
        self.label.setToolTip(TOOLTIP)
        self.setMaximumHeight(90)
        self.setVisible(False)
        self.label.setVisible(False)

    def refresh(self, viewer, image) -> None:
        """List the 3D Image layers of ``viewer`` other than ``image`` and the plugin's outputs
        (in the viewer's order), keeping the ticks of those listed before."""
        ticked = set(self.ticked_names())
        names = [layer.name for layer in _layers.image_layers(viewer)
                 if layer is not image and _layers.ROLE not in layer.metadata]  # not our outputs
        if names != [self.item(i).text() for i in range(self.count())]:
            self.blockSignals(True)
            self.clear()
            for name in names:
                item = QListWidgetItem(name)
                item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
                item.setCheckState(Qt.CheckState.Checked if name in ticked
                                   else Qt.CheckState.Unchecked)
                self.addItem(item)
            self.blockSignals(False)
        self.setVisible(bool(names))
        self.label.setVisible(bool(names))

    def ticked_names(self) -> list[str]:
        return [self.item(i).text() for i in range(self.count())
                if self.item(i).checkState() == Qt.CheckState.Checked]

    def set_ticked(self, names) -> None:
        """Tick exactly the layers ``names`` (those listed)."""
        names = set(names)
        for i in range(self.count()):
            item = self.item(i)
            item.setCheckState(Qt.CheckState.Checked if item.text() in names
                               else Qt.CheckState.Unchecked)

    def ticked(self, viewer) -> list:
        """The ticked layers, in the order listed."""
        return [layer for layer in (_layers.find_layer(viewer, n) for n in self.ticked_names())
                if _layers.is_volume_image(layer)]

    def input_of(self, viewer, image) -> ImageInput | None:
        """``image`` and the layers ticked here, or None without an image; raises an
        :class:`AnnotationError` when they do not fit together."""
        return None if image is None else image_input(image, self.ticked(viewer))
