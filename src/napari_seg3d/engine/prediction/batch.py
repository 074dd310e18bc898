"""Prediction of many files: one file's failure never stops the rest, outputs are written
atomically inside the output folder, inputs are opened read-only and never written over (see
:mod:`.output_names` for the names of the outputs)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import PredictConfig, predict_config
from ..errors import Seg3DError, writable_folder
from ..generators import run_to_end, tapped
from ..io import ChunkedWriter, read_volume, split_path
from ..io._folders import missing_folders, remove_empty
from ..io._ome_zarr_out import OME_ZARR_SUFFIX, OmeZarrWriter
from ..model_file import SegmentationModel
from .blocks import DEFAULT_BLOCK_SHAPE
from .output_names import beside, output_files, plan_outputs, record_outputs, written_here
from .output_space import WHAT, check_output_space
from .uncertainty import uncertainty_map

log = logging.getLogger(__name__)

#: What files are predicted with by default: blocks of :data:`.DEFAULT_BLOCK_SHAPE`, so a volume
#: larger than memory can be predicted.
FILE_DEFAULTS = PredictConfig(block_shape=DEFAULT_BLOCK_SHAPE)


@dataclass(frozen=True)
class FileProgress:
    """Progress inside file ``index`` (0-based) of ``total``."""

    index: int
    total: int
    input: str
    windows_done: int
    windows_total: int


@dataclass(frozen=True)
class FileResult:
    """The outcome of one file: ``status`` is ``"done"``, ``"skipped"`` or ``"failed"``."""

    index: int
    total: int
    input: str
    output: Path | None
    status: str
    reason: str = ""
    seconds: float = 0.0


def _predict_one(model: SegmentationModel, spec, out: Path, config: PredictConfig, *,
                 index: int, total: int) -> Generator[FileProgress, None, None]:
    """Predict one file block by block, writing each block as it is done (never the volume in
    memory unless the output is TIFF, which cannot be written in parts)."""
    with read_volume(spec, lazy=True) as vol, contextlib.ExitStack() as stack:
        shape = tuple(vol.data.shape[-3:])
        check_output_space(model, out, shape, config.probabilities, config.uncertainty)  # first
        outputs = FileOutputs(out, shape, vol.voxel_size or model.voxel_size, config.probabilities,
                              config.uncertainty, stack,
                              image=vol.data, classes=dict(zip(model.class_values,
                                                               model.class_names)))
        for r in model.iter_predict(vol.data, config):
            outputs.add(r)
            yield FileProgress(index, total, str(spec), r.windows_done, r.windows_total)
        outputs.commit()


class FileOutputs:
    """The labels (and optional probabilities and uncertainty) of one input, written block by
    block: a block's z-slabs are gathered and written in one piece when the block is done."""

    def __init__(self, out: Path, shape, voxel, probabilities: bool, uncertainty: bool,
                 stack: contextlib.ExitStack, *, image: Any = None,
                 classes: dict[int, str] | None = None) -> None:
        self.out, self.shape, self.voxel, self.stack = out, tuple(shape), voxel, stack
        self.image, self.classes = image, classes  # what an OME-Zarr output holds beside
        self.want_probs, self.want_unc = probabilities, uncertainty
        self.writers: dict[str, ChunkedWriter] = {}
        self.pending: list = []

    def add(self, region) -> None:
        if not self.writers:
            self._open(region)
        if self.pending and self.pending[-1].block != region.block:
            self._flush()
        self.pending.append(region)

    def commit(self) -> None:
        """Publish the outputs once all are written (a full disk fails before any is moved),
        the labels last: an existing labels file (which skips the input) has its companions."""
        self._flush()
        names = [n for n in ("probabilities", "uncertainty", "labels") if n in self.writers]
        for name in names:
            self.writers[name].finish()
        for name in names:
            self.writers[name].publish()

    def _open(self, region) -> None:
        def writer(spec, shape, dtype, role):
            return self.stack.enter_context(
                ChunkedWriter(spec, shape, dtype, voxel_size=self.voxel, what=WHAT[role]))

        if self.want_probs:
            k = region.probabilities.shape[0]
            self.writers["probabilities"] = writer(beside(self.out, "probabilities"),
                                                   (k, *self.shape), np.float32, "probabilities")
        if self.want_unc:
            self.writers["uncertainty"] = writer(beside(self.out, "uncertainty", "/uncertainty"),
                                                 self.shape, np.float32, "uncertainty")
        if self.out.name.lower().endswith(OME_ZARR_SUFFIX):  # the image and its NGFF labels
            self.writers["labels"] = self.stack.enter_context(OmeZarrWriter(
                self.out, self.shape, region.labels.dtype, voxel_size=self.voxel,
                image=self.image, classes=self.classes, what=WHAT["labels"]))
        else:
            self.writers["labels"] = writer(self.out, self.shape, region.labels.dtype, "labels")

    def _flush(self) -> None:
        if not self.pending:
            return
        first, last = self.pending[0].slices, self.pending[-1].slices
        where = (slice(first[0].start, last[0].stop), *first[1:])
        self.writers["labels"].write(where, np.concatenate([r.labels for r in self.pending]))
        if self.want_probs or self.want_unc:
            probs = np.concatenate([r.probabilities for r in self.pending], axis=1)
            if self.want_probs:
                self.writers["probabilities"].write((slice(None), *where), probs)
            if self.want_unc:
                self.writers["uncertainty"].write(where, uncertainty_map(probs))
        self.pending = []


