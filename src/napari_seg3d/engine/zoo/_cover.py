"""The cover image of a package: the middle z-slice of the test input beside the classes the
model gives it, 2:1, as the BioImage Model Zoo shows it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# class colours (the first class, usually the background, stays grey)
_COLOURS = np.array([[0, 0, 0], [230, 60, 60], [60, 170, 240], [250, 200, 40], [120, 220, 90],
                     [200, 100, 230], [250, 140, 60], [70, 220, 200]], np.float32)
_HEIGHT = 256


def write_cover(path: Path, raw: np.ndarray, probabilities: np.ndarray) -> Path:
    """Write ``path`` (PNG) from the test input ``(1, C, z, y, x)`` and the test output
    ``(1, K, z, y, x)``."""
    from PIL import Image

    z = raw.shape[2] // 2
    grey = _grey(raw[0, 0, z])
    probs = probabilities[0, :, z]
    classes = (probs[0] > 0.5).astype(int) if probs.shape[0] == 1 else probs.argmax(0)
    colour = _COLOURS[classes % len(_COLOURS)]
    tinted = np.where(classes[..., None] > 0, 0.45 * grey[..., None] + 0.55 * colour,
                      grey[..., None])
    halves = [_square(np.repeat(grey[..., None], 3, axis=2)), _square(tinted)]
    Image.fromarray(np.concatenate(halves, axis=1).astype(np.uint8)).save(path)
    return path


def _grey(plane: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(plane, (1, 99.5))
    return np.clip((plane - lo) / max(float(hi - lo), 1e-12), 0, 1) * 255


def _square(rgb: np.ndarray) -> np.ndarray:
    """``rgb`` centred on a black square, enlarged (nearest neighbour) to about 256 pixels."""
    h, w = rgb.shape[:2]
    n = max(h, w)
    out = np.zeros((n, n, 3), np.float32)
    out[(n - h) // 2:(n - h) // 2 + h, (n - w) // 2:(n - w) // 2 + w] = rgb
    factor = max(1, _HEIGHT // n)
    return np.repeat(np.repeat(out, factor, axis=0), factor, axis=1)
