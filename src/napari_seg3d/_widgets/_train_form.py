"""The controls of the Train widget, the layers they choose and the :class:`TrainConfig` they set.

:class:`TrainForm` builds the controls and keeps the layer choice in step with the viewer;
:class:`~napari_seg3d._widgets.train.TrainWidget` inherits them and adds the training.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from ..engine import (
    DEVICES,
    LOSSES,
    PLANES,
    AnnotationError,
    TrainConfig,
    default_batch_size,
    precision,
    propose_patch_size,
)
from ..engine.models import MODELS
from ..engine.plan import patch_edge
from ..engine.training.early_stop import MIN_DELTA, PATIENCE
from . import _channels, _layers
from ._budget_box import BudgetBox
from ._class_table import ClassTable
from ._plot import TrainingPlot

if TYPE_CHECKING:
    import napari

    from ..engine import SegmentationModel

NOTE = "0 = not annotated; background is a class you paint like any other."
NETWORKS = {"3D U-Net": 3, "2.5D: 2D U-Net on z, y, x slices": 2}  # shown name -> dims


class TrainForm(QWidget):
    """Layer choice, class table, training settings, buttons, status line and plot.

    Subclasses implement the hooks :meth:`_on_annotations_edited`, :meth:`_refresh_class_table`
    and :meth:`_update_buttons`.
    """

    def __init__(self, viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self._listened = None  # the annotation layer whose edits go to _on_annotations_edited
        self._build_ui()

    def _build_ui(self) -> None:
        layout = QVBoxLayout(self)
        form = QFormLayout()
        self.image_combo = QComboBox()
        self.annotation_combo = QComboBox()
        self.new_layer_button = QPushButton("New annotation layer")
        self.channel_picker = _channels.ChannelPicker()
        form.addRow("Image", self.image_combo)
        form.addRow(self.channel_picker.label, self.channel_picker)
        form.addRow("Annotations", self.annotation_combo)
        form.addRow(self.new_layer_button)
        layout.addLayout(form)
        self.class_table = ClassTable()
        layout.addWidget(self.class_table)
        note = QLabel(NOTE)
        note.setWordWrap(True)
        layout.addWidget(note)
        layout.addLayout(self._settings_form())
        layout.addWidget(self._advanced())
        self.fine_tune_check = QCheckBox("Start from the current model (fine-tune)")
        self.fine_tune_check.setEnabled(False)
        self.preview_check = QCheckBox("Live preview")
        self.quick_check = QCheckBox("Instant first prediction (random forest)")
        self.quick_check.setChecked(True)
        self.quick_check.setToolTip("Segment with a random forest on filter features of your strokes "
                                    "within seconds, shown in the preview layer while the network "
                                    "learns.")
        layout.addWidget(self.fine_tune_check)
        layout.addWidget(self.preview_check)
        layout.addWidget(self.quick_check)
        self.train_button, self.stop_button = QPushButton("Train"), QPushButton("Stop")
        self.continue_button = QPushButton("Continue training")
        self.save_button = QPushButton("Save model...")
        self.load_button = QPushButton("Load model...")
        self.report_button = QPushButton("Report")
        self.report_button.setToolTip("Loss and validation Dice curves, and the image, strokes "
                                      "and prediction on the slices with the most strokes.")
        for row in ((self.train_button, self.stop_button, self.report_button),
                    (self.continue_button, self.save_button, self.load_button)):
            box = QHBoxLayout()
            for b in row:
                box.addWidget(b)
            layout.addLayout(box)
        self.status = QLabel("Paint a few strokes of each class, then press Train.")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        self.plot = TrainingPlot()
        layout.addWidget(self.plot)
        layout.addStretch()

    def _settings_form(self) -> QFormLayout:
        form = QFormLayout()
        self.patch_spins = []
        row = QHBoxLayout()
        for axis in "ZYX":
            spin = QSpinBox(minimum=4, maximum=1024, singleStep=8, value=64, prefix=f"{axis} ")
            self.patch_spins.append(spin)
            row.addWidget(spin)
        self.network_combo = QComboBox()
        self.network_combo.addItems(list(NETWORKS))
        self.network_combo.setToolTip(
            "3D: a 3D U-Net on 3D patches, per-axis pooling for anisotropic voxels. 2.5D: a 2D "
            "U-Net trained on slices along z, y and x through your strokes, predicting along "
            "one or three axes (as volume-segmantics); often as good on near-isotropic data. "
            "For new models; a loaded model keeps its own.")
        self.planes_combo = QComboBox()
        self.planes_combo.addItems(list(PLANES))
        self.planes_combo.setCurrentText(TrainConfig().planes)
        self.planes_combo.setToolTip(
            "How a 2.5D model predicts: fast = along z; three = along z, y and x, probabilities "
            "averaged; best = the three axes x four in-plane rotations (12 passes). The Predict "
            "widget can choose again.")
        form.addRow("Network", self.network_combo)
        form.addRow("2.5D planes", self.planes_combo)
        form.addRow("Patch size", row)
        self.budget = BudgetBox()
        self.iterations_spin = self.budget.iterations_spin  # 0: auto, the time budget decides
        self.minutes_spin = self.budget.minutes_spin
        form.addRow("Iterations", self.budget)
        self.batch_spin = QSpinBox(minimum=1, maximum=256, value=default_batch_size(3))
        form.addRow("Batch size", self.batch_spin)
        self.network_combo.currentTextChanged.connect(self._on_network_changed)
        self.planes_combo.setEnabled(False)
        return form

    @property
    def dims(self) -> int:
        """3 for a 3D network, 2 for a 2D network on slices (2.5D)."""
        return NETWORKS[self.network_combo.currentText()]

    def show_settings_of(self, model: SegmentationModel) -> None:
        """Show a loaded model's network, planes, patch and batch size."""
        self.network_combo.setCurrentText(next(n for n, d in NETWORKS.items() if d == model.dims))
        self.planes_combo.setCurrentText(model.train_config.planes)
        for spin, p in zip(self.patch_spins, model.patch_size):
            spin.setValue(p)
        self.batch_spin.setValue(model.train_config.batch_size)
        self.amp_check.setChecked(model.train_config.amp)

    def _on_network_changed(self, text: str = "") -> None:
        """Propose the patch and batch size of the chosen network."""
        self.planes_combo.setEnabled(self.dims == 2)
        self.batch_spin.setValue(default_batch_size(self.dims))
        self._on_image_changed()

    def _advanced(self) -> QCollapsible:
        box = QCollapsible("Advanced")
        inner = QWidget()
        form = QFormLayout(inner)
        self.architecture_combo = QComboBox()
        self.architecture_combo.addItems(list(MODELS))
        self.architecture_combo.setToolTip(
            "unet: U-Net with residual blocks. unetpp: U-Net++ (nested skip connections). "
            "resenc_unet: residual encoder U-Net (more blocks in deeper levels, as nnU-Net's "
            "ResEnc). For new models; a loaded model keeps its own.")
        self.levels_spin = QSpinBox(minimum=0, maximum=6, value=0, specialValueText="auto")
        self.filters_spin = QSpinBox(minimum=2, maximum=256, value=16)
        self.lr_spin = QDoubleSpinBox(minimum=1e-6, maximum=1.0, decimals=6, value=3e-3,
                                      singleStep=1e-3)
        self.loss_combo = QComboBox()
        self.loss_combo.addItems(LOSSES)
        self.device_combo = QComboBox()
        self.device_combo.addItems(list(DEVICES))
        self.device_combo.currentTextChanged.connect(self.budget.set_device)
        self.early_stop_check = QCheckBox(checked=TrainConfig().early_stop)
        self.early_stop_check.setToolTip(
            "End the run early when, in its last quarter and after the last self-training "
            "round, the held-out strokes have stopped improving: the best validation Dice rose "
            f"by at most {MIN_DELTA:g} over the last {PATIENCE} validations (there every "
            "fortieth of the run).")
        self.seed_spin = QSpinBox(minimum=0, maximum=2**31 - 1, value=0)
        self.val_spin = QDoubleSpinBox(minimum=0.0, maximum=0.5, decimals=2, value=0.15,
                                       singleStep=0.05)
        self.smoothness_spin = QDoubleSpinBox(minimum=0.0, maximum=20.0, decimals=2,
                                              value=TrainConfig().smoothness, singleStep=0.5)
        self.smoothness_spin.setToolTip(
            "Weight of the edge-aware smoothness loss: nearby voxels of similar intensity are "
            "pushed to the same class, so strokes spread along regions and stop at edges. "
            "0 turns it off.")
        self.self_training_spin = QSpinBox(minimum=0, maximum=8, value=TrainConfig().self_training)
        self.self_training_spin.setToolTip(
            "Rounds of self-training in the second half of the run: the network segments the "
            "whole volume and learns from the voxels it is sure of, as well as from your strokes. "
            "0 turns it off.")
        self.amp_check = QCheckBox(checked=TrainConfig().amp)
        self.amp_check.setToolTip(
            "Compute in float16 on a GPU and in bfloat16 on CPUs that have it built in (recent "
            "Intel Xeon and AMD CPUs): about twice as fast, with Dice within 0.002 of float32 "
            "on our benchmark volumes. "
            f"This machine's CPU computes in {precision.describe('cpu')} with it. Off: float32 "
            "throughout; a model trained without it also predicts in float32.")
        self.threads_spin = QSpinBox(minimum=0, maximum=512, value=0, specialValueText="auto")
        self.threads_spin.setToolTip(
            "CPU threads for training and prediction in this napari session. auto: the cores "
            "that other programs leave free, measured again every few seconds (torch's default, "
            "all cores, runs many times slower beside another job).")
        self.tensorboard_edit = QLineEdit()
        self.tensorboard_edit.setPlaceholderText("off")
        self.tensorboard_edit.setToolTip(
            "A folder for TensorBoard logs of each run (loss, Dice, image slices); empty: off. "
            "Needs the tensorboard package (pip install \"napari-seg3d[tensorboard]\"); view "
            "them with: tensorboard --logdir FOLDER")
        for label, w in (("Architecture", self.architecture_combo),
                         ("U-Net levels", self.levels_spin), ("Base filters", self.filters_spin),
                         ("Learning rate", self.lr_spin), ("Loss", self.loss_combo),
                         ("Edge-aware smoothness", self.smoothness_spin),
                         ("Self-training rounds", self.self_training_spin),
                         ("Early stop", self.early_stop_check),
                         ("Device", self.device_combo), ("CPU threads", self.threads_spin),
                         ("Mixed precision", self.amp_check), ("Seed", self.seed_spin),
                         ("Validation fraction", self.val_spin),
                         ("TensorBoard folder", self.tensorboard_edit)):
            form.addRow(label, w)
        box.addWidget(inner)
        return box

    def settings(self) -> dict:
        """What the form sets, for :func:`~napari_seg3d.engine.plan.plan_training`."""
        return dict(
            patch_size=tuple(s.value() for s in self.patch_spins),
            batch_size=self.batch_spin.value(), **self.budget.steps(),
            early_stop=self.early_stop_check.isChecked(),
            learning_rate=self.lr_spin.value(), loss=self.loss_combo.currentText(),
            device=self.device_combo.currentText(), seed=self.seed_spin.value(),
            validation_fraction=self.val_spin.value(), smoothness=self.smoothness_spin.value(),
            self_training=self.self_training_spin.value(), planes=self.planes_combo.currentText(),
            amp=self.amp_check.isChecked(), dims=self.dims,
            architecture=self.architecture_combo.currentText(),
            base_filters=self.filters_spin.value(), levels=self.levels_spin.value() or None)

    def _run_settings(self, resume: bool, model: SegmentationModel | None,
                      last_model: SegmentationModel | None
                      ) -> tuple[dict, SegmentationModel | None]:
        """The settings and the starting model of a run: continuing ``last_model`` exactly (only
        the iterations to add and the device are the form's), or new (fine-tuning ``model`` when
        that box is checked)."""
        if resume:
            if last_model is None:
                raise AnnotationError("There is no training to continue: train a model first.")
            return {**self.budget.steps(), "device": self.device_combo.currentText()}, last_model
        return self.settings(), model if self.fine_tune_check.isChecked() else None

    # --- the layers chosen ------------------------------------------------------------------------

    def _refresh_layers(self, event=None) -> None:
        if event is not None and getattr(event, "type", "") == "inserted":
            event.value.events.name.connect(self._refresh_layers)
        images = [layer.name for layer in _layers.image_layers(self.viewer)]
        annotations = [layer.name for layer in _layers.annotation_candidates(self.viewer)]
        image_changed = _layers.fill_combo(self.image_combo, images)
        _layers.fill_combo(self.annotation_combo, annotations)
        self.channel_picker.refresh(self.viewer, self.image_layer())
        if image_changed:
            self._on_image_changed()
        if self.annotation_layer() is not self._listened:
            self._on_annotation_layer_changed()
        self._update_buttons()

    def image_layer(self):
        layer = _layers.find_layer(self.viewer, self.image_combo.currentText())
        return layer if _layers.is_volume_image(layer) else None

    def image_input(self) -> _channels.ImageInput | None:
        """The Image and the channels ticked under *More channels*, or None without an Image;
        raises an :class:`AnnotationError` when they do not fit together."""
        return self.channel_picker.input_of(self.viewer, self.image_layer())

    def annotation_layer(self):
        layer = _layers.find_layer(self.viewer, self.annotation_combo.currentText())
        return layer if layer in _layers.annotation_candidates(self.viewer) else None

    def _on_image_changed(self, name: str = "") -> None:
        image = self.image_layer()
        self.channel_picker.refresh(self.viewer, image)
        if image is None:
            return
        proposed = propose_patch_size(_layers.spatial_shape(image), _layers.voxel_size(image),
                                      max_edge=patch_edge(self.device_combo.currentText()),
                                      dims=self.dims)
        for spin, p in zip(self.patch_spins, proposed):
            spin.setValue(p)
        for layer in _layers.annotation_candidates(self.viewer):
            if (layer.metadata.get("image") == image.name
                    or layer.name == f"{image.name} annotations"):
                self.annotation_combo.setCurrentText(layer.name)
                break

    def _on_annotation_layer_changed(self, name: str = "") -> None:
        layer = self.annotation_layer()
        if self._listened is not None and self._listened is not layer:
            for e in (self._listened.events.paint, self._listened.events.data,
                      self._listened.events.set_data):
                e.disconnect(self._on_annotations_edited)
        if layer is not None and layer is not self._listened:
            for e in (layer.events.paint, layer.events.data, layer.events.set_data):
                e.connect(self._on_annotations_edited)
            self.class_table.names.update(layer.metadata.get("class_names", {}))
        self._listened = layer
        self.class_table.forget_values()
        self._refresh_class_table()

    # --- hooks ------------------------------------------------------------------------------------

    def _on_annotations_edited(self, event=None) -> None:
        """Called with every paint, data and set_data event of the chosen annotation layer."""

    def _refresh_class_table(self) -> None:
        """Show the values painted in the chosen annotation layer in the class table."""

    def _update_buttons(self) -> None:
        """Enable the buttons that can be used now."""
