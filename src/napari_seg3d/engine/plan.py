"""The plan of a training run: the network, the patch and the batch for an image, its voxel size
and the device. The command line and the Train widget both ask these functions, so the same
inputs give the same run."""

from __future__ import annotations

import numpy as np

from .config import ModelConfig
from .models import MODELS, anisotropic_pooling


def default_model_config(in_channels: int, out_channels: int, patch_size, voxel_size=None,
                         base_filters: int = 16, levels: int | None = None,
                         architecture: str = "unet", dims: int = 3) -> ModelConfig:
    """A U-Net sized for ``patch_size``: as many levels (at most 4) as keep every axis of the
    deepest feature map at least 4 voxels. ``dims=3``: a 3D network pooling per axis for
    anisotropic voxels; ``dims=2``: a 2D network trained on ``patch_size[1:]`` slices along z, y
    and x (2.5D), which treats every plane as isotropic."""
    if dims not in (2, 3):
        raise ValueError(f"dims must be 2 (slices, 2.5D) or 3, got {dims}.")
    size = tuple(patch_size) if dims == 3 else tuple(patch_size)[1:]
    spacing = (voxel_size or (1, 1, 1)) if dims == 3 else (1, 1)
    if levels is None:
        levels = 1
        while levels < 4:
            pool = anisotropic_pooling(spacing, levels + 1)
            div = np.prod(np.array(pool), axis=0)
            if np.all(np.array(size) / div >= 4) or np.all(div == 1):
                levels += 1
            else:
                break
    pool = anisotropic_pooling(spacing, levels)
    kwargs = dict(spatial_dims=dims, in_channels=in_channels, out_channels=out_channels,
                  levels=levels, base_filters=base_filters, growth=2.0, residual=True,
                  norm="instance", dropout=0.0, pooling=[list(p) for p in pool])
    if architecture not in MODELS:
        raise ValueError(f"Unknown architecture {architecture!r}; choose one of {', '.join(MODELS)}.")
    return ModelConfig(architecture, kwargs)


def default_batch_size(dims: int) -> int:
    """Patches per batch: 2 for 3D patches; 8 for 2D slices, which hold far fewer voxels (on the
    nuclei sample a step of 8 slices of 32^2 costs a fraction of one of 2 patches 16x32x32)."""
    return 8 if dims == 2 else 2


def propose_patch_size(shape, voxel_size=None, *, max_edge: int = 48,
                       dims: int = 3) -> tuple[int, int, int]:
    """A training patch for an image of ``shape`` ``(Z, Y, X)``: multiples of 8, at most ``max_edge``
    in y/x and 60% of the image along each axis (at least 8), so patches land at varied
    positions; z shortened by the voxel-size ratio so a patch covers about the same physical
    extent along every axis. On the nuclei sample (31, 61, 57) this gives (16, 32, 32), which
    trained as well as (16, 48, 48) and better than (24, 48, 48) in half the time.

    ``dims=2`` (2.5D): square training slices of 60% of the larger of Y and X, at most
    ``2 * max_edge``, and the prediction window as deep as the slices are wide (or the image)."""
    if dims == 2:
        edge = max(8, min(2 * max_edge, int(0.6 * max(shape[1:])) // 8 * 8))
        return (max(8, min(edge, -(-int(shape[0]) // 8) * 8)), edge, edge)
    vs = np.asarray(voxel_size if voxel_size is not None else (1.0, 1.0, 1.0), float)
    ratio = vs / vs[1:].min()
    edges = []
    for n, r in zip(shape, ratio):
        edge = max(8, int(max_edge / r) // 8 * 8)
        edges.append(max(8, min(edge, int(0.6 * n) // 8 * 8)))
    return tuple(edges)
