"""Instances of predicted files: ``<stem>_instances.<ext>`` beside each ``<stem>_labels.<ext>``
(``<stem>_instances.zarr`` beside an ``.ome.zarr``, from its NGFF labels).

``napari-seg3d predict --instances CLASS`` and *Batch predict* wrap the file predictions of
:func:`.batch.iter_predict_files` in :func:`with_instances`: when a file's labels are written,
its labels (and, for the ``"probability"`` method, its probabilities) are read back, turned into
instances of the class (:func:`.instances.instances`) and written atomically, in the labels'
format, with their voxel size (HDF5: the dataset ``/instances``). The volume must fit the
in-memory limit :data:`.instances.MAX_VOXELS`; above it, or on any other failure, the file is
reported ``"failed"`` with the reason, and its labels stay written.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import Seg3DError
from ..io import OME_ZARR_SUFFIX, ChunkedWriter, read_volume
from ..io._ome_zarr import read_labels
from ..io._ome_zarr_out import LABELS_NAME
from ..io.no_overwrite import ReadFiles, refuse_writing_over
from .batch import FileResult
from .instances import MAX_VOXELS, check_size, instances
from .output_names import beside, record_outputs

log = logging.getLogger(__name__)

#: the methods a user chooses from: name -> :func:`.instances.instances` keywords
METHODS = {
    "auto": {"method": "watershed", "seeds": "auto"},
    "distance": {"method": "watershed", "seeds": "distance"},
    "probability": {"method": "watershed", "seeds": "probability"},
    "components": {"method": "components"},
}


@dataclass(frozen=True)
class InstanceConfig:
    """How to turn one class of a prediction into instances.

    Attributes:
        class_value: the label value of the class (see :func:`class_value_of`).
        class_index: its channel in the model's probabilities.
        method: ``"auto"`` (the default: the distance watershed, or on elongated objects
            the one on the smoothed class map; see :func:`.instances.choose_seeds`),
            ``"distance"`` (watershed on the distance transform), ``"probability"`` (watershed
            on the class probability) or ``"components"`` (connected components).
        min_size: objects of fewer voxels are removed.
        diameter: typical object diameter in physical units; None: estimated.
        max_voxels: larger volumes are refused.
    """

    class_value: int
    class_index: int = 0
    method: str = "auto"
    min_size: int = 0
    diameter: float | None = None
    max_voxels: int = MAX_VOXELS

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"Unknown instance method {self.method!r}; choose one of "
                             f"{', '.join(METHODS)}.")
        if self.min_size < 0:
            raise ValueError(f"The minimum object size must be 0 or more voxels, got "
                             f"{self.min_size}.")
        if self.diameter is not None and not self.diameter > 0:
            raise ValueError(f"The object diameter must be positive, got {self.diameter}.")

    @property
    def needs_probability(self) -> bool:
        """Whether the method reads the class probability."""
        return self.method == "probability"

    def apply(self, labels: np.ndarray, probability: np.ndarray | None = None,
              voxel_size=None) -> np.ndarray:
        """Instance ids of the class in ``labels`` ``(Z, Y, X)`` (see
        :func:`.instances.instances`); ``probability`` ``(Z, Y, X)`` of the class."""
        return instances(labels, class_value=self.class_value, probability=probability,
                         voxel_size=voxel_size, diameter=self.diameter, min_size=self.min_size,
                         max_voxels=self.max_voxels, **METHODS[self.method])


def class_value_of(class_values: Sequence[int], class_names: Sequence[str],
                   text: str | int) -> tuple[int, int]:
    """``(value, index)`` of the class named by ``text``: its label value (``"2"``) or its name
    (``"nucleus"``, any case).

    Raises:
        ValueError: no class of the model has that value or name (the sentence lists them).
    """
    text = str(text).strip()
    for index, (value, name) in enumerate(zip(class_values, class_names)):
        if text == str(value) or text.casefold() == str(name).casefold():
            return int(value), index
    choices = ", ".join(f"{v} ({n})" for v, n in zip(class_values, class_names))
    raise ValueError(f"The model has no class {text!r}; choose one of its classes by value or "
                     f"name: {choices}.")


def class_probability(probabilities, index: int) -> np.ndarray:
    """The ``(Z, Y, X)`` probability of class ``index`` in ``(K, Z, Y, X)`` probabilities (a
    one-output sigmoid model: ``p`` for class 1, ``1 - p`` for class 0); only that channel is
    read from an array on disk."""
    if probabilities.shape[0] == 1:
        p = np.asarray(probabilities[0], np.float32)
        return p if index == 1 else 1.0 - p
    return np.asarray(probabilities[index], np.float32)


def instances_spec(labels_out: Path) -> str:
    """``<stem>_instances.<ext>`` beside the labels output (HDF5: ``...h5:/instances``)."""
    return beside(Path(labels_out), "instances", "/instances")


def refuse_over_inputs(inputs: Sequence, outs: Sequence[Path], model_file=None) -> None:
    """Raise an :class:`.OutputError` when an instances output would be written over an input
    or the model file."""
    read = ReadFiles({f"the input {spec}": spec for spec in inputs})
    if model_file is not None:
        read.add(f"the model file {model_file}", model_file)
    written = [(f"the instances {instances_spec(out)} of {spec}", instances_spec(out), True)
               for spec, out in zip(inputs, outs)]
    refuse_writing_over(read, written, "choose another output folder")


def write_instances(labels_out: Path, config: InstanceConfig, voxel_default=None) -> str:
    """Read the labels output ``labels_out`` (and its probabilities for the ``"probability"``
    method), write its instances beside it; returns what was written.

    Raises:
        Seg3DError, ValueError, OSError: the volume is too large, a file is missing or cannot
            be written (the sentence says which).
    """
    labels, voxel = _read_labels(Path(labels_out), config.max_voxels)
    voxel = voxel or voxel_default
    probability = None
    if config.needs_probability:
        with read_volume(beside(Path(labels_out), "probabilities"), lazy=True) as probs:
            probability = class_probability(probs.data, config.class_index)
    ids = config.apply(labels, probability, voxel)
    spec = instances_spec(labels_out)
    with ChunkedWriter(spec, ids.shape, ids.dtype, voxel_size=voxel) as writer:
        writer.write((slice(None),) * ids.ndim, ids)
        writer.commit()
    log.info("%s: %d instances", spec, int(ids.max(initial=0)))
    return spec


def _read_labels(labels_out: Path, max_voxels: int) -> tuple[np.ndarray, tuple | None]:
    """The labels ``(Z, Y, X)`` of an output and their voxel size: the NGFF labels of an
    ``.ome.zarr`` output (its one channel beside a channel image), else the volume."""
    if labels_out.name.lower().endswith(OME_ZARR_SUFFIX):
        array, voxel = read_labels(labels_out, LABELS_NAME)
        check_size(array.shape[-3:], max_voxels)
        return np.asarray(array[0] if array.ndim == 4 else array[...]), voxel
    with read_volume(labels_out, lazy=True) as vol:
        check_size(vol.data.shape, max_voxels)
        return np.asarray(vol.data), vol.voxel_size


def with_instances(gen: Generator, config: InstanceConfig, out_dir: str | Path,
                   inputs: Sequence, voxel_default=None) -> Generator:
    """Pass on what a file prediction ``gen`` yields and returns, writing the instances of each
    file done before its :class:`FileResult` is passed on (recorded in ``out_dir`` with the
    outputs, see :func:`.output_names.record_outputs`). A file whose instances fail is passed
    on ``"failed"``, with the reason; its labels stay written."""
    changed: dict[int, FileResult] = {}
    try:
        while True:
            try:
                item = next(gen)
            except StopIteration as stop:
                results = stop.value
                break
            if isinstance(item, FileResult) and item.status == "done" and item.output:
                item = _add_instances(item, config, Path(out_dir), inputs, voxel_default)
                changed[item.index] = item
            yield item
    finally:
        gen.close()
    if results is None:
        return None
    return [changed.get(r.index, r) if r.status == "done" else r for r in results]


def _add_instances(item: FileResult, config: InstanceConfig, out_dir: Path, inputs,
                   voxel_default) -> FileResult:
    try:
        spec = write_instances(item.output, config, voxel_default)
    except (Seg3DError, ValueError, OSError, MemoryError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if isinstance(e, MemoryError):
            reason = "not enough memory for its instances"
        log.warning("%s: instances failed: %s", item.input, reason)
        return replace(item, status="failed", output=None,
                       reason=f"labels written to {item.output}, but no instances: {reason}")
    record_outputs(out_dir, inputs[item.index], [("instances", spec)])
    return item


@dataclass(frozen=True)
class InstancesChoice:
    """The option as the form set it, read once when *Run* is pressed.

    Attributes:
        class_text: the class, by label value or name (resolved against the model).
        method: ``"auto"``, ``"distance"`` or ``"components"``.
        min_size: objects of fewer voxels are removed.
    """

    class_text: str
    method: str = "auto"
    min_size: int = 0

    def stage(self, model, out_dir: Path, inputs: Sequence[str],
              ) -> Callable[[Generator], Generator]:
        """What wraps the file predictions of ``model`` to also write their instances.

        Raises:
            ValueError: the model has no such class (the sentence lists its classes).
        """
        value, index = class_value_of(model.class_values, model.class_names, self.class_text)
        config = InstanceConfig(value, index, method=self.method, min_size=self.min_size)
        return lambda gen: with_instances(gen, config, out_dir, inputs, model.voxel_size)
