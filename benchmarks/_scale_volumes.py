"""Synthetic volumes of 10^7 to 10^9 voxels with a dense ground truth, written slab by slab.

Every generator is a pure function of ``(seed, shape)``: it returns one z slab
``[z0, z1)`` of the image and its truth, computed from the whole volume's definition, so a volume
is written to a chunked HDF5 file slab after slab and never held in memory whole. The content is
defined in voxels (object sizes, frequencies), so a 10^8 volume holds more of the same objects
than a 10^7 one, not larger ones, and Dice at both sizes are comparable.

- smooth random fields: i.i.d. normal weights on a coarse lattice (spacing ``scale / 2``) times a
  separable Gaussian basis of width ``scale``: it looks like white noise blurred by
  ``scale`` (the same correlation), has unit variance at every voxel, and any slab is three small
  matrix products away, with no halo.
- fine structure (texture, partial volume, the PSF): ``scipy.ndimage`` filters over the slab plus
  a halo of slices; every random slice is seeded by ``(seed, kind, z)``, so slabs agree on their
  overlaps and the file does not depend on the slab size.

The kinds (:data:`KINDS`): ``tissue`` (three classes, a thin convoluted band between two
tissues), ``nuclei`` (touching blobs, anisotropic voxels, PSF, shot noise; instance ids too),
``textures`` (equal mean and variance, told apart by texture only).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

KINDS = ("tissue", "nuclei", "textures")
CLASS_NAMES = {
    "tissue": ("inner tissue", "band", "outer tissue"),
    "nuclei": ("background", "nucleus"),
    "textures": ("fine grain", "coarse grain", "stripes"),
}
VOXEL_SIZE = {"tissue": (1.0, 1.0, 1.0), "nuclei": (1.0, 0.4, 0.4), "textures": (1.0, 1.0, 1.0)}
_TAG = {"tissue": 11, "nuclei": 12, "textures": 13}  # per-kind seed stream


def shape_for(kind: str, voxels: float) -> tuple[int, int, int]:
    """``(Z, Y, X)`` of about ``voxels`` voxels covering a physical cube (fewer z slices for
    anisotropic voxels): ``tissue`` 1e7 -> 215^3, 1e8 -> 464^3; ``nuclei`` 1e7 -> 117 x 292^2."""
    ratio = VOXEL_SIZE[kind][0] / VOXEL_SIZE[kind][1]
    edge = (voxels * ratio) ** (1 / 3)
    return max(8, round(edge / ratio)), max(8, round(edge)), max(8, round(edge))


# --- smooth random fields ------------------------------------------------------------------------

def _basis(n: int, scale: float) -> np.ndarray:
    """``(n, m)`` Gaussian basis of width ``scale`` on lattice points every ``scale / 2`` voxels
    (from ``3 * scale`` before the first voxel to as far after the last), each row scaled to a
    unit sum of squares."""
    step = max(scale / 2, 1.0)
    centres = np.arange(-3 * scale, n + 3 * scale + step, step)
    g = np.exp(-0.5 * ((np.arange(n)[:, None] - centres[None, :]) / scale) ** 2)
    return (g / np.sqrt((g ** 2).sum(1, keepdims=True))).astype(np.float32)


@functools.lru_cache(maxsize=24)
def _field(seed: int, tag: int, shape: tuple[int, int, int], scale: float):
    bases = [_basis(n, scale) for n in shape]
    rng = np.random.default_rng([seed, tag, int(scale * 100)])
    weights = rng.standard_normal(tuple(b.shape[1] for b in bases), dtype=np.float32)
    return weights, bases


def smooth_field(seed: int, tag: int, shape, scale: float, z0: int, z1: int) -> np.ndarray:
    """Slices ``[z0, z1)`` (``z1 - z0, Y, X`` float32) of a unit-variance smooth random field of
    ``shape`` with correlation length ``scale`` voxels; ``z0`` may be negative and ``z1``
    beyond ``Z`` (the field goes on)."""
    z = np.arange(z0, z1)
    weights, (gz, gy, gx) = _field(seed, tag, tuple(shape), float(scale))
    step = max(scale / 2, 1.0)
    centres = np.arange(-3 * scale, shape[0] + 3 * scale + step, step)
    rows = np.exp(-0.5 * ((z[:, None] - centres[None, :]) / scale) ** 2)
    rows = (rows / np.sqrt((rows ** 2).sum(1, keepdims=True))).astype(np.float32)
    out = np.tensordot(rows, weights, axes=(1, 0))  # (sz, my, mx)
    out = out @ gx.T  # (sz, my, X)
    return np.matmul(gy, out)  # (sz, Y, X)


def white_slices(seed: int, tag: int, shape, z0: int, z1: int, stream: int = 0) -> np.ndarray:
    """Standard normal noise on slices ``[z0, z1)`` (clipped to the volume), each slice seeded by
    its own ``z``, so any slab of the volume draws the same values."""
    return np.stack([np.random.default_rng([seed, tag, stream, z]).standard_normal(
        shape[1:], dtype=np.float32) for z in range(max(z0, 0), min(z1, shape[0]))])


def _sum_of_squares(sigma: float) -> float:
    """Sum of the squared weights of ``ndi.gaussian_filter1d``'s kernel for ``sigma``: the
    variance unit white noise keeps along one axis."""
    impulse = np.zeros(int(8 * sigma) * 2 + 3, np.float64)
    impulse[len(impulse) // 2] = 1
    return float(np.sum(ndi.gaussian_filter1d(impulse, sigma) ** 2))


def blurred_noise(seed: int, tag: int, shape, sigma, z0: int, z1: int,
                  stream: int = 0) -> np.ndarray:
    """White noise blurred by ``sigma`` (a number, or per axis) on ``[z0, z1)``, about unit
    variance, computed over a halo of slices so slabs join seamlessly."""
    sig = np.broadcast_to(np.asarray(sigma, float), (3,))
    halo = int(4 * sig[0] + 1)
    lo, hi = max(z0 - halo, 0), min(z1 + halo, shape[0])
    noise = ndi.gaussian_filter(white_slices(seed, tag, shape, lo, hi, stream), sig)
    norm = math.sqrt(math.prod(_sum_of_squares(s) for s in sig))
    return noise[z0 - lo:z1 - lo] / np.float32(norm)


def _halo_blur(make, shape, sigma, z0: int, z1: int) -> np.ndarray:
    """``make(a, b)`` (an image of slices ``[a, b)``) blurred by ``sigma`` on ``[z0, z1)`` over a
    halo, ``mode='reflect'`` at the volume's faces as a blur of the whole volume would be."""
    halo = int(4 * np.ravel(sigma)[0] + 1)
    lo, hi = max(z0 - halo, 0), min(z1 + halo, shape[0])
    return ndi.gaussian_filter(make(lo, hi), sigma)[z0 - lo:z1 - lo]


