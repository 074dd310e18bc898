"""Models trained or loaded in this napari session, shared by the Train and Predict widgets.

Only the GUI thread touches it. ``changed`` fires when a model is added or replaced.
"""

from __future__ import annotations

from psygnal import Signal

from ..engine import SegmentationModel


class Session:
    """A name -> :class:`SegmentationModel` mapping with a change signal."""

    changed = Signal(str)

    def __init__(self) -> None:
        self._models: dict[str, SegmentationModel] = {}

    def names(self) -> list[str]:
        return list(self._models)

    def get(self, name: str) -> SegmentationModel | None:
        return self._models.get(name)

    def put(self, name: str, model: SegmentationModel) -> None:
        self._models[name] = model
        self.changed.emit(name)


SESSION = Session()
