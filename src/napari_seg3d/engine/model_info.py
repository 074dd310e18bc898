"""What a model file holds, as plain values: the ``napari-seg3d info`` record."""

from __future__ import annotations

from typing import Any

from .model_file import SegmentationModel


def describe(model: SegmentationModel) -> dict[str, Any]:
    """What a model file holds, as plain values (for ``napari-seg3d info``)."""
    n_params = sum(p.numel() for p in model.network.parameters())
    hist = model.history
    return {
        "architecture": model.model_config.architecture,
        "dims": model.dims,
        "network": model.model_config.kwargs,
        "parameters": n_params,
        "classes": dict(zip(model.class_values, model.class_names)),
        "in_channels": model.in_channels,
        "patch_size": list(model.patch_size),
        "voxel_size": model.voxel_size,
        "normalization": model.normalization.to_dict(),
        "iterations_trained": model.iteration,
        "best_validation_dice": hist.get("best_val_dice"),
        "optimizer_state": model.optimizer_state is not None,
        "forest_trees": 0 if model.forest is None else len(model.forest.trees),
        "training": model.train_config.to_dict(),
    }
