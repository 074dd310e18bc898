"""The runs that the Predict and Batch predict widgets hand to a worker thread, without Qt: what
each needs, read from the form once, and the generator the worker runs.

A :class:`PredictJob` streams the regions of one image (with their uncertainty map, and written
into :class:`.DiskStores` when the prediction is too large for memory); a :class:`BatchJob`
predicts files into a folder (see :func:`.batch.iter_predict_files`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import PredictConfig
from ..errors import ModelFileError, OutputError
from ..model_file import SegmentationModel, load_model
from .batch import FileProgress, FileResult, iter_predict_files
from .disk_stores import DiskStores
from .sliding_window import RegionDone
from .uncertainty import uncertainty_map

if TYPE_CHECKING:
    from .instance_files import InstancesChoice


@dataclass(frozen=True)
class PredictedRegion(RegionDone):
    """A :class:`RegionDone` with what a viewer shows of it.

    Attributes:
        uncertainty: ``(z, Y, X)`` float32 in [0, 1] (1 = least sure), or None when not asked for.
    """

    uncertainty: np.ndarray | None = None


@dataclass(frozen=True)
class Finishing:
    """Yielded by :meth:`PredictJob.run` before it finishes its stores in the worker (an
    OME-Zarr's image copy and pyramids, which take long on a large volume).

    Attributes:
        path: where the labels store is being finished (its temporary name).
        partial: whether the prediction stopped before the end (cancelled or failed).
    """

    path: Path
    partial: bool


def with_outputs(region: RegionDone, *, probabilities: bool, uncertainty: bool) -> PredictedRegion:
    """``region`` with its uncertainty map computed (in the worker thread, off the event loop)
    and its probabilities kept only when they are shown."""
    values = {f.name: getattr(region, f.name) for f in fields(region)}
    probs = values["probabilities"]
    if uncertainty and probs is not None:
        values["uncertainty"] = uncertainty_map(probs)
    if not probabilities:
        values["probabilities"] = None
    return PredictedRegion(**values)


class PredictJob:
    """One prediction of an image; :meth:`run` is the worker's generator.

    Args:
        model: The model to apply (not changed, see :meth:`.SegmentationModel.network_for`).
        image: ``(Z, Y, X)`` or ``(C, Z, Y, X)`` array-like.
        config: How to predict; ``probabilities`` and ``uncertainty`` say what the regions carry.
        stores: Where a prediction too large for memory is written, or None (regions carry
            their values to the viewer).
        first_region: ``(z, y, x)`` slices predicted first (the slice on screen), or None.

    Attributes:
        cancelled: Set it to stop at the next region.
        error: Why the run failed, in a sentence (set by the front end that shows it).
        windows_done, windows_total: Progress, updated by the front end from the regions.
    """

    def __init__(self, model: SegmentationModel, image: Any, config: PredictConfig,
                 stores: DiskStores | None = None, first_region=None) -> None:
        self.model, self.image, self.config, self.stores = model, image, config, stores
        self.first_region = first_region
        self.inner = None
        self.cancelled = False
        self.error: str | None = None
        self.windows_done = self.windows_total = 0

    @property
    def complete(self) -> bool:
        """Every window was predicted and nothing failed (the stores' last step included)."""
        return (self.windows_total > 0 and self.windows_done == self.windows_total
                and self.error is None)

    def run(self) -> Generator[PredictedRegion | Finishing, None, str]:
        """Yields a :class:`PredictedRegion` per finished region (without its values when they
        were written to the stores), then a :class:`Finishing` when the stores have work left;
        returns ``"done"`` or ``"cancelled"``. Errors propagate, once the stores hold the part
        done: every slow step runs here, in the worker, never in the GUI thread."""
        try:
            finished = yield from self._regions()
        except Exception:
            self.close()
            yield from self._finish(partial=True)  # the part done, then the error
            raise
        finally:
            self.close()
        yield from self._finish(partial=not finished)
        return "done" if finished else "cancelled"

    def _regions(self) -> Generator[PredictedRegion, None, bool]:
        """The regions, written into the stores; returns False when cancelled."""
        self.inner = self.model.iter_predict(self.image, self.config,
                                              first_region=self.first_region)
        for region in self.inner:
            region = with_outputs(region, probabilities=self.config.probabilities,
                                  uncertainty=self.config.uncertainty)
            if self.stores is not None:  # written here; the GUI thread only redraws
                self.stores.write(region)
                region = dataclasses.replace(region, probabilities=None, uncertainty=None)
            yield region
            if self.cancelled:
                return False
        return True

    def _finish(self, partial: bool) -> Generator[Finishing, None, None]:
        """Finish the stores (an OME-Zarr copies its image and builds its pyramids): a failure
        of a complete prediction propagates, that of a partial one is kept for
        :meth:`.DiskStores.publish` to report."""
        stores = self.stores
        if stores is None or not stores.unfinished:
            return
        yield Finishing(Path(stores.where["labels"]), partial)
        if partial:
            stores.finish_partial()
        else:
            stores.finish()

    def close(self) -> None:
        """End the sliding window (idempotent; call only while the worker is not running it)."""
        if self.inner is not None:
            self.inner.close()


@dataclass(frozen=True)
class BatchJob:
    """Everything a *Batch predict* run needs, read from the form once when *Run* is pressed.

    ``model`` is a model of the session, else ``model_path`` is loaded by the worker.
    ``config.planes`` applies to 2D (2.5D) models; a 3D model predicts with ``planes=None``.
    """

    inputs: list[str]
    model: SegmentationModel | None
    model_path: Path | None
    out_dir: Path
    fmt: str
    overwrite: bool
    config: PredictConfig
    instances: InstancesChoice | None = None  # also <name>_instances.<fmt> of one class


def run_batch_job(job: BatchJob,
                  ) -> Generator[FileProgress | FileResult, None, list[FileResult] | str]:
    """The worker body: load the model, then predict file by file. Returns the list of
    :class:`FileResult`, or the sentence of an error that stopped the whole run."""
    try:
        model = job.model if job.model is not None else load_model(job.model_path)
    except ModelFileError as exc:
        return str(exc)
    config = job.config if model.dims == 2 else dataclasses.replace(job.config, planes=None)
    try:  # instances of a class the model has
        add_instances = job.instances and job.instances.stage(model, job.out_dir, job.inputs)
    except ValueError as exc:
        return str(exc)
    try:
        gen = iter_predict_files(model, job.inputs, job.out_dir, config, fmt=job.fmt,
                                 overwrite=job.overwrite, model_file=job.model_path)
        return (yield from (add_instances(gen) if add_instances else gen))
    except OutputError as exc:  # an output would land on an input: nothing was written
        return str(exc)