@dataclass(frozen=True)
class Slab:
    """Slices ``[z0, z0 + len)`` of a volume: ``image`` float32, ``truth`` uint8 (classes
    1..K), ``instances`` uint32 (0 = background) or None."""

    z0: int
    image: np.ndarray
    truth: np.ndarray
    instances: np.ndarray | None = None


# --- tissue --------------------------------------------------------------------------------------

def tissue_truth(seed: int, shape, z0: int, z1: int) -> np.ndarray:
    """Classes of slices ``[z0, z1)``: a folded surface (level 0 of smooth fields of scales 14
    and 6 added) parts inner tissue (1) from a band about 2-7 voxels thick (2, its thickness
    wandering with a third field) beyond which lies the outer tissue (3): about 45 / 15 / 40 %."""
    tag = _TAG["tissue"]
    a = (smooth_field(seed, tag, shape, 14.0, z0, z1)
         + 0.6 * smooth_field(seed, tag + 300, shape, 6.0, z0, z1)) / np.float32(math.sqrt(1.36))
    width = 0.3 * np.clip(1 + 0.35 * smooth_field(seed, tag + 100, shape, 40.0, z0, z1), 0.4, 1.8)
    truth = np.full(a.shape, 3, np.uint8)
    truth[a > -width] = 2
    truth[a > 0] = 1
    return truth


