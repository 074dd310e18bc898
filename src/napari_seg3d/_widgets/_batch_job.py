"""What one *Batch predict* run needs, read from the form once, and the worker body that runs it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..engine import ModelFileError, SegmentationModel, errors, load_model
from ..engine.prediction.batch import iter_predict_files
from ._batch_instances import InstancesChoice


@dataclass(frozen=True)
class BatchJob:
    """Everything a run needs, read from the form once when *Run* is pressed."""

    inputs: list[str]
    model: SegmentationModel | None
    model_path: Path | None
    out_dir: Path
    fmt: str
    overwrite: bool
    overlap: float
    tta: bool
    planes: str | None = None  # 2D (2.5D) models: fast, three or best; None: as trained
    instances: InstancesChoice | None = None  # <name>_instances.<fmt> too (issue 15)


def run_batch_job(job: BatchJob):
    """The worker body: load the model, then predict file by file. Returns the list of
    :class:`FileResult`, or the sentence of an error that stopped the whole run."""
    try:
        model = job.model if job.model is not None else load_model(job.model_path)
    except ModelFileError as exc:
        return str(exc)
    planes = job.planes if model.dims == 2 else None  # 3D networks have no planes
    try:  # issue 15: instances of a class the model has
        add_instances = job.instances and job.instances.stage(model, job.out_dir, job.inputs)
    except ValueError as exc:
        return str(exc)
    try:
        gen = iter_predict_files(model, job.inputs, job.out_dir, fmt=job.fmt,
                                 overwrite=job.overwrite, overlap=job.overlap, tta=job.tta,
                                 planes=planes, model_file=job.model_path)
        return (yield from (add_instances(gen) if add_instances else gen))
    except errors.OutputError as exc:  # an output would land on an input: nothing was written
        return str(exc)


def writable_folder(text: str) -> Path:
    """The output folder, created if needed; raises a sentence if it cannot be written to."""
    if not text.strip():
        raise ValueError("No output folder: choose the folder the predictions go to.")
    return errors.writable_folder(text.strip())
