"""Model files for the Train widget: save the best model, load one to fine-tune or resume, and
make a model the current one (:class:`ModelFiles`, a mixin of
:class:`~napari_seg3d._widgets.train.TrainWidget`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QFileDialog

from ..engine import ModelFileError, load_model, save_model
from . import _layer_files
from ._session import SESSION

if TYPE_CHECKING:
    from ..engine import SegmentationModel


class ModelFiles:
    """Save model, Load model and the current model of the Train widget."""

    def save_model_to(self, path) -> Path | None:
        """Save the best model to ``path``; returns the path, or None (after a notification)."""
        if self.model is None:
            show_error("There is no model yet: train or load one first.")
            return None
        refused = _layer_files.refusal(self.viewer, path, "the model")
        if refused is not None:  # e.g. the image's or the annotations' own file
            show_error(refused)
            return None
        try:
            out = save_model(self.model, path)
        except OSError as e:  # an OutputError: the sentence says where and what to do
            show_error(str(e))
            return None
        show_info(f"Saved the model to {out}.")
        return out

    def load_model_from(self, path) -> SegmentationModel | None:
        """Load a model file: it becomes the current model, and Train fine-tunes it."""
        try:
            model = load_model(path)
        except ModelFileError as e:
            show_error(str(e))
            return None
        self.use_model(model, Path(path).name)
        self.status.setText(f"Loaded {Path(path).name}: classes {list(model.class_names)}, "
                            f"{model.iteration} iterations trained. Train fine-tunes it.")
        return model

    def use_model(self, model: SegmentationModel, name: str) -> None:
        """Make ``model`` the current one (Train fine-tunes it), shared as ``name``."""
        self.model = self.last_model = model
        SESSION.put(name, model)
        self.class_table.names.update(zip(model.class_values, model.class_names))
        self.show_settings_of(model)
        self.fine_tune_check.setEnabled(True)
        self.fine_tune_check.setChecked(True)
        self._refresh_class_table()
        self._update_buttons()

    def _save_dialog(self) -> None:
        image = self.image_combo.currentText() or "model"
        path, _ = QFileDialog.getSaveFileName(self, "Save model", f"{image} model.pt",
                                              "napari-seg3d model (*.pt);;All files (*)")
        if path:
            self.save_model_to(path)

    def _load_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load model", "",
                                              "Models (*.pt *.zip *.yaml);;All files (*)")
        if path:
            self.load_model_from(path)
