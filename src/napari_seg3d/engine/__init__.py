"""The headless engine: torch, numpy and file libraries only, never Qt or napari.

Data flows one way: arrays or files -> engine -> results. Long work is a generator that yields
small frozen dataclasses (:class:`TrainProgress`, :class:`RegionDone`, :class:`FileResult`);
:func:`run_to_end` drives one to its end, :func:`train` and :func:`predict_files` do it for you.
Everything a script needs is importable from here (see ``docs/python.md``)::

    from napari_seg3d.engine import (PredictConfig, TrainConfig, load_model, read_volume,
                                     save_model, train, write_volume)

    image = read_volume("image.tif").data
    scribbles = read_volume("scribbles.tif").data
    result = train(image, scribbles, settings={"iterations": 200})  # planned as the CLI does
    save_model(result.best, "model.pt")
    model = load_model("model.pt")
    write_volume("labels.tif", model.predict(image, PredictConfig(overlap=0.5)))

The parts live in subpackages: :mod:`.io` (volumes on disk), :mod:`.models` (networks),
:mod:`.training`, :mod:`.prediction`; :mod:`.plan` chooses the settings of a run.
"""

from .api import train
from .config import DEVICES, LOSSES, PLANES, ModelConfig, PredictConfig, TrainConfig
from .devices import resolve_device
from .errors import AnnotationError, ModelFileError, OutputError, Seg3DError, VolumeError
from .generators import run_to_end
from .io import Volume, read_volume, write_volume
from .model_file import SegmentationModel, load_model, save_model
from .model_info import describe
from .models import MODELS, SliceNetwork, UNet, build_model
from .normalization import Normalization, compute_normalization
from .plan import (
                   TrainingPlan,
                   default_batch_size,
                   default_model_config,
                   plan_training,
                   propose_patch_size,
)
from .prediction.batch import FileProgress, FileResult, iter_predict_files, predict_files
from .prediction.sliding_window import RegionDone, iter_predict_volume, predict_volume
from .prediction.uncertainty import uncertainty_map
from .training.progress import Preview, TrainerUpdate, TrainProgress, TrainResult
from .training.tensorboard import TensorBoardLogger
from .training.trainer import Trainer

__all__ = [
    "DEVICES", "LOSSES", "MODELS", "PLANES", "AnnotationError", "FileProgress", "FileResult",
    "ModelConfig", "ModelFileError", "Normalization", "OutputError", "PredictConfig", "Preview",
    "RegionDone", "Seg3DError", "SegmentationModel", "SliceNetwork", "TensorBoardLogger",
    "TrainConfig", "TrainProgress", "TrainResult", "Trainer", "TrainerUpdate", "TrainingPlan",
    "UNet", "Volume",
    "VolumeError", "build_model", "compute_normalization", "default_batch_size",
    "default_model_config", "describe", "iter_predict_files", "iter_predict_volume", "load_model",
    "plan_training", "predict_files", "predict_volume", "propose_patch_size", "read_volume",
    "resolve_device",
    "run_to_end", "save_model", "train", "uncertainty_map", "write_volume",
]