def tissue(seed: int, shape, z0: int, z1: int) -> Slab:
    """A T1-MRI-like slab: class means 1.0 / 0.62 / 0.3 with a smooth within-class texture
    (std 0.07), partial volume (blur sigma 0.8), a bias field (+-20 %, scale 60) and noise of
    std 0.12, so the classes' intensities overlap and the thin band is mixed with both sides."""
    tag = _TAG["tissue"]
    means = np.array([0, 1.0, 0.62, 0.3], np.float32)

    def clean(a: int, b: int) -> np.ndarray:
        texture = blurred_noise(seed, tag, shape, 1.5, a, b)
        return means[tissue_truth(seed, shape, a, b)] + 0.07 * texture

    image = _halo_blur(clean, shape, 0.8, z0, z1)
    image *= 1 + 0.2 * smooth_field(seed, tag + 200, shape, 60.0, z0, z1)
    image += 0.12 * white_slices(seed, tag, shape, z0, z1, stream=1)
    return Slab(z0, image.astype(np.float32), tissue_truth(seed, shape, z0, z1))


# --- nuclei --------------------------------------------------------------------------------------

NUCLEUS_SPACING = (5, 13, 13)  # lattice of nucleus sites, voxels (5 um in z, 5.2 um in y/x)


@functools.lru_cache(maxsize=8)
def nucleus_table(seed: int, shape: tuple[int, int, int]) -> np.ndarray:
    """``(n, 8)`` float64 rows ``(z, y, x, az, ay, ax, brightness, id)``: the nuclei of the
    volume, on a jittered lattice (85 % of the sites occupied, the lattice one site beyond the
    faces), semi-axes 2.2-3.4 um in voxels, brightness 0.55-1.45, ids from 1."""
    rng = np.random.default_rng([seed, _TAG["nuclei"], 1])
    spacing = np.array(NUCLEUS_SPACING, float)
    sites = np.stack(np.meshgrid(*(np.arange(-1, n / s + 1) for n, s in zip(shape, spacing)),
                                 indexing="ij"), -1).reshape(-1, 3)
    centres = (sites + 0.5 + rng.uniform(-0.3, 0.3, sites.shape)) * spacing
    keep = rng.random(len(centres)) < 0.85
    radius = rng.uniform(2.2, 3.4, len(centres))[:, None] * rng.uniform(0.85, 1.15, (len(centres), 3))
    axes = radius / np.asarray(VOXEL_SIZE["nuclei"])
    bright = rng.uniform(0.55, 1.45, len(centres))[:, None]
    table = np.hstack([centres, axes, bright])[keep]
    return np.hstack([table, np.arange(1, len(table) + 1, dtype=float)[:, None]])


def nuclei_instances(seed: int, shape, z0: int, z1: int) -> tuple[np.ndarray, np.ndarray]:
    """Instance ids (uint32, 0 = background) of slices ``[z0, z1)`` and each voxel's normalised
    distance to its nucleus's centre (1 at the surface). A voxel inside several ellipsoids
    belongs to the one it is deepest in, so touching nuclei meet at a curved border."""
    table = nucleus_table(seed, tuple(shape))
    sz = z1 - z0
    best = np.full((sz,) + tuple(shape[1:]), 1.0, np.float32)
    ids = np.zeros(best.shape, np.uint32)
    near = table[(table[:, 0] + table[:, 3] >= z0) & (table[:, 0] - table[:, 3] < z1)]
    for z, y, x, az, ay, ax, _, ident in near:
        lo = np.maximum(np.floor([z - az - z0, y - ay, x - ax]).astype(int), 0)
        hi = np.minimum(np.ceil([z + az - z0, y + ay, x + ax]).astype(int) + 1, best.shape)
        if np.any(hi <= lo):
            continue
        gz, gy, gx = (np.arange(a, b, dtype=np.float32) for a, b in zip(lo, hi))
        d = np.sqrt(((gz[:, None, None] + z0 - z) / az) ** 2 + ((gy[None, :, None] - y) / ay) ** 2
                    + ((gx[None, None, :] - x) / ax) ** 2)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        closer = d < best[box]
        best[box][closer] = d[closer]
        ids[box][closer] = int(ident)
    return ids, best


