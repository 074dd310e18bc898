"""The Train widget's *Iterations* and *Time budget* boxes, side by side, and the line under them
that says what *Train* will do. Iterations win: a number there means exactly that many steps;
*auto* leaves the number to the time budget (see :mod:`napari_seg3d.engine.budget`)."""

from __future__ import annotations

from qtpy.QtWidgets import QDoubleSpinBox, QHBoxLayout, QLabel, QSpinBox, QVBoxLayout, QWidget

from ..engine.budget import ITERATIONS_CAP, default_minutes
from ..engine.plan import device_kind


class BudgetBox(QWidget):
    """``iterations_spin`` (0 = auto), ``minutes_spin`` and ``label``.

    Args:
        device: the device the run will use (``auto``, ``cpu``, ``cuda``); its kind sets the
            default budget.
    """

    def __init__(self, device: str = "auto", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._kind = device_kind(device)
        self.iterations_spin = QSpinBox(minimum=0, maximum=1_000_000, value=0, singleStep=100,
                                        specialValueText="auto")
        self.minutes_spin = QDoubleSpinBox(minimum=0.1, maximum=24 * 60.0, decimals=1,
                                           singleStep=0.5, suffix=" min",
                                           value=default_minutes(self._kind))
        self.iterations_spin.setToolTip(
            "Training steps. auto: as many as fit in the time budget at the speed this machine "
            f"shows in the first steps, at most {ITERATIONS_CAP}. A number: exactly that many "
            "steps; the time budget is then not used (iterations win).")
        self.minutes_spin.setToolTip(
            "Time budget of a run when Iterations is auto: the number of steps is fixed once, "
            "from the speed of the first steps, and stays fixed if the machine gets busier. "
            f"Default {default_minutes('cpu'):g} minutes on a CPU, {default_minutes('gpu'):g} "
            "on a GPU.")
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.label.setMinimumHeight(2 * self.label.fontMetrics().lineSpacing() + 2)  # 2 lines
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.iterations_spin)
        row.addWidget(QLabel("time budget"))
        row.addWidget(self.minutes_spin)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        layout.addWidget(self.label)
        self.iterations_spin.valueChanged.connect(self._show)
        self.minutes_spin.valueChanged.connect(self._show)
        self._show()

    def steps(self) -> dict:
        """``iterations`` when the box holds a number (they win), else ``minutes``."""
        n = self.iterations_spin.value()
        return {"iterations": n, "minutes": None} if n else \
            {"iterations": None, "minutes": self.minutes_spin.value()}

    def set_device(self, device: str) -> None:
        """Follow the Device box: its default budget, unless the box holds another value."""
        previous, self._kind = self._kind, device_kind(device)
        if self.minutes_spin.value() == default_minutes(previous):
            self.minutes_spin.setValue(default_minutes(self._kind))
        self._show()

    def _show(self, value=None) -> None:
        n = self.iterations_spin.value()
        self.minutes_spin.setEnabled(n == 0)
        if n:
            self.label.setText(f"Train runs exactly {n} iterations (no time budget).")
            return
        where = "a GPU" if self._kind == "gpu" else "the CPU"
        self.label.setText(  # short: two lines in a narrow dock (the tooltips say the rest)
            f"Train runs for about {self.minutes_spin.value():g} minutes on {where} (at most "
            f"{ITERATIONS_CAP} iterations).")