def iter_predict_files(model: SegmentationModel, inputs: Sequence[str | Path], out_dir: str | Path,
                       config: PredictConfig | None = None, *, fmt: str = "tif",
                       overwrite: bool = False, model_file: str | Path | None = None,
                       **overrides: Any,
                       ) -> Generator[FileProgress | FileResult, None, list[FileResult]]:
    """Predict each input into ``out_dir/<stem>_labels.<fmt>``, yielding progress within each file
    and one :class:`FileResult` per file; returns all results.

    Nothing is written over an input: when an output would land on one (or on ``model_file``),
    the first ``next()`` raises an :class:`.OutputError` before anything is written. An input
    named twice is predicted once (the second is ``"skipped"``).

    Args:
        model: the model to apply.
        inputs: TIFF, HDF5 (``file.h5`` or ``file.h5:/key``) or ``.npy`` volumes.
        out_dir: output folder (created if missing); nothing is written outside it.
        config: how to predict (default :data:`FILE_DEFAULTS`: blocks of
            :data:`.DEFAULT_BLOCK_SHAPE`); ``probabilities=True`` also writes
            ``<stem>_probabilities.<fmt>``, ``uncertainty=True`` ``<stem>_uncertainty.<fmt>``
            (see :func:`uncertainty_map`; HDF5 key ``/uncertainty``).
        fmt: ``"tif"``, ``"h5"``, ``"zarr"``, ``"npy"`` or ``"ome-zarr"``. All but TIFF are
            written block by block, so neither the input nor the output needs to fit in memory;
            ``"ome-zarr"`` writes ``<stem>_labels.ome.zarr``, the image with the labels as NGFF
            labels ``labels/segmentation`` (see :class:`.OmeZarrWriter`).
        overwrite: replace existing outputs; otherwise they are skipped.
        model_file: the file ``model`` was loaded from, never to be written over.
        **overrides: fields of :class:`.PredictConfig` replacing those of ``config``.
    """
    config = predict_config(FILE_DEFAULTS if config is None else config, **overrides)
    model.check_config(config)
    created = missing_folders(out_dir)  # removed at the end if nothing was written there
    try:
        out_dir = writable_folder(Path(out_dir))
        outs = output_paths(out_dir, inputs, fmt, model_file=model_file,
                            probabilities=config.probabilities, uncertainty=config.uncertainty)
        return (yield from record_done(_predict_each(model, inputs, outs, overwrite, config),
                                       out_dir, inputs, probabilities=config.probabilities,
                                       uncertainty=config.uncertainty))
    finally:
        remove_empty(created)


def _predict_each(model, inputs, outs, overwrite, config):
    results: list[FileResult] = []
    total, first = len(inputs), {}
    for index, (spec, out) in enumerate(zip(inputs, outs)):
        if out in first:
            result = FileResult(index, total, str(spec), None, "skipped",
                                f"named twice: the same file as {inputs[first[out]]}")
        else:
            first[out] = index
            result = yield from iter_predict_file(model, spec, out, config, index=index,
                                                  total=total, overwrite=overwrite)
        results.append(result)
        yield result
    return results


