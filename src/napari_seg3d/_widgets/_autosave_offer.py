"""The offer of a training session that a crash left behind: a bar at the top of the Train
widget (*Restore* / *Discard*) shown on its start, and the restore itself: the strokes come back
as a Labels layer over the image of the same name and shape, the model as the current model."""

from __future__ import annotations

from typing import TYPE_CHECKING

from napari.utils.notifications import show_info, show_warning
from qtpy.QtWidgets import QHBoxLayout, QLabel, QPushButton, QWidget

from ..engine import ModelFileError, load_model
from ..engine.autosave import Restored, SessionInfo, discard, find_sessions, restore
from . import _layers

if TYPE_CHECKING:
    from napari.layers import Labels


class SessionOffer(QWidget):
    """A one-line bar: the newest found session, with Restore and Discard (hidden when none)."""

    def __init__(self, widget) -> None:
        super().__init__(widget)
        self.widget = widget
        self.found: list[SessionInfo] = []
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.restore_button = QPushButton("Restore")
        self.discard_button = QPushButton("Discard")
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.label, 1)
        row.addWidget(self.restore_button)
        row.addWidget(self.discard_button)
        self.restore_button.clicked.connect(lambda: self.restore(self.found[0]))
        self.discard_button.clicked.connect(lambda: self.discard(self.found[0]))
        self.setVisible(False)

    def look(self) -> list[SessionInfo]:
        """Find the sessions left by a crash, tell of damaged ones, offer the newest."""
        if not self.widget.autosave.enabled:
            return []
        self.found, problems = find_sessions()
        for problem in problems:
            show_warning(problem)
        if self.found:
            show_info("napari-seg3d autosaved a training session that did not end normally: "
                      "Restore or Discard it at the top of the Train widget.")
        self._show()
        return self.found

    def _show(self) -> None:
        if self.found:
            more = f" ({len(self.found) - 1} older too)" if len(self.found) > 1 else ""
            self.label.setText(f"Autosaved session of {self.found[0].describe()}{more}: "
                               "restore its strokes and model?")
        self.setVisible(bool(self.found))

    def _drop(self, info: SessionInfo) -> None:
        self.found = [s for s in self.found if s.folder != info.folder]
        self._show()

    def discard(self, info: SessionInfo) -> None:
        """Delete a found session."""
        discard(info)
        self._drop(info)

    def restore(self, info: SessionInfo) -> Labels | None:
        """Add its strokes as a Labels layer and make its model the current one; returns the
        layer (None when it had no strokes or could not be read, told in a sentence)."""
        try:
            restored = restore(info)
            best = None if restored.model_path is None else load_model(restored.model_path)
            last = None if restored.last_path is None else load_model(restored.last_path)
        except (ValueError, OSError, ModelFileError) as e:
            show_warning(f"{e} The session was not restored; its folder is {info.folder}.")
            self._drop(info)
            return None
        self._drop(info)
        image = _layers.find_layer(self.widget.viewer, info.image_name)
        same = image is not None and _layers.is_volume_image(image) and \
            _layers.spatial_shape(image) == info.shape
        layer = _add_strokes(self.widget, restored, image if same else None)
        _use(self.widget, info, image if same else None, layer, best, last)
        self._hand_over(restored, layer, best, last)
        show_info(_restored_sentence(info, image, same, layer, best))
        return layer

    def _hand_over(self, restored: Restored, layer, best, last) -> None:
        """Copy what was restored into a session of this process, then delete the old folder
        (in the writer thread, in that order): a second crash loses nothing."""
        info, autosave = restored.info, self.widget.autosave
        name = layer.name if layer is not None else info.annotation_name
        session = autosave.session_for(info.image_name, info.shape, name, scale=info.scale,
                                       translate=info.translate, source=info.source)
        if session is None:  # the old folder stays: it is offered again next time
            return
        if restored.strokes is not None:
            autosave.write_strokes(session, restored.strokes)
        autosave.save_model(session, best, last)
        autosave.writer.submit(object(), discard, info)


def _add_strokes(widget, restored: Restored, image) -> Labels | None:
    """The strokes as a Labels layer over ``image`` (or where the session's image was)."""
    info = restored.info
    if restored.strokes is None:
        return None
    names = {layer.name for layer in widget.viewer.layers}
    name = info.annotation_name if info.annotation_name not in names \
        else f"{info.annotation_name} (restored)"
    scale = _layers.voxel_size(image) if image is not None else info.scale
    translate = _layers.spatial_translate(image) if image is not None else info.translate
    return widget.viewer.add_labels(
        restored.strokes, name=name, scale=scale, translate=translate,
        metadata={_layers.ROLE: "annotations", "image": info.image_name,
                  "class_names": dict(info.class_names)})


def _use(widget, info: SessionInfo, image, layer, best, last) -> None:
    """Select the image and the strokes in the widget, and make ``best`` the current model."""
    widget.class_table.names.update(info.class_names)
    if image is not None:
        widget.image_combo.setCurrentText(image.name)
    if layer is not None:
        widget.annotation_combo.setCurrentText(layer.name)
    if best is not None:
        widget.use_model(best, f"{info.image_name} model (restored)")
        if last is not None and last.optimizer_state is not None:
            widget.last_model = last  # Continue training goes on from the last state
            widget._update_buttons()
    widget._refresh_class_table()


def _restored_sentence(info: SessionInfo, image, same: bool, layer, best) -> str:
    parts = []
    if layer is not None:
        parts.append(f"the strokes as layer '{layer.name}'")
    if best is not None:
        parts.append(f"the model ({best.iteration} iterations) as the current model")
    text = (f"Restored {' and '.join(parts)} from the autosaved session of "
            f"'{info.image_name}'." if parts else
            f"The autosaved session of '{info.image_name}' held no strokes and no model yet.")
    where = f" from {info.source}" if info.source else ""
    if image is None:
        text += (f" The image '{info.image_name}' {list(info.shape)} is not open: open it{where} "
                 "to go on training.")
    elif not same:
        text += (f" The open image '{info.image_name}' has shape "
                 f"{list(_layers.spatial_shape(image))}, not the session's {list(info.shape)}: "
                 f"open the image the strokes were painted on{where} to go on training.")
    return text
