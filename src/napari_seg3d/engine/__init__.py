"""The headless engine: torch, numpy and file libraries only, never Qt or napari.

Data flows one way: arrays or files -> engine -> results. Long work is a generator that yields
small frozen dataclasses (:class:`TrainProgress`, :class:`RegionDone`)."""

from .config import LOSSES, PLANES, ModelConfig, TrainConfig
from .devices import resolve_device
from .errors import AnnotationError, ModelFileError, Seg3DError
from .model_file import SegmentationModel, describe, load_model, save_model
from .models import MODELS, SliceNetwork, UNet, anisotropic_pooling, build_model
from .normalization import Normalization, compute_normalization
from .plan import default_batch_size, default_model_config, propose_patch_size
from .prediction.sliding_window import RegionDone, iter_predict_volume, predict_volume
from .prediction.uncertainty import uncertainty_map
from .training.progress import Preview, TrainerUpdate, TrainProgress, TrainResult
from .training.sampling import PatchSampler, SliceSampler
from .training.trainer import Trainer

__all__ = [
    "LOSSES", "MODELS", "PLANES", "AnnotationError", "ModelConfig", "ModelFileError", "Normalization",
    "PatchSampler", "Preview", "SliceNetwork", "SliceSampler", "RegionDone", "Seg3DError", "SegmentationModel", "TrainConfig", "TrainProgress",
    "TrainResult", "Trainer", "TrainerUpdate", "UNet", "anisotropic_pooling", "build_model", "compute_normalization",
    "default_batch_size", "default_model_config", "propose_patch_size", "describe", "iter_predict_volume", "load_model", "predict_volume",
    "resolve_device", "save_model", "uncertainty_map",
]