def output_paths(out_dir: str | Path, inputs: Sequence[str | Path], fmt: str, *,
                 model_file: str | Path | None = None, probabilities: bool = False,
                 uncertainty: bool = False) -> list[Path]:
    """The output of each input (see :mod:`.output_names`): ``<stem>_labels.<fmt>``, or for
    inputs of the same name from different folders ``<stem>_labels_<folder>.<fmt>``; an input
    keeps the name recorded for it in ``out_dir``. Raises an :class:`.OutputError` when an
    output would be written over an input or ``model_file``."""
    return plan_outputs(out_dir, inputs, fmt, probabilities=probabilities,
                        uncertainty=uncertainty, model_file=model_file)


def record_done(gen, out_dir: Path, inputs: Sequence[str | Path], *, probabilities: bool = False,
                uncertainty: bool = False):
    """Pass on what ``gen`` yields and returns, recording in ``out_dir`` (see
    :func:`.output_names.record_outputs`) the outputs of each file done."""
    def record(item) -> None:
        if isinstance(item, FileResult) and item.status == "done" and item.output is not None:
            record_outputs(out_dir, inputs[item.index],
                           output_files(item.output, probabilities, uncertainty))

    try:
        return (yield from tapped(gen, record))
    finally:
        gen.close()  # a cancel (close) reaches the file being written at once


def iter_predict_file(model: SegmentationModel, spec: str | Path, out: Path, config: PredictConfig,
                      *, index: int = 0, total: int = 1, overwrite: bool = False,
                      ) -> Generator[FileProgress, None, FileResult]:
    """Predict one input into ``out`` (see :func:`iter_predict_files`), yielding progress;
    returns its :class:`FileResult`. A failure of the file is the result, not an exception."""
    t0 = time.perf_counter()
    if out.exists() and not overwrite:
        return FileResult(index, total, str(spec), out, "skipped", "output exists")
    try:
        yield from _predict_one(model, spec, out, config, index=index, total=total)
        return FileResult(index, total, str(spec), out, "done", seconds=time.perf_counter() - t0)
    except (Seg3DError, ValueError, OSError) as e:
        log.warning("%s failed: %s", spec, e)
        return FileResult(index, total, str(spec), None, "failed", failure_reason(e))
    except MemoryError:
        return FileResult(index, total, str(spec), None, "failed",
                          "not enough memory for this volume")


def failure_reason(e: BaseException) -> str:
    """The first line of an error's message (its type when it has none)."""
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def predict_files(model: SegmentationModel, inputs: Sequence[str | Path], out_dir: str | Path,
                  config: PredictConfig | None = None, **kwargs: Any) -> list[FileResult]:
    """:func:`iter_predict_files` run to the end; returns one :class:`FileResult` per input.

    Example:
        >>> results = predict_files(model, ["a.tif", "b.h5:/raw"], "out",  # doctest: +SKIP
        ...                         PredictConfig(device="cpu"), fmt="h5")
        >>> [r.status for r in results]  # doctest: +SKIP
        ['done', 'done']
    """
    return run_to_end(iter_predict_files(model, inputs, out_dir, config, **kwargs))


def expand_inputs(paths: Sequence[str | Path], pattern: str = "*") -> list[str]:
    """Files named directly, plus the readable files matching ``pattern`` in named folders,
    except the outputs this tool wrote there (see :func:`.output_names.written_here`)."""
    from ..io import SUFFIXES, ZARR_SUFFIXES

    out: list[str] = []
    for p in paths:
        path = Path(split_path(p)[0])
        if path.is_dir() and path.suffix.lower() not in ZARR_SUFFIXES:
            ours = written_here(path)
            out += sorted(str(f) for f in path.glob(pattern) if f.suffix.lower() in SUFFIXES
                          and (f.is_file() or f.suffix.lower() in ZARR_SUFFIXES)
                          and not (f.parent == path and f.name in ours))
        else:
            out.append(str(p))
    return out
