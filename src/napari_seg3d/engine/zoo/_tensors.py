"""The input sizes a package declares, and its test tensors: a crop of an image, or a synthetic
volume when no image is given."""

from __future__ import annotations

import numpy as np
import torch

from ..models import SliceNetwork


def size_steps(model) -> tuple[int, int, int]:
    """Per axis ``(z, y, x)``: valid input sizes are multiples of this step, so the U-Net never
    pads (and a traced copy of it works at every valid size). A 2D (2.5D) network slices a
    window along z, y and x, so all three axes take the step of its 2D network."""
    net = model.network
    if isinstance(net, SliceNetwork):
        step = max(int(d) for d in net.net.divisor)
        return (step, step, step)
    return tuple(int(d) for d in net.divisor)  # type: ignore[return-value]


def min_sizes(model) -> tuple[int, int, int]:
    """The smallest valid input: two steps per axis, so the deepest feature map holds more than
    one voxel (instance normalisation needs two)."""
    return tuple(2 * s for s in size_steps(model))  # type: ignore[return-value]


def input_shape(model, image_shape=None) -> tuple[int, int, int]:
    """The spatial shape of the test input: the model's sliding window for an image of
    ``image_shape`` (its training patch; no larger than the image), rounded down to valid sizes.

    Args:
        model: a ``SegmentationModel``.
        image_shape: ``(Z, Y, X)`` of the image cropped, or None (a synthetic input).
    """
    shape = tuple(image_shape) if image_shape is not None else tuple(model.patch_size)
    window = model.window(shape)
    sizes = []
    for w, n, step, least in zip(window, shape, size_steps(model), min_sizes(model)):
        sizes.append(max(least, min(int(w), int(n)) // step * step))
    return tuple(sizes)  # type: ignore[return-value]


def crop_input(model, image) -> np.ndarray:
    """The test input from an image ``(Z, Y, X)`` or ``(C, Z, Y, X)`` (any array-like: only the
    crop is read): the crop of :func:`input_shape` at its centre, padded by reflection along
    axes shorter than the smallest valid size, as raw intensities ``(1, C, z, y, x)`` float32."""
    if not hasattr(image, "shape"):
        image = np.asarray(image)
    model.check_image(image)
    spatial = tuple(int(n) for n in image.shape[-3:])
    shape = input_shape(model, spatial)
    region = []
    pads = [(0, 0)]
    for size, n in zip(shape, spatial):
        start = max(0, (n - size) // 2)
        region.append(slice(start, start + size))
        missing = max(0, size - n)
        pads.append((missing // 2, missing - missing // 2))
    lead = (slice(None),) if len(image.shape) == 4 else ()
    crop = np.asarray(image[(*lead, *region)], dtype=np.float32)
    if crop.ndim == 3:
        crop = crop[None]
    if any(p != (0, 0) for p in pads):
        crop = np.pad(crop, pads, mode="symmetric")
    return crop[None]


def synthetic_input(model, seed: int = 0) -> np.ndarray:
    """A synthetic test input for a model exported without an image: smooth random blobs (a
    Gaussian-filtered noise volume from ``seed``) spanning each channel's stored intensity range
    ``low..high``, of :func:`input_shape`, as ``(1, C, z, y, x)`` float32."""
    from scipy.ndimage import gaussian_filter

    shape = input_shape(model)
    rng = np.random.default_rng(seed)
    channels = []
    for low, high in zip(model.normalization.low, model.normalization.high):
        field = gaussian_filter(rng.normal(size=shape), sigma=2.0)
        field = (field - field.min()) / max(float(field.max() - field.min()), 1e-12)
        channels.append(low + field * (high - low))
    return np.stack(channels)[None].astype(np.float32)


def expected_output(network: torch.nn.Module, model, raw: np.ndarray) -> np.ndarray:
    """The test output: ``network`` (a ``ZooNetwork``) in float32 on the CPU, applied once to
    the whole test input ``raw`` ``(1, C, z, y, x)`` normalised as the model does."""
    x = torch.from_numpy(model.normalization.apply(raw[0])[None])
    with torch.inference_mode():
        return network(x).float().numpy()
