"""Synthetic 3D volumes with a known dense ground truth, for the quality benchmark.

Each generator is a pure function of its seed (numpy and scipy.ndimage only) and returns
``(image, truth, voxel_size)``: ``image`` a ``(Z, Y, X)`` float32 array, ``truth`` a ``(Z, Y, X)``
uint8 class map with values ``1..K`` (every voxel has a class), and the ``(z, y, x)`` voxel size.
They are built to be hard in the ways real data is, not to be realistic pictures:

- :func:`neurites`: cell bodies and thin tubes (radius 1-1.5 voxels) in an anisotropic stack
  (a PSF longer in z, every 3rd z slice kept), under uneven illumination and shot noise.
- :func:`textures`: three classes with the same mean intensity and the same variance that only
  their texture (fine grain, coarse grain, stripes) tells apart.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

VOLUMES = ("neurites", "textures")
CLASS_NAMES = {
    "neurites": ("background", "neurite", "cell body"),
    "textures": ("fine grain", "coarse grain", "stripes"),
}

Volume = tuple[np.ndarray, np.ndarray, tuple[float, float, float]]


def make_volume(name: str, seed: int = 0) -> Volume:
    """``(image, truth, voxel_size)`` of the synthetic volume ``name`` (one of :data:`VOLUMES`)."""
    if name not in VOLUMES:
        raise ValueError(f"unknown synthetic volume {name!r}; choose one of {', '.join(VOLUMES)}")
    return {"neurites": neurites, "textures": textures}[name](seed)


# --- neurites ------------------------------------------------------------------------------------

def _smooth_curve(rng: np.random.Generator, start: np.ndarray, shape, steps: int,
                  turn: float = 0.12) -> np.ndarray:
    """Points ``(n, 3)`` of a random walk with a slowly turning direction, 0.5 voxel a step,
    bouncing off the border of ``shape``."""
    direction = rng.standard_normal(3)
    direction /= np.linalg.norm(direction)
    points = [start.astype(float)]
    upper = np.asarray(shape, float) - 1
    for _ in range(steps):
        direction = direction + turn * rng.standard_normal(3)
        direction /= np.linalg.norm(direction)
        nxt = points[-1] + 0.5 * direction
        out = (nxt < 0) | (nxt > upper)
        if out.any():
            direction[out] *= -1
            nxt = np.clip(points[-1] + 0.5 * direction, 0, upper)
        points.append(nxt)
    return np.asarray(points)


def _tubes(shape, curves: list[np.ndarray], radii: np.ndarray) -> np.ndarray:
    """Bool ``shape`` mask of tubes: the voxels within ``radii[i]`` of curve ``i``'s centre line."""
    centre = np.zeros(shape, np.float32)  # radius of the curve through each centre-line voxel
    for pts, r in zip(curves, radii):
        idx = np.round(pts).astype(int)
        centre[idx[:, 0], idx[:, 1], idx[:, 2]] = r
    dist, nearest = ndi.distance_transform_edt(centre == 0, return_indices=True)
    return dist <= centre[tuple(nearest)]


