"""The live training plot: loss per iteration (and its running mean) and validation Dice per
class, in a small matplotlib canvas that redraws only when asked."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from matplotlib.ticker import AutoLocator
from qtpy.QtWidgets import QSizePolicy, QVBoxLayout, QWidget

from .._report import class_colors

_DICE_COLORS = ("tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink")


def running_mean(values: Sequence[float], window: int = 20) -> np.ndarray:
    """Mean of the last ``window`` values at every point (fewer at the start)."""
    v = np.asarray(values, float)
    if v.size == 0:
        return v
    c = np.concatenate([[0.0], np.cumsum(v)])
    end = np.arange(1, v.size + 1)
    n = np.minimum(end, window)
    return (c[end] - c[end - n]) / n


class TrainingPlot(QWidget):
    """Loss (left axis, log scale) and validation Dice per class (right axis, 0 to 1)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.figure = Figure(figsize=(3.6, 2.2), dpi=80)
        self.figure.subplots_adjust(left=0.16, right=0.86, bottom=0.2, top=0.95)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.canvas.setMinimumHeight(150)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)
        self.loss_axes = self.figure.add_subplot(111)
        self.dice_axes = self.loss_axes.twinx()
        self._dice_lines: list = []
        self._hint = None
        self.clear()

    def clear(self) -> None:
        """Empty axes, ready for a new run."""
        for ax in (self.loss_axes, self.dice_axes):
            ax.clear()
            ax.tick_params(labelsize=7)
        self.loss_axes.set_xlabel("iteration", fontsize=7)
        self.loss_axes.set_ylabel("loss", fontsize=7)
        self.dice_axes.set_ylabel("val. Dice", fontsize=7)
        self.dice_axes.set_ylim(0, 1)
        (self._loss_line,) = self.loss_axes.plot([], [], lw=0.6, color="0.7")
        (self._mean_line,) = self.loss_axes.plot([], [], lw=1.2, color="tab:blue", label="loss")
        self._dice_lines = []
        # before the first step: plain axes (not matplotlib's +-0.05 of nothing) and a hint
        self.loss_axes.set_xlim(0, 100)
        self.loss_axes.set_ylim(0, 1)
        self.loss_axes.set_yticks([])
        self._hint = self.loss_axes.text(
            0.5, 0.5, "Loss and validation Dice\nappear here during training", ha="center",
            va="center", fontsize=7, color="0.5", transform=self.loss_axes.transAxes)
        self.canvas.draw_idle()

    def set_data(self, iterations: Sequence[int], losses: Sequence[float],
                 val_iterations: Sequence[int], val_dice: Sequence[Sequence[float]],
                 class_names: Sequence[str] = (), class_values: Sequence[int] = ()) -> None:
        """Show a whole history (cheap for tens of thousands of points); redraws when idle.
        With ``class_values``, each class's Dice has its colour in the layers."""
        it, loss = np.asarray(iterations, float), np.asarray(losses, float)
        self._loss_line.set_data(it, loss)
        self._mean_line.set_data(it, running_mean(loss))
        if it.size:
            if self._hint is not None:
                self._hint.remove()
                self._hint = None
                self.loss_axes.yaxis.set_major_locator(AutoLocator())
            self.loss_axes.set_xlim(min(it[0], it[-1] - 1), max(it[-1], it[0] + 1))
            finite = loss[np.isfinite(loss)]
            if finite.size:
                self._scale_loss_axis(float(finite.min()), float(finite.max()))
        self._set_dice(val_iterations, val_dice, class_names, class_values)
        self.canvas.draw_idle()

    def _scale_loss_axis(self, lo: float, hi: float) -> None:
        """Log scale for a positive loss, linear otherwise."""
        scale = "log" if lo > 0 else "linear"
        if self.loss_axes.get_yscale() != scale:
            self.loss_axes.set_yscale(scale)
        if scale == "log":
            self.loss_axes.set_ylim(lo / 1.2, hi * 1.2 if hi > lo else lo * 2)
        else:
            pad = 0.05 * (hi - lo) or 1.0
            self.loss_axes.set_ylim(lo - pad, hi + pad)

    def _set_dice(self, val_iterations, val_dice, class_names, class_values=()) -> None:
        dice = np.asarray(val_dice, float).reshape(len(val_dice), -1) if len(val_dice) else None
        k = 0 if dice is None else dice.shape[1]
        while len(self._dice_lines) < k:
            i = len(self._dice_lines)
            name = class_names[i] if i < len(class_names) else f"class {i + 1}"
            color = (class_colors([class_values[i]])[0] if i < len(class_values)
                     else _DICE_COLORS[i % len(_DICE_COLORS)])
            (line,) = self.dice_axes.plot([], [], "o-", ms=3, lw=0.8, color=color, label=name)
            self._dice_lines.append(line)
            self.dice_axes.legend(loc="lower left", fontsize=6, frameon=False)
        for i, line in enumerate(self._dice_lines):
            if dice is not None and i < k:
                line.set_data(np.asarray(val_iterations, float), dice[:, i])