PSF_SIGMA = (1.2, 0.875, 0.875)  # voxels: 1.2 um in z, 0.35 um in y/x


def nuclei(seed: int, shape, z0: int, z1: int) -> Slab:
    """A widefield-like stack of densely packed, touching nuclei (about half the voxels):
    each nucleus of its own brightness, dimmer towards its rim (so touching ones show a faint
    seam), a chromatin texture, uneven illumination (+-25 %, scale 80), blurred by a PSF three
    times longer in z than in y/x (in um), then Poisson noise at ~20 photons on an average
    nucleus and Gaussian read noise. Voxels 1.0 x 0.4 x 0.4 um."""
    tag = _TAG["nuclei"]
    table = nucleus_table(seed, tuple(shape))

    def clean(a: int, b: int) -> np.ndarray:
        ids, d = nuclei_instances(seed, shape, a, b)
        bright = np.concatenate([[0.0], table[:, 6]]).astype(np.float32)[ids]
        texture = blurred_noise(seed, tag, shape, (0.5, 1.2, 1.2), a, b)
        signal = bright * (1 - 0.35 * d ** 2) * (1 + 0.2 * texture)
        return np.where(ids > 0, signal, 0.06).astype(np.float32)

    signal = _halo_blur(clean, shape, PSF_SIGMA, z0, z1)
    signal *= 1 + 0.25 * smooth_field(seed, tag + 200, shape, 80.0, z0, z1)
    image = np.empty(signal.shape, np.float32)
    for i, z in enumerate(range(z0, z1)):
        rng = np.random.default_rng([seed, tag, 2, z])
        image[i] = rng.poisson(np.clip(signal[i], 0, None) * 20.0)
        image[i] += rng.normal(2.0, 1.5, signal.shape[1:])
    ids, _ = nuclei_instances(seed, shape, z0, z1)
    return Slab(z0, image, (ids > 0).astype(np.uint8) + 1, ids)


# --- textures ------------------------------------------------------------------------------------

STRIPE_DIRECTION = np.array([0.35, 0.8, 0.5]) / np.linalg.norm([0.35, 0.8, 0.5])


def textures_truth(seed: int, shape, z0: int, z1: int) -> np.ndarray:
    """Classes 1..3 of ``[z0, z1)``: the arg-max of three smooth fields of scale 7."""
    tag = _TAG["textures"]
    fields = [smooth_field(seed, tag + 10 * k, shape, 7.0, z0, z1) for k in range(3)]
    return (np.argmax(np.stack(fields), 0) + 1).astype(np.uint8)


def textures(seed: int, shape, z0: int, z1: int) -> Slab:
    """Three textures of equal mean (0.5) and standard deviation (0.15), as
    ``_volumes.textures``: white noise blurred by 0.6 (fine grain) or 2.5 (coarse grain), and
    bent stripes of period 7 voxels (a plane wave whose phase wanders with a field of scale 10),
    plus Gaussian noise of std 0.04."""
    tag = _TAG["textures"]
    truth = textures_truth(seed, shape, z0, z1)
    fine = blurred_noise(seed, tag, shape, 0.6, z0, z1, stream=1)
    coarse = blurred_noise(seed, tag, shape, 2.5, z0, z1, stream=2)
    grid = np.ogrid[z0:z1, :shape[1], :shape[2]]
    wave = sum(d * g.astype(np.float32) for d, g in zip(STRIPE_DIRECTION, grid))
    phase = 2.5 * smooth_field(seed, tag + 50, shape, 10.0, z0, z1)
    stripes = np.sin(2 * np.pi * wave / 7.0 + phase) * np.float32(math.sqrt(2))
    texture = np.choose(truth - 1, [fine, coarse, stripes])
    image = 0.5 + 0.15 * texture + 0.04 * white_slices(seed, tag, shape, z0, z1, stream=3)
    return Slab(z0, image.astype(np.float32), truth)


GENERATORS = {"tissue": tissue, "nuclei": nuclei, "textures": textures}
