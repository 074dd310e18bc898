"""What the Train widget shows of a run: the status line, the plot of the loss and validation
Dice, napari's progress bar and the live preview layer. Only the GUI thread calls it."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
from napari.utils import progress

from . import _layers

PLOT_INTERVAL_S = 2.0  # the live plot redraws at most this often (the status line 5 times a second)

if TYPE_CHECKING:
    from qtpy.QtWidgets import QLabel

    from ..engine import Preview, SegmentationModel, TrainProgress, TrainResult
    from ..engine.training.instant import ForestPreview
    from ._plot import TrainingPlot
    from ._train_job import TrainJob


class TrainingDisplay:
    """The views of one run at a time.

    Attributes:
        history: ``(iterations, losses, validation iterations, validation Dice per class)`` of
            the plot, from the first iteration of a resumed run on.
    """

    def __init__(self, viewer, status: QLabel, plot: TrainingPlot, classes=None) -> None:
        self.viewer, self.status, self.plot = viewer, status, plot
        self.classes = classes  # () -> (values, names) of the classes painted, or None
        self._colored = None  # the classes the preview layer is coloured for
        self._last_plot = 0.0
        self.history: tuple[list, list, list, list] = ([], [], [], [])
        self._bar = None
        self._preview_writer: _layers.RegionWriter | None = None
        self._network: Preview | None = None  # the network's preview shown last
        self._forest: np.ndarray | None = None  # what the random forest predicted, where it did
        self._rendering = False

    def start(self, job: TrainJob, last_model: SegmentationModel | None) -> None:
        """Start the plot (with the history of the run ``job`` resumes). The progress bar comes
        with the first iteration (:meth:`render`): making one costs the GUI thread about a
        second, which would hold back the forest's first preview just after *Train*."""
        history = last_model.history if job.start_iteration and last_model else {}
        losses = list(history.get("loss", []))[:job.start_iteration]
        self.history = (list(range(1, len(losses) + 1)), losses,
                        list(history.get("val_iteration", [])), list(history.get("val_dice", [])))
        self.plot.clear()
        self._bar = None

    def record(self, p: TrainProgress) -> None:
        its, losses, val_its, val_dice = self.history
        its.append(p.iteration)
        losses.append(p.loss)
        if p.val_dice is not None:
            val_its.append(p.iteration)
            val_dice.append(list(p.val_dice))

    def render(self, job: TrainJob, names: tuple[str, ...]) -> None:
        """Status line, plot and progress bar from the newest progress record of ``job``."""
        p = job.latest
        if p is None or self._rendering:
            return
        self._rendering = True
        try:
            parts = [f"Iteration {p.iteration}/{p.iterations}", f"loss {p.loss:.4f}"]
            if p.estimate is not None:  # known once the first steps are timed
                parts.insert(0, p.estimate.describe())
            if self.history[3]:
                parts.append("val Dice " + _dice_text(self.history[3][-1], names))
            parts += [f"{p.voxels_per_s / 1e6:.2f} Mvoxel/s", f"ETA {_duration(p.eta_s)}"]
            if p.threads and job.trainer is not None and job.trainer.device.type == "cpu":
                parts.append(f"{p.threads} CPU thread{'s' if p.threads > 1 else ''}")
            if job.stop_requested:
                parts.append("stopping...")
            self.status.setText(" · ".join(parts))
            now = time.monotonic()
            if now - self._last_plot >= PLOT_INTERVAL_S:  # a matplotlib draw costs ~50 ms here
                self._last_plot = now
                values = job.trainer.model.class_values if job.trainer is not None else ()
                self.plot.set_data(*self.history, names, values)
            # last: napari's progress bar processes events
            total = p.iterations - job.start_iteration
            if self._bar is None:
                self._bar = progress(total=total, desc="Training")
            elif self._bar.total != total:
                self._bar.total = total  # a time budget's, fixed
            _layers.advance(self._bar, p.iteration - job.start_iteration)
        finally:
            self._rendering = False

    def show_result(self, result: TrainResult, name: str) -> None:
        """How the run ended and how good its best model is, saved in the session as ``name``."""
        best = result.best.history.get("best_val_dice")
        how = f"Stopped at iteration {result.last.iteration}" if result.stopped else \
            f"Trained {result.last.iteration} iterations"
        if result.ended_early:
            how = (f"Ended early at iteration {result.ended_early} of "
                   f"{result.last.train_config.iterations} (validation stopped improving)")
        quality = ("best val Dice " + _dice_text(best, result.best.class_names)
                   + f" (iteration {result.best.iteration})") if best else \
            "no validation set (paint more strokes on more slices to get one)"
        self.status.setText(f"{how}; {quality}. '{name}' is ready in Predict.")

    def show_preview(self, image, preview: Preview) -> None:
        """Write the network's preview into ``<image> preview`` (made if needed); where the last
        one was, the random forest's preview comes back (or nothing)."""
        writer = self._writer(image, preview.labels.dtype)
        if self._network is not None:
            old = self._network.slices
            writer.write(old, 0 if self._forest is None else self._forest[old])
        writer.write(preview.slices, preview.labels)
        self._network = preview

    def prepare_preview(self, image, top_value: int) -> None:
        """Make ``<image> preview`` for labels up to ``top_value`` now, while the forest works."""
        self._writer(image, np.min_scalar_type(top_value))

    def show_forest(self, image, records: list[ForestPreview]) -> None:
        """Write random-forest records into ``<image> preview`` (``image`` None: nowhere)."""
        for record in records if image is not None else ():
            if record.done == 1 and record.forest == "quick":
                self.status.setText("First prediction from a random forest on your strokes "
                                    "(preview layer); the network is training...")
            self._show_forest(image, record)

    def _show_forest(self, image, record: ForestPreview) -> None:
        """One record, except where the network's own preview is shown (it is newer)."""
        writer = self._writer(image, record.labels.dtype)
        if self._forest is None:  # zeros: memory is taken only where the forest writes
            self._forest = np.zeros(writer.layer.data.shape, record.labels.dtype)
        self._forest[record.slices] = record.labels
        writer.layer.data[record.slices] = record.labels
        net = None if self._network is None else _layers.overlap(self._network.slices,
                                                                  record.slices)
        if net is not None:
            local = tuple(slice(r.start - s.start, r.stop - s.start)
                          for r, s in zip(net, self._network.slices))
            writer.layer.data[net] = self._network.labels[local]
        writer.mark(record.slices)

    def _writer(self, image, dtype) -> _layers.RegionWriter:
        """The writer of ``<image> preview``, made (zeroed) when missing or of another dtype."""
        writer = self._preview_writer
        name = f"{image.name} preview"
        if (writer is None or writer.layer not in self.viewer.layers or writer.layer.name != name
                or writer.layer.data.dtype != dtype):
            layer = _layers.output_labels_layer(self.viewer, name, image, dtype, "preview",
                                                opacity=0.5)
            writer = self._preview_writer = _layers.RegionWriter(layer, interval=0.1)
            self._network, self._forest = None, None
            self._colored = None
        classes = self.classes() if self.classes is not None else None
        if classes is not None and classes != self._colored:  # strokes' colours, bg clear
            _layers.show_classes(writer.layer, *classes)
            self._colored = classes
        return writer

    def finish(self, job: TrainJob | None, names: tuple[str, ...]) -> None:
        """Draw the whole history, show the last preview and close the progress bar (last: it
        processes events)."""
        bar, self._bar = self._bar, None
        trainer = None if job is None else job.trainer
        self.plot.set_data(*self.history, names, () if trainer is None else
                           trainer.model.class_values)
        if self._preview_writer is not None:
            self._preview_writer.close()
        if bar is not None:
            if job is not None and job.latest is not None:
                _layers.advance(bar, job.latest.iteration - job.start_iteration)
            bar.close()


def _dice_text(dice, names) -> str:
    """``"background: 0.91, nucleus: 0.78"`` (the index where a class has no name)."""
    return ", ".join(f"{names[i] if i < len(names) else i}: {d:.2f}" for i, d in enumerate(dice))


def _duration(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "?"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
