"""Whether a model was trained on napari-seg3d's nuclei sample (StarDist's 3D test image): its
package then cites StarDist, and a test input cropped from the sample carries its licence."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from ..normalization import compute_normalization

SAMPLE_DIR = Path(__file__).resolve().parents[2] / "_sample"


def sample_license() -> Path:
    return SAMPLE_DIR / "LICENSE-stardist.txt"


@lru_cache(maxsize=1)
def _sample_image() -> np.ndarray:
    from ..io import read_volume

    return np.asarray(read_volume(SAMPLE_DIR / "image.tif").data)


def from_sample(model, image=None) -> bool:
    """True if ``image`` is the sample image, or if ``model`` holds the intensity range that
    training on the sample image gives (the model file does not name its training image)."""
    sample = _sample_image()
    if image is not None and tuple(image.shape) == sample.shape \
            and np.array_equal(np.asarray(image), sample):
        return True
    if model.in_channels != 1:
        return False
    expected = compute_normalization(sample[None])
    return bool(np.allclose(model.normalization.low, expected.low, rtol=1e-9, atol=0)
                and np.allclose(model.normalization.high, expected.high, rtol=1e-9, atol=0))
