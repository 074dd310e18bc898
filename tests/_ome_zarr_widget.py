"""The OME-Zarr widget tests' shared parts: an image large enough for a second pyramid level and
a tiny untrained model (what it predicts does not matter, only where to)."""

import numpy as np
import torch

from napari_seg3d.engine import (
    SegmentationModel,
    TrainConfig,
    build_model,
    compute_normalization,
    default_model_config,
)

WAIT_MS = 60_000
SCALE = (2.0, 0.5, 0.5)


def tiled_image(blobs) -> np.ndarray:
    """The blobs tiled to ``(17, 72, 78)``: large enough in y and x for a second level."""
    return np.tile(blobs[0], (1, 3, 3))


def untrained_model(image, channel_names=()) -> SegmentationModel:
    """A tiny two-class model for ``image`` (``(Z, Y, X)``, or ``(C, Z, Y, X)`` with
    ``channel_names``), untrained, seeded."""
    channels = image if image.ndim == 4 else image[None]
    torch.manual_seed(0)
    cfg = TrainConfig(patch_size=(8, 16, 16), batch_size=2, device="cpu")
    mc = default_model_config(len(channels), 2, cfg.patch_size, SCALE, base_filters=4, levels=2)
    return SegmentationModel(network=build_model(mc.architecture, **mc.kwargs).eval(),
                             model_config=mc, train_config=cfg, class_values=(1, 2),
                             class_names=("background", "blob"),
                             normalization=compute_normalization(channels), voxel_size=SCALE,
                             in_channels=len(channels), channel_names=tuple(channel_names))
