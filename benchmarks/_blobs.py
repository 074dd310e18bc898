"""A synthetic volume of touching blobs with its instance truth, for the instance benchmark.

:func:`touching_blobs` is a pure function of its seed (numpy and scipy.ndimage only). Blobs are
ellipsoids in physical space (radii 6 to 10, each axis stretched by up to 15%), most of them
placed against one another so that they touch through a neck (centres 0.75 to 0.95 of the sum of
their radii apart), in an anisotropic stack (voxels of 3 x 1 x 1: a blob is 4 to 7 slices deep).
A voxel inside several blobs goes to the one it is deepest in. The image is each blob's
brightness (0.5 to 1, a little dimmer towards its rim, as stained nuclei are), blurred by a PSF
twice as long in z as in y and x, with shot noise and read noise on a dim background.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

VOXEL_SIZE = (3.0, 1.0, 1.0)
SHAPE = (36, 128, 128)
PSF_SIGMA = (2.0, 1.0, 1.0)  # physical units
PHOTONS = 60.0  # expected photon count of a voxel of brightness 1
READ_NOISE = 0.02

Blobs = tuple[np.ndarray, np.ndarray, tuple[float, float, float]]


def touching_blobs(seed: int = 0, shape=SHAPE, voxel_size=VOXEL_SIZE, count: int = 140) -> Blobs:
    """``(image, instances, voxel_size)``: a float32 ``(Z, Y, X)`` image, its uint16 instance
    truth (0 background, 1..n blobs) and the ``(z, y, x)`` voxel size."""
    rng = np.random.default_rng(seed)
    voxel = np.asarray(voxel_size, float)
    extent = np.asarray(shape) * voxel
    centres, axes = _place(rng, extent, count)
    truth, depth = _rasterise(shape, voxel, centres, axes)
    brightness = np.concatenate([[0.0], rng.uniform(0.5, 1.0, len(centres))])
    clean = brightness[truth] * (1.0 - 0.35 * np.clip(depth, 0, 1) ** 2) + 0.08
    blurred = ndi.gaussian_filter(clean.astype(np.float32), np.asarray(PSF_SIGMA) / voxel)
    image = rng.poisson(np.clip(blurred, 0, None) * PHOTONS) / PHOTONS
    image = image + READ_NOISE * rng.standard_normal(shape)
    return image.astype(np.float32), _consecutive(truth), tuple(voxel_size)


def _place(rng: np.random.Generator, extent: np.ndarray, count: int):
    """Centres ``(n, 3)`` and semi-axes ``(n, 3)`` (physical) of up to ``count`` blobs."""
    centres: list[np.ndarray] = []
    axes: list[np.ndarray] = []
    for _ in range(count * 30):
        if len(centres) == count:
            break
        radius = rng.uniform(6.0, 10.0)
        semi = radius * rng.uniform(0.85, 1.15, 3)
        if centres and rng.random() < 0.8:  # against an existing blob
            j = rng.integers(len(centres))
            direction = rng.standard_normal(3)
            direction /= np.linalg.norm(direction)
            gap = (radius + axes[j].mean()) * rng.uniform(0.75, 0.95)
            centre = centres[j] + gap * direction
        else:
            centre = rng.uniform(0, extent)
        if np.any(centre < 0) or np.any(centre > extent):
            continue
        if centres:
            apart = np.linalg.norm(np.asarray(centres) - centre, axis=1)
            if np.any(apart < 0.75 * (radius + np.asarray(axes).mean(axis=1))):
                continue
        centres.append(centre)
        axes.append(semi)
    return np.asarray(centres), np.asarray(axes)


def _rasterise(shape, voxel: np.ndarray, centres: np.ndarray, axes: np.ndarray):
    """Instance ids (int32, 1-based in placing order) and the normalised depth ``q`` (0 at a
    blob's centre, 1 on its surface) of each voxel; a voxel goes to the blob of least ``q``."""
    truth = np.zeros(shape, np.int32)
    depth = np.full(shape, np.inf, np.float32)
    for index, (centre, semi) in enumerate(zip(centres, axes), start=1):
        lo = np.maximum(np.floor((centre - semi) / voxel).astype(int), 0)
        hi = np.minimum(np.ceil((centre + semi) / voxel).astype(int) + 1, shape)
        if np.any(hi <= lo):
            continue
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        grid = np.ogrid[box]
        q = np.sqrt(sum(((g * v - c) / a) ** 2 for g, v, c, a in zip(grid, voxel, centre, semi)))
        better = (q <= 1.0) & (q < depth[box])
        truth[box][better] = index
        depth[box][better] = q[better]
    return truth, np.where(truth > 0, depth, 1.0)


def _consecutive(truth: np.ndarray) -> np.ndarray:
    """Ids renumbered 1..n (a blob that fell outside the volume leaves no gap)."""
    ids, inverse = np.unique(truth, return_inverse=True)
    if ids[0] != 0:
        inverse = inverse + 1
    return inverse.reshape(truth.shape).astype(np.uint16)
