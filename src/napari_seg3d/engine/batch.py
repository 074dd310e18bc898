"""Prediction of many files: one file's failure never stops the rest, outputs are written
atomically inside the output folder, inputs are opened read-only."""

from __future__ import annotations

import logging
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import Seg3DError
from .io import HDF5_SUFFIXES, output_path, read_volume, split_path, write_volume
from .model_file import SegmentationModel
from .uncertainty import uncertainty_map

log = logging.getLogger(__name__)


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


def _predict_one(model, spec, out, *, voxel_size_default, index, total, probabilities=False,
                 uncertainty=False, **opts):
    vol = read_volume(spec)
    labels = probs = unc = None
    shape = vol.data.shape[-3:]
    for r in model.iter_predict(vol.data, probabilities=probabilities or uncertainty, **opts):
        if labels is None:
            labels = np.zeros(shape, r.labels.dtype)
            if probabilities:
                probs = np.zeros((r.probabilities.shape[0],) + shape, np.float32)
            if uncertainty:
                unc = np.zeros(shape, np.float32)
        labels[r.slices] = r.labels
        if probs is not None:
            probs[(slice(None),) + r.slices] = r.probabilities
        if unc is not None:
            unc[r.slices] = uncertainty_map(r.probabilities)
        yield FileProgress(index, total, str(spec), r.windows_done, r.windows_total)
    voxel = vol.voxel_size or voxel_size_default
    # the labels last: an existing labels file (which skips the input) has its companions
    if probs is not None:
        write_volume(_beside(out, "probabilities"), probs, voxel_size=voxel)
    if unc is not None:
        write_volume(_beside(out, "uncertainty", key="/uncertainty"), unc, voxel_size=voxel)
    write_volume(out, labels, voxel_size=voxel)


def _beside(out: Path, what: str, key: str = "") -> str:
    """``<stem>_<what>.<ext>`` for the labels output ``<stem>_labels.<ext>``; ``key`` names the
    dataset of an HDF5 file."""
    head, _, tail = out.name.rpartition("_labels")
    path = str(out.with_name(f"{head}_{what}{tail}"))
    return f"{path}:{key}" if key and out.suffix.lower() in HDF5_SUFFIXES else path


def iter_predict_files(model: SegmentationModel, inputs: Sequence[str | Path], out_dir: str | Path,
                       *, fmt: str = "tif", overwrite: bool = False, **predict_options,
                       ) -> Generator[FileProgress | FileResult, None, list[FileResult]]:
    """Predict each input into ``out_dir/<stem>_labels.<fmt>``, yielding progress within each file
    and one :class:`FileResult` per file; returns all results.

    Args:
        model: the model to apply.
        inputs: TIFF, HDF5 (``file.h5`` or ``file.h5:/key``) or ``.npy`` volumes.
        out_dir: output folder (created if missing); nothing is written outside it.
        fmt: ``"tif"``, ``"h5"`` or ``"npy"``.
        overwrite: replace existing outputs; otherwise they are skipped.
        predict_options: passed to :meth:`SegmentationModel.iter_predict` (overlap, tta, ...);
            ``probabilities=True`` also writes ``<stem>_probabilities.<fmt>``, ``uncertainty=True``
            ``<stem>_uncertainty.<fmt>`` (see :func:`uncertainty_map`; HDF5 key ``/uncertainty``).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: list[FileResult] = []
    total = len(inputs)
    used: set[Path] = set()
    for index, spec in enumerate(inputs):
        t0 = time.perf_counter()
        out = output_path(out_dir, spec, fmt)
        if out in used:  # two inputs with the same stem: keep both outputs
            out = out.with_name(f"{out.stem}_{index}{out.suffix}")
        used.add(out)
        if out.exists() and not overwrite:
            result = FileResult(index, total, str(spec), out, "skipped", "output exists")
        else:
            try:
                yield from _predict_one(model, spec, out, voxel_size_default=model.voxel_size,
                                        index=index, total=total, **predict_options)
                result = FileResult(index, total, str(spec), out, "done",
                                    seconds=time.perf_counter() - t0)
            except (Seg3DError, ValueError, OSError) as e:
                log.warning("%s failed: %s", spec, e)
                result = FileResult(index, total, str(spec), None, "failed", _reason(e))
            except MemoryError:
                result = FileResult(index, total, str(spec), None, "failed",
                                    "not enough memory for this volume")
        results.append(result)
        yield result
    return results


def _reason(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def predict_files(model: SegmentationModel, inputs, out_dir, **kwargs) -> list[FileResult]:
    """:func:`iter_predict_files` run to the end; returns one :class:`FileResult` per input."""
    gen = iter_predict_files(model, inputs, out_dir, **kwargs)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def expand_inputs(paths: Sequence[str | Path], pattern: str = "*") -> list[str]:
    """Files named directly, plus the readable files matching ``pattern`` in named folders."""
    from .io import SUFFIXES

    out: list[str] = []
    for p in paths:
        path = Path(split_path(p)[0])
        if path.is_dir():
            out += sorted(str(f) for f in path.glob(pattern)
                          if f.is_file() and f.suffix.lower() in SUFFIXES)
        else:
            out.append(str(p))
    return out
