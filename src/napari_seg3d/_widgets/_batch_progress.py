"""Progress and results of the *Batch predict* widget: an overall and a per-file napari progress
bar, drawn by a timer from the worker's newest reports, and a table with one row per file."""

from __future__ import annotations

from pathlib import Path

from napari.utils import progress
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QAbstractItemView, QHeaderView, QTableWidget, QTableWidgetItem, QWidget

from ..engine.prediction.batch import FileProgress, FileResult

BAR_INTERVAL_MS = 100
STATUSES = ("done", "skipped", "failed")


class BatchProgress:
    """The bars and the results table of one widget, for one run at a time.

    napari progress bars process Qt events on every change, so the worker's events are handled
    re-entrantly; the widget's handlers only record state here (``latest``, :meth:`add_result`)
    and a timer draws the bars. The per-file bar is not nested under the overall one: napari 0.9
    can crash when a viewer closes after nested bars were shown.

    Attributes:
        table: One row per file handled: file name, status, output or reason.
        latest: The newest report from inside a file, or None.
    """

    def __init__(self, parent: QWidget) -> None:
        self.table = _results_table()
        self.latest: FileProgress | None = None
        self._total = self._done = 0
        self._running = False
        self._bars: dict[str, progress] = {}
        self._bar_file = -1
        self._syncing = False
        self._timer = QTimer(parent)
        self._timer.setInterval(BAR_INTERVAL_MS)
        self._timer.timeout.connect(self.sync)

    def reset(self, total: int) -> None:
        """Empty the table for a run over ``total`` files."""
        self.latest, self._total, self._done = None, total, 0
        self.table.setRowCount(0)

    def start(self) -> None:
        """The worker started: draw the bars from now on."""
        self._running = True
        self._timer.start()

    def finish(self) -> None:
        """The worker finished: stop drawing and close the bars."""
        self._timer.stop()
        self._running = False
        self.sync()

    def add_result(self, result: FileResult) -> None:
        """Count a finished file and add its row to the table."""
        self._done += 1
        row = self.table.rowCount()
        self.table.insertRow(row)
        detail = result.reason if result.status == "failed" else str(result.output)
        if result.status == "skipped":
            detail = f"{result.output} ({result.reason})"
        for col, text in enumerate((Path(result.input).name, result.status, detail)):
            item = QTableWidgetItem(text)
            item.setToolTip(result.input if col == 0 else text)
            self.table.setItem(row, col, item)

    def selected_rows(self) -> list[int]:
        return sorted({index.row() for index in self.table.selectedIndexes()})

    def sync(self) -> None:
        """Bring the progress bars up to date with the worker's reports; close them once the
        worker is done (re-checked after drawing, which processes events)."""
        if self._syncing:
            return
        self._syncing = True
        try:
            if self._running:
                self._draw_bars()
            if not self._running:
                for name in ("file", "files"):
                    self._close_bar(name)
        finally:
            self._syncing = False

    def _draw_bars(self) -> None:
        files = self._bars.get("files")
        if files is None:
            files = self._bars["files"] = progress(total=self._total, desc="Batch predict")
        files.update(self._done - files.n)
        latest = self.latest
        active = latest is not None and latest.index >= self._done
        if "file" in self._bars and not (active and self._bar_file == latest.index):
            self._close_bar("file")
        if active:
            bar = self._bars.get("file")
            if bar is None:
                self._bar_file = latest.index
                bar = self._bars["file"] = progress(total=latest.windows_total,
                                                    desc=Path(latest.input).name)
            bar.update(latest.windows_done - bar.n)

    def _close_bar(self, name: str) -> None:
        bar = self._bars.pop(name, None)
        if bar is not None:
            bar.close()


def _results_table() -> QTableWidget:
    table = QTableWidget(0, 3)
    table.setHorizontalHeaderLabels(["File", "Status", "Output / reason"])
    table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    table.horizontalHeader().setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)
    return table


def file_progress_text(item: FileProgress) -> str:
    """``"File 2 of 5: a.tif, 3 of 8 windows"``."""
    return (f"File {item.index + 1} of {item.total}: {Path(item.input).name}, "
            f"{item.windows_done} of {item.windows_total} windows")


def summary_text(results: list[FileResult]) -> str:
    """``"2 done, 0 skipped, 1 failed."``"""
    counts = {s: sum(r.status == s for r in results) for s in STATUSES}
    return ", ".join(f"{n} {s}" for s, n in counts.items()) + "."
