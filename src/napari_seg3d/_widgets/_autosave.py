"""Autosave for the Train widget: the strokes (a few seconds after painting, and when Train
starts) and the latest kept model go to a session folder (see :mod:`..engine.autosave`) in a
background thread; on the widget's start a session left by a crash is offered back.

Every write goes through one worker thread, in order, so closing a session (the model saved, the
widget or window closed) always comes after the writes before it.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
from napari.utils.notifications import (
    Notification,
    NotificationSeverity,
    notification_manager,
    show_info,
    show_warning,
)
from qtpy.QtCore import QEvent, QObject, QTimer

from ..engine import ModelFileError, load_model
from ..engine.autosave import (
    AutosaveSession,
    SessionInfo,
    discard,
    find_unclosed_sessions,
    restore,
    start_session,
)
from . import _layers

if TYPE_CHECKING:
    from ..engine import SegmentationModel

log = logging.getLogger(__name__)

STROKES_DELAY_MS = 3000  # strokes are written at most this often while painting


class Autosaver(QObject):
    """The autosave of one Train widget (``widget``: a :class:`TrainWidget`)."""

    def __init__(self, widget) -> None:
        super().__init__(widget)
        self.widget = widget
        self.session: AutosaveSession | None = None
        self.offered: list[SessionInfo] = []  # found sessions offered on start
        self.error: str | None = None  # the last write's failure, shown once
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="seg3d-autosave")
        self._last: Future | None = None
        self._watched = None  # the top-level window whose Close closes the session
        self._timer = QTimer(self, singleShot=True, interval=STROKES_DELAY_MS)
        self._timer.timeout.connect(self.save_strokes)

    # --- saving -----------------------------------------------------------------------------------

    def _ensure(self) -> AutosaveSession | None:
        """The open session, started for the selected layers if there is none."""
        if self.session is not None and not self.session.closed:
            return self.session
        image, ann = self.widget.image_layer(), self.widget.annotation_layer()
        if image is None or ann is None:
            return None
        source = getattr(getattr(image, "source", None), "path", None)
        try:
            self.session = start_session(image.name, image.data.shape, source=source,
                                         class_names=dict(self.widget.class_table.names),
                                         scale=_layers.voxel_size(ann))
        except OSError as e:
            self._report(str(e))
            return None
        self._watch_window()
        return self.session

    def strokes_changed(self) -> None:
        """Write the strokes a few seconds from now (one write for a burst of strokes)."""
        if not self._timer.isActive():
            self._timer.start()

    def save_strokes(self) -> None:
        """Copy the annotation layer now and write it in the background."""
        self._timer.stop()
        session, ann = self._ensure(), self.widget.annotation_layer()
        if session is not None and ann is not None:
            labels = np.array(_layers.layer_array(ann), copy=True)
            self._submit(session.save_strokes, labels)

    def save_model(self, model: SegmentationModel, last: SegmentationModel | None = None,
                   ) -> None:
        """Write a kept model (from any thread; the training thread calls it)."""
        session = self.session
        if session is not None and not session.closed and model is not None:
            self._submit(session.save_model, model, last)

    def _submit(self, fn, *args) -> None:
        def run():
            try:
                fn(*args)
            except Exception as e:  # noqa: BLE001 - an autosave never stops the work
                log.warning("Autosave failed: %s", e)
                self.error = str(e)

        try:
            self._last = self._pool.submit(run)
        except RuntimeError:  # the widget is closing
            pass

    def flush(self) -> None:
        """Wait until every write handed over so far is done."""
        if self._last is not None:
            self._last.result()
        if self.error is not None:
            self._report(self.error)

    def close(self) -> None:
        """End the session normally: it is deleted, after the writes before."""
        self._timer.stop()
        session, self.session = self.session, None
        if session is not None:
            self._submit(session.close)
            self.flush()

    def shutdown(self) -> None:
        self.close()
        self._pool.shutdown(wait=True)

    def _report(self, message: str) -> None:
        self.error = None
        show_warning(f"Autosave failed: {message}")

    def _watch_window(self) -> None:
        window = self.widget.window()
        if window is not self._watched and window is not self.widget:
            window.installEventFilter(self)
            self._watched = window

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt's name
        if event.type() == QEvent.Type.Close and obj is self._watched:
            self.close()
        return False

    # --- sessions left by a crash -----------------------------------------------------------------

    def offer(self) -> list[SessionInfo]:
        """Tell of damaged session folders, and offer the newest found session back."""
        found, problems = find_unclosed_sessions()
        for problem in problems:
            show_warning(problem)
        self.offered = found
        if found:
            info = found[0]
            notification_manager.dispatch(Notification(
                f"napari-seg3d autosaved a training session that did not end normally: "
                f"{info.describe()}. Restore its strokes and model?",
                severity=NotificationSeverity.INFO,
                actions=[("Restore", lambda *_: self.restore(info)),
                         ("Discard", lambda *_: self.discard(info))]))
        return found

    def discard(self, info: SessionInfo) -> None:
        discard(info)
        self.offered = [s for s in self.offered if s.folder != info.folder]

    def restore(self, info: SessionInfo):
        """Add the strokes as a Labels layer and load the model; returns the layer or None."""
        widget = self.widget
        try:
            restored = restore(info)
            best = None if restored.model_path is None else load_model(restored.model_path)
            last = None if restored.last_path is None else load_model(restored.last_path)
        except (ValueError, OSError, ModelFileError) as e:
            show_warning(f"{e} The session was not restored; its folder is {info.folder}.")
            return None
        layer = None
        if restored.strokes is not None:
            layer = widget.viewer.add_labels(
                restored.strokes, name=f"{info.image_name} annotations (restored)",
                scale=info.scale, metadata={_layers.ROLE: "annotations",
                                            "image": info.image_name})
        widget.class_table.names.update(info.class_names)
        if widget.image_combo.findText(info.image_name) >= 0:
            widget.image_combo.setCurrentText(info.image_name)
        if layer is not None:
            widget.annotation_combo.setCurrentText(layer.name)
        if best is not None:
            widget.use_model(best, f"{info.image_name} model (restored)")
            if last is not None and last.optimizer_state is not None:
                widget.last_model = last
                widget._update_buttons()
        opened = widget.image_combo.findText(info.image_name) >= 0
        where = info.source or f"the image '{info.image_name}'"
        show_info(f"Restored the session of {info.image_name}"
                  + ("" if opened else f"; open {where} to go on training") + ".")
        if self._ensure() is not None:  # a new session holds it now: the old one may go
            self.save_strokes()
            self.save_model(best, last)
            self.discard(info)
        return layer
