"""The class table of the Train widget: the label values painted, an editable name for each and
its colour in the annotation layer, plus a row for the next value to paint."""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtGui import QColor
from qtpy.QtWidgets import QHeaderView, QTableWidget, QTableWidgetItem, QWidget

from . import _layers


class ClassTable(QTableWidget):
    """Label value, editable class name and colour of the values painted, plus the next one."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(0, 3, parent)
        self.setHorizontalHeaderLabels(["value", "class name", "colour"])
        self.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.verticalHeader().setVisible(False)
        self.setMaximumHeight(130)
        # room for three rows however many widgets share the dock (was squeezed to one)
        self.setMinimumHeight(self.horizontalHeader().sizeHint().height()
                              + 3 * self.verticalHeader().defaultSectionSize() + 4)
        self.names: dict[int, str] = {}
        self._values: set[int] | None = None  # the values painted, None: count them again
        self.itemChanged.connect(self._on_edit)

    def name(self, value: int) -> str:
        return self.names.get(value) or f"class {value}"

    def refresh(self, layer, count_limit: int) -> None:
        """Rows for the values painted in ``layer``: counted for layers up to ``count_limit``
        voxels, for larger ones counted once and then followed through :meth:`add_painted`."""
        if layer is None:
            self._values = None
        elif self._values is None or layer.data.size <= count_limit:
            self._values = set(_layers.painted_values(_layers.layer_array(layer)))
        self.show_values(self._values or (), layer)
        if layer is not None:
            layer.metadata["class_names"] = dict(self.names)

    def classes(self) -> tuple[list[int], list[str]]:
        """The values painted (as last counted) and their names."""
        values = sorted(self._values or ())
        return values, [self.name(v) for v in values]

    def add_painted(self, value: int) -> None:
        """Follow a value just painted (shown at the next :meth:`refresh`)."""
        if self._values is not None:
            self._values.add(value)

    def forget_values(self) -> None:
        """Count the painted values again at the next :meth:`refresh` (another layer)."""
        self._values = None

    def show_values(self, values, layer) -> None:
        """Rows for ``values`` and the next free value, coloured like ``layer``."""
        values = sorted(set(values))
        rows = values + [max(values, default=0) + 1]
        self.blockSignals(True)
        self.setRowCount(len(rows))
        for r, v in enumerate(rows):
            value = QTableWidgetItem(str(v))
            value.setFlags(Qt.ItemFlag.ItemIsEnabled)
            name = QTableWidgetItem(self.name(v) if v in values else f"{self.name(v)} (next)")
            name.setData(Qt.ItemDataRole.UserRole, v)
            swatch = QTableWidgetItem("")
            swatch.setFlags(Qt.ItemFlag.ItemIsEnabled)
            color = None if layer is None else layer.get_color(v)
            if color is not None:
                swatch.setBackground(QColor.fromRgbF(*(float(c) for c in color[:4])))
            for c, item in enumerate((value, name, swatch)):
                self.setItem(r, c, item)
        self.blockSignals(False)

    def _on_edit(self, item: QTableWidgetItem) -> None:
        value = item.data(Qt.ItemDataRole.UserRole)
        if value is not None:
            self.names[int(value)] = item.text().removesuffix(" (next)").strip()
