"""The controls of the Predict widget, the model and image they choose and the
:class:`PredictConfig` they set.

:class:`PredictForm` builds the controls and keeps the model and image choices in step with the
session and the viewer; :class:`~napari_seg3d._widgets.predict.PredictWidget` inherits them and
adds the prediction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..engine import DEVICES, PredictConfig, resolve_device
from ..engine.prediction import disk_stores
from . import _channels, _instances, _layers
from ._export import add_export_button
from ._session import SESSION

if TYPE_CHECKING:
    import napari

    from ..engine import SegmentationModel

FROM_FILE = "From file..."


class PredictForm(QWidget):
    """Model and image choice, prediction settings, buttons and status line.

    Subclasses implement :meth:`load_model_from`, :meth:`start_prediction`, :meth:`cancel`
    and :meth:`_update_buttons` (which may use ``worker``, the running worker or None).
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = _layers.unwrap(napari_viewer)
        self.worker = None
        self._own_models: dict[str, SegmentationModel] = {}
        self._model_name = ""
        self._build_ui()
        SESSION.changed.connect(self._on_session_changed)
        layers = self.viewer.layers
        for event in (layers.events.inserted, layers.events.removed):
            event.connect(self._refresh_images)
        for layer in layers:
            layer.events.name.connect(self._refresh_images)
        self._refresh_models()
        self._refresh_images()

    def _build_ui(self) -> None:
        layout = QVBoxLayout(self)
        form = QFormLayout()
        self.model_combo, self.image_combo = QComboBox(), QComboBox()
        self.overlap_spin = QDoubleSpinBox(minimum=0.0, maximum=0.9, singleStep=0.05, decimals=2,
                                           value=PredictConfig().overlap)
        self.tta_check = QCheckBox("Test-time augmentation (mirroring, 4x slower)")
        self.forest_check = QCheckBox("Average with the model's random forest")
        self.forest_check.setChecked(PredictConfig().forest)
        self.forest_check.setToolTip("A model trained here keeps a random forest fit on the "
                                     "strokes; averaging its probabilities with the network's "
                                     "is usually better than either (unticked: the network "
                                     "alone).")
        self.probabilities_check = QCheckBox("Class probabilities layer")
        self.uncertainty_check = QCheckBox("Uncertainty layer")
        self.uncertainty_check.setToolTip("Where the model is least sure: paint your next strokes "
                                          "there.")
        self.planes_combo = _layers.planes_combo()
        self.batch_spin = QSpinBox(minimum=1, maximum=256, value=PredictConfig().batch_size)
        self.device_combo = QComboBox()
        self.device_combo.addItems(DEVICES)
        folder_row = self._build_folder_row()
        self.channel_picker = _channels.ChannelPicker()
        for label, w in (("Model", self.model_combo), ("Image", self.image_combo),
                         (self.channel_picker.label, self.channel_picker),
                         ("Overlap", self.overlap_spin), ("", self.tta_check),
                         ("", self.forest_check), ("", self.probabilities_check), ("", self.uncertainty_check),
                         ("2.5D planes", self.planes_combo), ("Batch size", self.batch_spin),
                         ("Device", self.device_combo)):
            form.addRow(label, w)
        form.addRow("Large predictions folder", folder_row)
        self.disk_format_combo = QComboBox()
        self.disk_format_combo.addItems(disk_stores.FORMATS)
        self.disk_format_combo.setToolTip(
            "The format of a prediction too large for memory: zarr (nuclei_labels.zarr), or "
            "ome-zarr (nuclei_labels.ome.zarr: the image with the segmentation as NGFF labels, "
            "with their pyramids, for other OME-Zarr tools). Probabilities and uncertainty "
            "stay zarr.")
        form.addRow("Large predictions format", self.disk_format_combo)
        self.instances = _instances.InstancesOption(form, self.probabilities_check)
        layout.addLayout(form)
        row = QHBoxLayout()
        self.predict_button, self.cancel_button = QPushButton("Predict"), QPushButton("Cancel")
        row.addWidget(self.predict_button)
        row.addWidget(self.cancel_button)
        layout.addLayout(row)
        self.export_button = add_export_button(self, self.current_model, self.image_layer,
                                               self.cancel_button, follow=False)
        self.status = QLabel("Train a model in the Train widget, or load one from a file.")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        layout.addStretch()
        self.model_combo.activated.connect(self._on_model_activated)
        self.predict_button.clicked.connect(self.start_prediction)
        self.cancel_button.clicked.connect(self.cancel)

    def _build_folder_row(self) -> QHBoxLayout:
        self.large_folder_edit = QLineEdit()
        self.large_folder_edit.setPlaceholderText("beside the image file, else the cache folder")
        self.large_folder_edit.setToolTip(
            "Where a prediction too large for memory is written (image 'nuclei': "
            "nuclei_labels.zarr) while its layer shows it: an image read from disk, or layers "
            "larger than "
            f"{disk_stores.MEMORY_FRACTION:.0%} of the memory. Empty: the image file's folder, "
            f"else {disk_stores.cache_folder()}.")
        browse = QPushButton("...")
        browse.setMaximumWidth(32)
        browse.clicked.connect(self._browse_large_folder)
        row = QHBoxLayout()
        row.addWidget(self.large_folder_edit)
        row.addWidget(browse)
        return row

    def _browse_large_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Large predictions folder",
                                                  self.large_folder_edit.text())
        if folder:
            self.large_folder_edit.setText(folder)

    def prediction_config(self, model: SegmentationModel) -> PredictConfig:
        """The settings of the form for ``model`` (planes for a 2D model only), the device
        resolved; raises a ValueError with a sentence when the device is not available."""
        device = str(resolve_device(self.device_combo.currentText()))
        planes = _layers.planes_choice(self.planes_combo) if model.dims == 2 else None
        return PredictConfig(overlap=self.overlap_spin.value(), tta=self.tta_check.isChecked(),
                             batch_size=self.batch_spin.value(), device=device, planes=planes,
                             probabilities=self.probabilities_check.isChecked(),
                             uncertainty=self.uncertainty_check.isChecked(),
                             forest=self.forest_check.isChecked())

    # --- models and images ------------------------------------------------------------------------

    def _on_session_changed(self, name: str) -> None:
        try:
            self._refresh_models(select=name)
        except RuntimeError:  # this widget's window was closed: stop listening
            SESSION.changed.disconnect(self._on_session_changed)

    def _refresh_models(self, select: str | None = None) -> None:
        names = list(dict.fromkeys(SESSION.names() + list(self._own_models)))
        _layers.fill_combo(self.model_combo, names + [FROM_FILE])
        if select in names:
            self.model_combo.setCurrentText(select)
        elif self.model_combo.currentText() == FROM_FILE and names:
            self.model_combo.setCurrentText(names[-1])
        self._model_name = self.model_combo.currentText()
        self._update_buttons()

    def _on_model_activated(self, index: int) -> None:
        if self.model_combo.itemText(index) != FROM_FILE:
            self._model_name = self.model_combo.itemText(index)
            self._update_buttons()
            return
        path, _ = QFileDialog.getOpenFileName(self, "Load model", "",
                                              "Models (*.pt *.zip *.yaml);;All files (*)")
        if not path or self.load_model_from(path) is None:
            self.model_combo.setCurrentText(self._model_name)

    def set_model(self, model: SegmentationModel, name: str = "model (script)") -> None:
        """Use ``model`` (kept by this widget only, not added to the session)."""
        self._own_models[name] = model
        self._refresh_models(select=name)

    def current_model(self) -> SegmentationModel | None:
        """The model chosen in the combo box, or None."""
        name = self.model_combo.currentText()
        return self._own_models[name] if name in self._own_models else SESSION.get(name)

    def _refresh_images(self, event=None) -> None:
        if event is not None and getattr(event, "type", "") == "inserted":
            event.value.events.name.connect(self._refresh_images)
        names = [layer.name for layer in _layers.image_layers(self.viewer)]
        _layers.fill_combo(self.image_combo, names)
        self.channel_picker.refresh(self.viewer, self.image_layer())
        self._update_buttons()

    def image_layer(self):
        layer = _layers.find_layer(self.viewer, self.image_combo.currentText())
        return layer if _layers.is_volume_image(layer) else None

    def image_input(self) -> _channels.ImageInput | None:
        """The Image and the channels ticked under *More channels*, or None without an Image;
        raises an :class:`AnnotationError` when they do not fit together."""
        return self.channel_picker.input_of(self.viewer, self.image_layer())

    def follow_model_channels(self, model) -> None:
        """Choose the layers a multichannel ``model`` was trained on (by their names) when they
        are all here and the current choice gives another number of channels."""
        names = tuple(getattr(model, "channel_names", ()) or ())
        if model is None or model.in_channels < 2 or len(names) != model.in_channels:
            return
        try:
            source = self.image_input()
        except ValueError:
            source = None
        if source is not None and source.channels == model.in_channels:
            return
        layers = [_layers.find_layer(self.viewer, n) for n in names]
        if all(_layers.is_volume_image(layer) and len(layer.data.shape) == 3 for layer in layers):
            self.image_combo.setCurrentText(names[0])
            self.channel_picker.refresh(self.viewer, self.image_layer())
            self.channel_picker.set_ticked(names[1:])

    def load_model_from(self, path) -> SegmentationModel | None:  # pragma: no cover
        raise NotImplementedError  # implemented by the widget

    def start_prediction(self) -> bool:  # pragma: no cover - implemented by the widget
        raise NotImplementedError

    def cancel(self) -> None:  # pragma: no cover - implemented by the widget
        raise NotImplementedError

    def _update_buttons(self) -> None:  # pragma: no cover - implemented by the widget
        raise NotImplementedError


def problem(model, source, listed: int = 0) -> str | None:
    """Why a prediction of ``source`` (an :class:`~._channels.ImageInput`) by ``model`` cannot
    start, in a sentence, or None; ``listed``: the layers under *More channels*."""
    if model is None:
        return ("There is no model: train one in the Train widget, or choose 'From file...' to "
                "load a model file.")
    if source is None:
        return "There is no 3D image layer: open a volume (Z, Y, X) or (C, Z, Y, X) first."
    return _channels.mismatch(model, source, listed)


def classes(model) -> int:
    """The number of probability channels of a model (for the size of its layers)."""
    return int(model.model_config.kwargs.get("out_channels", len(model.class_values)))
