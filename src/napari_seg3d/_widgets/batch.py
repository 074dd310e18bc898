"""The *Batch predict* dock widget: apply a saved or session model to many files.

It wires the form to :func:`napari_seg3d.engine.prediction.batch.iter_predict_files`, run in a napari
``thread_worker``; the engine writes every output atomically and reports each file's outcome, so a
failure or a cancel never leaves a partial output under its final name.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..engine import PLANES, ModelFileError, PredictConfig, Seg3DError, errors, read_volume
from ..engine.io import OME_ZARR_SUFFIX, SUFFIXES, pyramid_layers
from ..engine.prediction.batch import (
    FILE_DEFAULTS,
    FileProgress,
    FileResult,
    expand_inputs,
    output_paths,
)
from ..engine.prediction.jobs import BatchJob, run_batch_job
from . import _layers
from ._batch_instances import BatchInstances
from ._batch_progress import BatchProgress, file_progress_text, summary_text
from ._session import SESSION

MODEL_FILE = "Model file"
FORMATS = ("tif", "h5", "zarr", "ome-zarr")
_INPUT_FILTER = "Volumes (" + " ".join(f"*{s}" for s in SUFFIXES) + ");;All files (*)"


class BatchPredictWidget(QWidget):
    """Predict a list of files (or the matching files of folders) into an output folder.

    Attributes:
        worker: The running worker, None when idle.
        results: One :class:`FileResult` per file handled by the latest run, in order.
    """

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.worker = None
        self.results: list[FileResult] = []
        self._build()
        self._refresh_models()
        SESSION.changed.connect(self._refresh_models)
        self._set_busy(False)

    # --- public API ------------------------------------------------------------------------

    def set_inputs(self, paths: list[str | Path]) -> None:
        """Replace the inputs: files, ``file.h5:/key`` specs, or folders (searched with the
        pattern when the run starts)."""
        self._inputs.clear()
        self._inputs.addItems([str(p) for p in paths])

    def inputs(self) -> list[str]:
        """The listed inputs as entered (folders not yet expanded)."""
        return [self._inputs.item(i).text() for i in range(self._inputs.count())]

    def set_model_path(self, path: str | Path) -> None:
        """Use the model file at ``path``."""
        self._model_choice.setCurrentIndex(0)
        self._model_path.setText(str(path))

    def set_session_model(self, name: str) -> None:
        """Use the model ``name`` trained or loaded in this session."""
        self._refresh_models()
        index = self._model_choice.findText(name)
        if index <= 0:
            raise ValueError(f"No model {name!r} in this session; models: {SESSION.names()}.")
        self._model_choice.setCurrentIndex(index)

    def set_output_dir(self, path: str | Path) -> None:
        """Write the outputs into the folder ``path`` (created when the run starts)."""
        self._out_dir.setText(str(path))

    def set_options(self, *, fmt: str | None = None, overwrite: bool | None = None,
                    pattern: str | None = None, overlap: float | None = None,
                    tta: bool | None = None, planes: str | None = None,
                    forest: bool | None = None) -> None:
        """Set any of: output format (``"tif"``/``"h5"``/``"zarr"``/``"ome-zarr"``), overwrite
        existing outputs, the folder pattern, the window overlap, test-time augmentation, the
        planes of 2.5D models (``"fast"``, ``"three"``, ``"best"`` or ``"as trained"``), averaging
        in the model's random forest."""
        if fmt is not None:
            if fmt not in FORMATS:
                raise ValueError(f"Unknown format {fmt!r}; choose one of {', '.join(FORMATS)}.")
            self._format.setCurrentText(fmt)
        if overwrite is not None:
            self._overwrite.setChecked(overwrite)
        if pattern is not None:
            self._pattern.setText(pattern)
        if overlap is not None:
            self._overlap.setValue(overlap)
        if tta is not None:
            self._tta.setChecked(tta)
        if forest is not None:
            self._forest.setChecked(forest)
        if planes is not None:
            if self._planes.findText(planes) < 0:
                raise ValueError(f"Unknown planes {planes!r}; choose one of "
                                 f"{', '.join(PLANES)} or {_layers.AS_TRAINED!r}.")
            self._planes.setCurrentText(planes)

    def run(self) -> None:
        """Start predicting; errors in the form are shown as notifications."""
        if self.worker is not None:
            return
        try:
            job = self._job()
        except (Seg3DError, ValueError, OSError) as exc:
            show_error(str(exc))
            return
        self.results = []
        self._progress.reset(len(job.inputs))
        self._status.setText(f"Predicting {len(job.inputs)} file(s)...")
        worker = thread_worker(run_batch_job, start_thread=False)(job)
        worker.yielded.connect(self._on_yielded)
        worker.returned.connect(self._on_returned)
        worker.aborted.connect(self._on_aborted)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self._set_busy(True)
        worker.start()
        self._progress.start()

    def cancel(self) -> None:
        """Stop after the region being predicted; files already written are kept."""
        if self.worker is not None:
            self._status.setText("Cancelling...")
            self.worker.quit()

    def open_results(self, rows: list[int] | None = None) -> list[Any]:
        """Add the outputs of ``rows`` of the results table (default: the selected rows, or every
        row when none is selected) to the viewer as Labels layers; returns the new layers."""
        if rows is None:
            rows = self._progress.selected_rows() or list(range(len(self.results)))
        layers = []
        for result in (self.results[r] for r in rows if r < len(self.results)):
            if result.output is None or not Path(result.output).exists():
                continue
            try:
                layers += self._open_result(Path(result.output))
            except Seg3DError as exc:
                show_error(str(exc))
        if not layers:
            show_info("No result files to open: run a batch first, or select done rows.")
        return layers

    def _open_result(self, path: Path) -> list[Any]:
        """The Labels layer(s) of one output: the NGFF labels of an OME-Zarr output (lazy,
        multiscale), else the volume."""
        if path.name.lower().endswith(OME_ZARR_SUFFIX):
            name = path.name[:-len(OME_ZARR_SUFFIX)]  # a_labels.ome.zarr: "a_labels"
            return [self.viewer.add_labels(data, **{**kwargs, "name": name})
                    for data, kwargs, kind in pyramid_layers(path) if kind == "labels"]
        volume = read_volume(path)
        return [self.viewer.add_labels(volume.data, name=path.stem,
                                       scale=volume.voxel_size or (1.0, 1.0, 1.0),
                                       metadata={"path": str(path)})]

    # --- the form --------------------------------------------------------------------------

    def _build(self) -> None:
        self._inputs = QListWidget()
        self._inputs.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self._inputs.setToolTip("Files to predict; folders are searched with the pattern below.")
        self._pattern = QLineEdit("*.tif")
        self._pattern.setToolTip("Which files of a listed folder to predict, e.g. *.tif or *.h5")
        add_files, add_folder, remove = (QPushButton(t) for t in
                                         ("Add files...", "Add folder...", "Remove"))
        add_files.clicked.connect(self._browse_inputs)
        add_folder.clicked.connect(self._browse_folder)
        remove.clicked.connect(self._remove_selected_inputs)
        add_folder.setToolTip("A folder of volumes (searched with the pattern), or one image "
                              "that is a folder: a .zarr store or an .ome.zarr image.")

        self._model_choice = QComboBox()
        self._model_choice.currentIndexChanged.connect(self._on_model_choice)
        self._model_path = QLineEdit()
        self._model_path.setPlaceholderText("model file saved by napari-seg3d")
        browse_model = QPushButton("...")
        browse_model.clicked.connect(self._browse_model)
        self._browse_model_button = browse_model

        self._out_dir = QLineEdit()
        self._out_dir.setPlaceholderText("folder for <name>_labels.<format>")
        browse_out = QPushButton("...")
        browse_out.clicked.connect(self._browse_out_dir)
        self._format = QComboBox()
        self._format.addItems(FORMATS)
        self._format.setToolTip("h5, zarr and ome-zarr outputs are written block by block, so "
                                "volumes larger than memory work; tif is assembled in memory. "
                                "ome-zarr writes <name>_labels.ome.zarr: the image with the "
                                "segmentation as NGFF labels, with their pyramids.")
        self._overwrite = QCheckBox("Overwrite existing outputs")
        self._overwrite.setToolTip("Off: files whose output already exists are skipped.")
        self._overlap = QDoubleSpinBox()
        self._overlap.setRange(0.0, 0.9)
        self._overlap.setSingleStep(0.05)
        self._overlap.setValue(PredictConfig().overlap)
        self._tta = QCheckBox("Test-time augmentation (mirrored passes, 4x slower)")
        self._forest = QCheckBox("Average with the model's random forest")
        self._forest.setChecked(PredictConfig().forest)
        self._forest.setToolTip("Unticked: the network alone (predict --no-forest).")
        self._planes = _layers.planes_combo()
        self._instances = BatchInstances()  # <name>_instances.<format> (issue 15)

        self._run_button, self._cancel_button = QPushButton("Run"), QPushButton("Cancel")
        self._run_button.clicked.connect(self.run)
        self._cancel_button.clicked.connect(self.cancel)
        self._status = QLabel("Ready.")
        self._status.setWordWrap(True)
        self._progress = BatchProgress(self)
        self._table = self._progress.table
        open_button = QPushButton("Open selected results")
        open_button.setToolTip("Add the selected outputs (all when none is selected) as Labels.")
        open_button.clicked.connect(lambda: self.open_results())

        form = QFormLayout()
        form.addRow(_row(add_files, add_folder, remove))
        form.addRow(self._inputs)
        form.addRow("Folder pattern", self._pattern)
        form.addRow("Model", self._model_choice)
        form.addRow("", _row(self._model_path, browse_model))
        form.addRow("Output folder", _row(self._out_dir, browse_out))
        form.addRow("Format", self._format)
        form.addRow(self._overwrite)
        form.addRow("Window overlap", self._overlap)
        form.addRow(self._tta)
        form.addRow(self._forest)
        form.addRow("2.5D planes", self._planes)
        form.addRow(self._instances.row)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(_row(self._run_button, self._cancel_button))
        layout.addWidget(self._status)
        layout.addWidget(self._table)
        layout.addWidget(open_button)
        self._form_widgets = [self._inputs, self._pattern, add_files, add_folder, remove,
                              self._model_choice, self._model_path, browse_model, self._out_dir,
                              browse_out, self._format, self._overwrite, self._overlap, self._tta,
                              self._forest, self._planes, self._instances.row]

    def _job(self) -> BatchJob:
        inputs = expand_inputs(self.inputs(), self._pattern.text().strip() or "*")
        if not inputs:
            raise ValueError("No input files: add files, or a folder with files matching "
                             f"{self._pattern.text()!r}.")
        model, model_path = None, None
        if self._model_choice.currentIndex() > 0:
            model = SESSION.get(self._model_choice.currentText())
            if model is None:
                raise ValueError("The chosen session model is gone; choose another model.")
        else:
            text = self._model_path.text().strip()
            if not text:
                raise ModelFileError("No model chosen: choose a model file or a model trained "
                                     "in this session.")
            model_path = Path(text).expanduser()
        out_dir, outs = self._out_dir.text().strip(), None
        if out_dir:  # an output that would land on an input refuses the run before it starts
            outs = output_paths(Path(out_dir).expanduser(), inputs, self._format.currentText(),
                                model_file=model_path)
        config = replace(FILE_DEFAULTS, overlap=float(self._overlap.value()),
                         tta=self._tta.isChecked(), planes=_layers.planes_choice(self._planes),
                         forest=self._forest.isChecked())
        return BatchJob(inputs, model, model_path, writable_folder(out_dir),
                        self._format.currentText(), self._overwrite.isChecked(), config,
                        self._instances.choice(inputs, outs, model_path))

    def _set_busy(self, busy: bool) -> None:
        for widget in self._form_widgets:
            widget.setEnabled(not busy)
        self._run_button.setEnabled(not busy)
        self._cancel_button.setEnabled(busy)
        if not busy:
            self._on_model_choice()

    def _refresh_models(self, *_: object) -> None:
        try:
            current = self._model_choice.currentText()
            self._model_choice.blockSignals(True)
            self._model_choice.clear()
            self._model_choice.addItems([MODEL_FILE, *SESSION.names()])
            self._model_choice.setCurrentText(current or MODEL_FILE)
            self._model_choice.blockSignals(False)
            self._on_model_choice()
        except RuntimeError:  # the widget was deleted before the session signal was disconnected
            SESSION.changed.disconnect(self._refresh_models)

    def _on_model_choice(self, *_: object) -> None:
        from_file = self._model_choice.currentIndex() <= 0 and self.worker is None
        self._model_path.setEnabled(from_file)
        self._browse_model_button.setEnabled(from_file)

    # --- worker events ---------------------------------------------------------------------

    def _on_yielded(self, item: FileProgress | FileResult) -> None:
        if isinstance(item, FileProgress):
            self._progress.latest = item
            self._status.setText(file_progress_text(item))
        else:
            self.results.append(item)
            self._progress.add_result(item)

    def _on_returned(self, value: list[FileResult] | str | None) -> None:
        if isinstance(value, str):
            show_error(value)
            self._status.setText(value)
            return
        self._status.setText(summary_text(self.results))

    def _on_aborted(self) -> None:
        self._status.setText(f"Cancelled after {len(self.results)} file(s); outputs written so "
                             "far are complete, nothing partial was kept.")

    def _on_finished(self) -> None:
        self.worker = None
        self._set_busy(False)
        self._progress.finish()

    # --- file dialogs ----------------------------------------------------------------------

    def _browse_inputs(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(self, "Volumes to predict", "", _INPUT_FILTER)
        self._inputs.addItems(paths)

    def _browse_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder of volumes to predict")
        if folder:
            self._inputs.addItem(folder)

    def _remove_selected_inputs(self) -> None:
        for item in self._inputs.selectedItems():
            self._inputs.takeItem(self._inputs.row(item))

    def _browse_model(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Model file", "",
                                              "Models (*.pt *.pth *.zip *.yaml);;All files (*)")
        if path:
            self.set_model_path(path)

    def _browse_out_dir(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Output folder")
        if folder:
            self.set_output_dir(folder)


def writable_folder(text: str) -> Path:
    """The output folder, created if needed; raises a sentence if it cannot be written to."""
    if not text.strip():
        raise ValueError("No output folder: choose the folder the predictions go to.")
    return errors.writable_folder(text.strip())


def _row(*widgets: QWidget) -> QWidget:
    box = QWidget()
    layout = QHBoxLayout(box)
    layout.setContentsMargins(0, 0, 0, 0)
    for widget in widgets:
        layout.addWidget(widget)
    return box
