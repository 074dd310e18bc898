"""ilastik-style multiscale filter features of a volume, for the random forest.

Per channel: the intensity, and per sigma the Gaussian-smoothed intensity, its gradient
magnitude and the three eigenvalues of its Hessian (edges, blobs, tubes and sheets). Sigmas are
in units of the smallest voxel edge and shrink along coarse axes, so anisotropic stacks get
physically round filters.

Two ways to compute them:

- :func:`image_features`, the reference: a Gaussian-derivative filter per gradient and Hessian
  component (ten 3D filters per sigma), on the whole array given.
- :func:`fast_features`, what the forest uses: the volume is smoothed once per sigma, and only
  where the output needs it (each separable pass in "valid" mode, so a thin slab or a small tile
  costs what its voxels cost, not what its halo costs); the derivatives are central finite
  differences of the smoothed volume. The smoothed intensity equals the reference's; the
  derivatives differ a little (about 6x less compute per voxel, and a slice with its halo costs
  a slice, not the halo's 40).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from scipy import ndimage as ndi

SIGMAS = (0.7, 1.0, 1.6, 3.5, 5.0)  # ilastik's scales up to 5 (0.80 on the sample; 4 scales: 0.77)
TRUNCATE = 4.0  # Gaussian kernels reach this many sigmas (scipy's default)
# below this sigma, derivatives come from Gaussian-derivative kernels (as the reference's),
# above from finite differences of the smoothed volume (textures lost 0.014 Dice with FD at all)
EXACT_BELOW = 1.5


def n_features(channels: int, sigmas=SIGMAS) -> int:
    """Features per voxel of a ``channels``-channel image."""
    return channels * (1 + 5 * len(sigmas))


def axis_sigmas(sigma: float, spacing) -> tuple[float, ...]:
    """``sigma`` (in units of the smallest voxel edge) in voxels along each axis."""
    unit = min(spacing)
    return tuple(sigma * unit / s for s in spacing)


def symmetric_eigenvalues(h: dict) -> list[np.ndarray]:
    """Closed-form eigenvalues (descending) of symmetric 3x3 matrices given as ``h[i, j]``
    arrays (``i <= j``), about 10x faster than ``np.linalg.eigvalsh`` on stacked matrices."""
    q = (h[0, 0] + h[1, 1] + h[2, 2]) / 3
    d0, d1, d2 = h[0, 0] - q, h[1, 1] - q, h[2, 2] - q
    off = h[0, 1] ** 2 + h[0, 2] ** 2 + h[1, 2] ** 2
    p = np.sqrt((d0**2 + d1**2 + d2**2 + 2 * off) / 6)
    safe = np.where(p > 0, p, 1)
    det = (d0 * (d1 * d2 - h[1, 2] ** 2) - h[0, 1] * (h[0, 1] * d2 - h[1, 2] * h[0, 2])
           + h[0, 2] * (h[0, 1] * h[1, 2] - d1 * h[0, 2]))
    r = np.clip(det / (2 * safe**3), -1, 1)
    phi = np.arccos(r) / 3
    e1 = q + 2 * p * np.cos(phi)
    e3 = q + 2 * p * np.cos(phi + 2 * np.pi / 3)
    return [e1, 3 * q - e1 - e3, e3]


# --- the reference ------------------------------------------------------------------------------

def _hessian_eigenvalues(x: np.ndarray, sigmas: tuple[float, ...]) -> list[np.ndarray]:
    """The three eigenvalues (descending) of the Gaussian Hessian of ``(Z, Y, X)`` ``x``."""
    h = {}
    for i, j in itertools.combinations_with_replacement(range(3), 2):
        order = [0, 0, 0]
        order[i] += 1
        order[j] += 1
        h[i, j] = ndi.gaussian_filter(x, sigmas, order=order)
    return symmetric_eigenvalues(h)


def image_features(image: np.ndarray, spacing=(1.0, 1.0, 1.0), sigmas=SIGMAS) -> np.ndarray:
    """The reference features of a normalised ``(C, Z, Y, X)`` image (Gaussian-derivative
    filters; the array's faces are mirrored).

    Returns:
        ``(F, Z, Y, X)`` float32 with ``F = C * (1 + 5 * len(sigmas))``.
    """
    out = []
    for channel in np.asarray(image, np.float32):
        out.append(channel)
        for sigma in sigmas:
            s = axis_sigmas(sigma, spacing)
            out.append(ndi.gaussian_filter(channel, s))
            out.append(ndi.gaussian_gradient_magnitude(channel, s))
            out.extend(_hessian_eigenvalues(channel, s))
    return np.stack(out).astype(np.float32, copy=False)


def halo_of(spacing=(1.0, 1.0, 1.0), sigmas=SIGMAS) -> tuple[int, int, int]:
    """Voxels of context each reference feature needs along ``(z, y, x)``."""
    return tuple(math.ceil(TRUNCATE * s) for s in axis_sigmas(max(sigmas), spacing))


# --- the fast features --------------------------------------------------------------------------

def _kernel(sigma: float, order: int = 0) -> np.ndarray:
    """scipy's Gaussian (derivative) kernel of ``sigma`` voxels, as ``gaussian_filter1d``
    correlates with it (same radius and weights)."""
    radius = int(TRUNCATE * sigma + 0.5)
    if radius == 0:
        return np.ones(1, np.float32) if order == 0 else np.zeros(1, np.float32)
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    phi = np.exp(-0.5 * (t / sigma) ** 2)
    phi /= phi.sum()
    if order == 1:
        phi = -t / sigma**2 * phi
    elif order == 2:
        phi = (t**2 / sigma**4 - 1 / sigma**2) * phi
    return phi[::-1].astype(np.float32)


def fast_halo(spacing=(1.0, 1.0, 1.0), sigmas=SIGMAS) -> tuple[int, int, int]:
    """Voxels of context :func:`fast_features` needs along ``(z, y, x)``: the largest kernel's
    radius and one voxel for the finite differences."""
    return tuple(len(_kernel(s)) // 2 + 1 for s in axis_sigmas(max(sigmas), spacing))


def _valid_pass(x: np.ndarray, w: np.ndarray, axis: int) -> np.ndarray:
    """``x`` correlated with the (symmetric or antisymmetric) kernel ``w`` along ``axis``,
    only where the kernel fits ("valid"): the axis shrinks by ``len(w) - 1``."""
    r = len(w) // 2
    if r == 0:
        return x * w[0] if w[0] != 1 else x
    n = x.shape[axis] - 2 * r

    def part(start: int) -> np.ndarray:
        return x[(slice(None),) * axis + (slice(start, start + n),)]

    if axis == 0 or n * 4 < x.shape[axis]:  # a thin output: add the shifted planes up
        odd = w[r + 1] == -w[r - 1] != 0
        out = part(r) * w[r]
        tmp = np.empty_like(out)
        for k in range(1, r + 1):
            (np.subtract if odd else np.add)(part(r + k), part(r - k), out=tmp)
            tmp *= w[r + k]
            out += tmp
        return out
    return ndi.correlate1d(x, w, axis=axis, mode="nearest")[
        (slice(None),) * axis + (slice(r, r + n),)]


def _smoothed(x: np.ndarray, core: tuple[slice, ...], sigmas: tuple[float, ...]) -> np.ndarray:
    """The Gaussian smoothing of ``(Z, Y, X)`` ``x`` over ``core`` grown by one voxel on each
    side (the finite differences' margin)."""
    kernels = [_kernel(s) for s in sigmas]
    crop = tuple(slice(c.start - len(w) // 2 - 1, c.stop + len(w) // 2 + 1)
                 for c, w in zip(core, kernels))
    out = x[crop]
    for axis, w in enumerate(kernels):
        out = _valid_pass(out, w, axis)
    return out


# the derivative orders (z, y, x) of the smoothed image, its gradient and its Hessian
_ORDERS = [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (2, 0, 0), (0, 2, 0), (0, 0, 2),
           (1, 1, 0), (1, 0, 1), (0, 1, 1)]


def _gaussian_derivatives(x: np.ndarray, core: tuple[slice, ...], sigmas: tuple[float, ...],
                          ) -> dict[tuple[int, int, int], np.ndarray]:
    """The Gaussian derivatives of :data:`_ORDERS` of ``(Z, Y, X)`` ``x`` over ``core``, as
    ``ndi.gaussian_filter(x, sigmas, order=...)`` gives them there: separable valid passes,
    each partial result shared by the orders that start with it (19 passes, not 30)."""
    radius = [len(_kernel(s)) // 2 for s in sigmas]
    crop = tuple(slice(c.start - r, c.stop + r) for c, r in zip(core, radius))
    partial: dict[tuple[int, ...], np.ndarray] = {(): x[crop]}
    for axis, sigma in enumerate(sigmas):
        wanted = {o[:axis + 1] for o in _ORDERS}
        partial = {key + (k,): _valid_pass(partial[key], _kernel(sigma, k), axis)
                   for key in partial for k in range(3) if key + (k,) in wanted}
    return partial  # type: ignore[return-value]


def _exact_features(x: np.ndarray, core: tuple[slice, ...], sigmas: tuple[float, ...],
                    ) -> list[np.ndarray]:
    """Smoothed intensity, gradient magnitude and Hessian eigenvalues over ``core``, from
    Gaussian-derivative filters (the reference's, in valid mode)."""
    d = _gaussian_derivatives(x, core, sigmas)
    magnitude = np.sqrt(d[1, 0, 0] ** 2 + d[0, 1, 0] ** 2 + d[0, 0, 1] ** 2)
    h = {(0, 0): d[2, 0, 0], (1, 1): d[0, 2, 0], (2, 2): d[0, 0, 2], (0, 1): d[1, 1, 0],
         (0, 2): d[1, 0, 1], (1, 2): d[0, 1, 1]}
    return [d[0, 0, 0], magnitude, *symmetric_eigenvalues(h)]


def _derivative_features(s: np.ndarray) -> list[np.ndarray]:
    """Gradient magnitude and Hessian eigenvalues (descending) by central differences of the
    smoothed ``s``, on ``s`` without its one-voxel margin."""
    c = slice(1, -1)
    axes = []
    for a in range(3):
        lo = tuple(slice(None, -2) if b == a else c for b in range(3))
        hi = tuple(slice(2, None) if b == a else c for b in range(3))
        axes.append((lo, hi))
    mid = s[c, c, c]
    grad = [(s[hi] - s[lo]) * 0.5 for lo, hi in axes]
    magnitude = np.sqrt(grad[0] ** 2 + grad[1] ** 2 + grad[2] ** 2)
    h = {(a, a): s[axes[a][1]] + s[axes[a][0]] - 2 * mid for a in range(3)}
    for a, b in itertools.combinations(range(3), 2):
        h[a, b] = (_shifted(s, a, b, 1, 1) - _shifted(s, a, b, 1, -1)
                   - _shifted(s, a, b, -1, 1) + _shifted(s, a, b, -1, -1)) * 0.25
    return [magnitude, *symmetric_eigenvalues(h)]


def _shifted(s: np.ndarray, a: int, b: int, da: int, db: int) -> np.ndarray:
    """``s`` without its one-voxel margin, shifted by ``da`` along axis ``a`` and ``db`` along
    ``b``."""
    key = [slice(1, -1)] * 3
    key[a] = slice(2, None) if da > 0 else slice(None, -2)
    key[b] = slice(2, None) if db > 0 else slice(None, -2)
    return s[tuple(key)]


def fast_features(block: np.ndarray, core: tuple[slice, slice, slice], spacing=(1.0, 1.0, 1.0),
                  sigmas=SIGMAS, out: np.ndarray | None = None) -> np.ndarray:
    """The features of ``core`` of a normalised ``(C, z, y, x)`` block.

    Args:
        block: the image around ``core``, with at least :func:`fast_halo` voxels on every side
            (mirror the volume's faces into it where the volume ends: see
            :func:`pad_to_halo`).
        core: the region to compute, in the block's coordinates.
        spacing: ``(z, y, x)`` voxel size.
        sigmas: the scales.
        out: a float32 ``(F, z, y, x)`` array to write into (reused buffers skip the page
            faults of fresh large arrays, slow on some machines).

    Returns:
        ``(F, z, y, x)`` float32 for the core, ``F`` as :func:`image_features`.
    """
    block = np.asarray(block, np.float32)
    halo = fast_halo(spacing, sigmas)
    for c, h, n in zip(core, halo, block.shape[1:]):
        if c.start < h or c.stop + h > n:
            raise ValueError(f"The block {block.shape[1:]} has less than the {halo} voxels of "
                             f"context the features of {core} need.")
    shape = (n_features(block.shape[0], sigmas),) + tuple(c.stop - c.start for c in core)
    out = np.empty(shape, np.float32) if out is None else out
    f = 0
    for channel in block:
        out[f] = channel[core]
        f += 1
        for sigma in sigmas:
            axes = axis_sigmas(sigma, spacing)
            if sigma < EXACT_BELOW:  # fine scales: finite differences would blur them
                out[f:f + 5] = _exact_features(channel, core, axes)
            else:
                s = _smoothed(channel, core, axes)
                for z in range(0, shape[1], _PLANES):  # a few planes at a time: temporaries
                    part = s[z:z + _PLANES + 2]   # stay in the cache
                    out[f, z:z + _PLANES] = part[1:-1, 1:-1, 1:-1]
                    for i, values in enumerate(_derivative_features(part), 1):
                        out[f + i, z:z + _PLANES] = values
            f += 5
    return out


_PLANES = 4


def pad_to_halo(block: np.ndarray, missing: tuple[tuple[int, int], ...]) -> np.ndarray:
    """``(C, z, y, x)`` ``block`` with ``missing`` ``(before, after)`` voxels per spatial axis
    added by mirroring (scipy's "reflect" mode: the edge voxel repeats), as the reference
    features see the volume's faces."""
    if not any(a or b for a, b in missing):
        return block
    return np.pad(block, ((0, 0),) + tuple(missing), mode="symmetric")