def _blobs(shape, centres: np.ndarray, radii: np.ndarray,
           rng: np.random.Generator) -> np.ndarray:
    """Bool ``shape`` mask of randomly stretched ellipsoids, ``radii`` (n,) voxels on average,
    their surface made irregular by smooth noise."""
    grid = np.indices(shape, dtype=np.float32)
    mask = np.zeros(shape, bool)
    wobble = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 3)
    wobble /= wobble.std() + 1e-6
    for c, r in zip(centres, radii):
        axes = r * rng.uniform(0.8, 1.25, 3)
        lo = np.maximum(np.floor(c - axes.max() - 2).astype(int), 0)
        hi = np.minimum(np.ceil(c + axes.max() + 3).astype(int), shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        d2 = sum(((grid[i][box] - c[i]) / axes[i]) ** 2 for i in range(3))
        mask[box] |= d2 <= 1.0 + 0.15 * wobble[box]
    return mask


def neurites(seed: int = 0, shape: tuple[int, int, int] = (40, 128, 128),
             z_step: int = 3) -> Volume:
    """Cell bodies with thin neurites, imaged anisotropically.

    Built on an isotropic ``(shape[0] * z_step, Y, X)`` grid: 14 cell bodies (irregular
    ellipsoids of radius 8-13 voxels, spread over the depth) and 60 smooth random tubes of
    radius 1-1.5 voxels, 28 of them starting at a cell body, bouncing off the volume's faces.
    The image is blurred by a Gaussian PSF three times longer in z than in y/x, lit by a smooth
    gradient (0.45 to 1.15 across x, dimmer with depth), given Poisson shot noise (~25 photons
    at a cell body) plus Gaussian read noise, and then only every ``z_step``-th z slice is kept
    (image and truth alike): thin tubes end up faint and one voxel wide in places.

    Returns:
        ``(image, truth, voxel_size)``: float32 ``shape`` image (photon counts), uint8 ``shape``
        truth (1 background, 2 neurite, 3 cell body), voxel size ``(z_step, 1, 1)``.
    """
    rng = np.random.default_rng([seed, 1])
    iso = (shape[0] * z_step, shape[1], shape[2])
    margin = np.array([12, 14, 14])
    n_cells, n_tubes = 14, 60
    centres = rng.uniform(margin, np.array(iso) - margin, (n_cells, 3))
    strata = (rng.permutation(n_cells) + rng.uniform(0.2, 0.8, n_cells)) / n_cells
    centres[:, 0] = margin[0] + strata * (iso[0] - 2 * margin[0])  # cells at every depth
    cells = _blobs(iso, centres, rng.uniform(8, 13, n_cells), rng)
    curves = []
    for i in range(n_tubes):
        start = centres[i % n_cells] if i < 2 * n_cells else rng.uniform(0, np.array(iso) - 1)
        curves.append(_smooth_curve(rng, start, iso, steps=int(rng.integers(200, 500))))
    tubes = _tubes(iso, curves, rng.uniform(1.0, 1.5, len(curves))) & ~cells
    truth = np.ones(iso, np.uint8)
    truth[tubes] = 2
    truth[cells] = 3

    # brightness: cell bodies with a darker nucleus-like core, tubes dimmer, a faint background
    signal = np.full(iso, 0.08, np.float32)
    texture = ndi.gaussian_filter(rng.standard_normal(iso).astype(np.float32), 2)
    signal[cells] = 1.0 + 0.8 * texture[cells]
    signal[tubes] = 0.75
    signal = ndi.gaussian_filter(signal, sigma=(3.0, 1.0, 1.0))  # PSF longer in z
    z, _, x = np.meshgrid(np.linspace(0, 1, iso[0], dtype=np.float32), 0,
                          np.linspace(0, 1, iso[2], dtype=np.float32), indexing="ij")
    light = (0.45 + 0.7 * x) * (1.0 - 0.35 * z)
    signal = (signal * light)[::z_step]
    photons = 25.0
    image = rng.poisson(np.clip(signal, 0, None) * photons).astype(np.float32)
    image += rng.normal(2.0, 1.5, image.shape).astype(np.float32)  # offset and read noise
    return image, truth[::z_step].copy(), (float(z_step), 1.0, 1.0)


# --- textures ------------------------------------------------------------------------------------

def _unit(field: np.ndarray) -> np.ndarray:
    """``field`` shifted and scaled to mean 0 and standard deviation 1 (float32)."""
    field = field.astype(np.float32)
    return (field - field.mean()) / (field.std() + 1e-6)


def _regions(rng: np.random.Generator, shape, k: int, sigma: float) -> np.ndarray:
    """``(Z, Y, X)`` uint8 map of ``k`` irregular regions (values 1..k): the arg-max of ``k``
    smoothed random fields."""
    fields = np.stack([ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
                       for _ in range(k)])
    return (fields.argmax(0) + 1).astype(np.uint8)


def textures(seed: int = 0, shape: tuple[int, int, int] = (32, 128, 128)) -> Volume:
    """Three irregular regions told apart by texture only.

    The regions are the arg-max of three smoothed random fields (sigma 7): blobby, interleaved,
    about a third of the volume each. Every class has the same mean (0.5) and the same standard
    deviation (0.15) of intensity; only the spatial structure differs:

    1. fine grain: white noise blurred by sigma 0.6;
    2. coarse grain: white noise blurred by sigma 2.5;
    3. stripes: a plane wave of period 7 voxels along a fixed oblique direction, its phase
       wandering smoothly (so the stripes bend).

    Then Gaussian noise of standard deviation 0.04 everywhere (mild), isotropic voxels.

    Returns:
        ``(image, truth, voxel_size)``: float32 ``shape`` image, uint8 ``shape`` truth (values
        1..3 as listed), voxel size ``(1, 1, 1)``.
    """
    rng = np.random.default_rng([seed, 2])
    truth = _regions(rng, shape, 3, sigma=7.0)
    fine = _unit(ndi.gaussian_filter(rng.standard_normal(shape), 0.6))
    coarse = _unit(ndi.gaussian_filter(rng.standard_normal(shape), 2.5))
    direction = np.array([0.35, 0.8, 0.5])
    direction /= np.linalg.norm(direction)
    grid = np.indices(shape, dtype=np.float32)
    phase = 2.5 * _unit(ndi.gaussian_filter(rng.standard_normal(shape), 10))
    stripes = _unit(np.sin(2 * np.pi * np.tensordot(direction, grid, axes=1) / 7.0 + phase))
    texture = np.choose(truth - 1, [fine, coarse, stripes])
    image = 0.5 + 0.15 * texture + rng.normal(0, 0.04, shape).astype(np.float32)
    return image.astype(np.float32), truth, (1.0, 1.0, 1.0)


def class_fractions(truth: np.ndarray, k: int) -> list[float]:
    """Share of the voxels of each class value 1..k in ``truth``."""
    counts = np.bincount(truth.ravel(), minlength=k + 1)[1:k + 1]
    return (counts / truth.size).tolist()
