"""Sliding-window prediction of a whole volume, streamed slab by slab.

Windows are visited z-major and batched. After each batch, the z-slab that no remaining window
touches is finished: its blended probabilities are normalised, turned into labels and yielded as a
`RegionDone`, so a viewer can show results while the rest is still computing.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Generator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .errors import Seg3DError
from .windows import (
    Window,
    constant_weights,
    gaussian_weights,
    pad_for_window,
    window_positions,
)

logger = logging.getLogger(__name__)

BLENDINGS = ("gaussian", "constant")
TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (2,), (3,), (4,))  # identity, flip z, flip y, flip x
_CUDA_HEADROOM_BYTES = 1 << 30


@dataclass(frozen=True)
class RegionDone:
    """One finished region of the prediction: a z-slab over the full Y and X extent.

    Attributes:
        slices: ``(slice_z, slice_y, slice_x)`` of the region in the volume.
        labels: Class index per voxel, ``(z, Y, X)``, uint8 (int16 with more than 255 classes).
        probabilities: Class probabilities ``(K, z, Y, X)`` float32, or None when not asked for.
        windows_done: Windows processed so far.
        windows_total: Windows in the whole volume.
    """

    slices: tuple[slice, slice, slice]
    labels: np.ndarray
    probabilities: np.ndarray | None
    windows_done: int
    windows_total: int


def iter_predict_volume(
    model: nn.Module,
    volume: np.ndarray,
    *,
    patch_size: Sequence[int],
    overlap: float = 0.5,
    blending: str = "gaussian",
    batch_size: int = 4,
    device: torch.device | str | None = None,
    probabilities: bool = False,
    tta: bool = False,
    memory_limit_bytes: int | None = None,
) -> Generator[RegionDone, None, None]:
    """Predict a volume window by window, yielding each z-slab as soon as it is finished.

    The volume is used as given (cast to float32, not normalised). Axes shorter than the patch are
    padded by reflection and cropped back. Overlapping windows are blended with ``blending``
    weights; probabilities are the softmax of the logits (the sigmoid when the model has one
    output channel, whose label is then ``p > 0.5``). With ``tta``, each window is also predicted
    mirrored along z, along y and along x (4 passes) and the probabilities are averaged.
    Closing the generator stops the work at once.

    Args:
        model: Maps ``(B, C, z, y, x)`` to logits ``(B, K, z, y, x)``.
        volume: ``(Z, Y, X)`` (one channel) or ``(C, Z, Y, X)``.
        patch_size: Window size ``(z, y, x)``.
        overlap: Fraction of overlap between neighbouring windows, in ``[0, 1)``.
        blending: ``"gaussian"`` or ``"constant"``.
        batch_size: Windows per forward pass.
        device: Where the model runs; None means the device of the model's parameters.
        probabilities: Also yield the probabilities of each region.
        tta: Average over mirrored passes (4x the compute).
        memory_limit_bytes: Largest accumulator size kept on ``device``; larger ones live in CPU
            memory. None means: what fits in free GPU memory (always ``device`` off CUDA).

    Yields:
        `RegionDone` records whose slices tile the volume exactly once, in increasing z.
    """
    data = _as_channels_first(volume)
    _check_options(patch_size, overlap, blending, batch_size)
    patch = tuple(int(p) for p in patch_size)
    device = _resolve_device(model, device)
    return _stream(model, data, patch, overlap, blending, batch_size, device, probabilities, tta,
                   memory_limit_bytes)


def _stream(
    model: nn.Module, data: np.ndarray, patch: tuple[int, int, int], overlap: float,
    blending: str, batch_size: int, device: torch.device, probabilities: bool, tta: bool,
    memory_limit_bytes: int | None,
) -> Generator[RegionDone, None, None]:
    """The body of `iter_predict_volume`, on a validated ``(C, Z, Y, X)`` float32 volume."""
    source = _source_tensor(data, patch)
    windows = sorted(
        window_positions(data.shape[1:], patch, overlap), key=lambda w: tuple(s.start for s in w)
    )
    weights = _blending_weights(blending, patch, device)
    shape = tuple(data.shape[1:])
    was_training = model.training
    model.eval()
    acc: tuple[torch.Tensor, torch.Tensor] | None = None
    z_done, n_done, size = 0, 0, batch_size
    try:
        while n_done < len(windows):
            batch = windows[n_done:n_done + size]
            # Inference mode only around the work: never leak it to the consumer across a yield.
            with torch.inference_mode():
                try:
                    probs = _forward(model, _to_device(_gather(source, batch, device), device), tta)
                except torch.cuda.OutOfMemoryError:
                    size, acc = _after_out_of_memory(size, acc)
                    continue
                if acc is None:
                    acc = _allocate(probs.shape[1], source.shape[1:], device, memory_limit_bytes)
                _accumulate(*acc, probs, weights, batch)
                n_done += len(batch)
                z_stop = min(_finished_z(windows, n_done, source.shape[1]), shape[0])
                region = _finish_slab(*acc, z_done, z_stop, shape, probabilities)
            if region is not None:
                z_done = z_stop
                yield RegionDone(*region, windows_done=n_done, windows_total=len(windows))
    finally:
        model.train(was_training)


def predict_volume(
    model: nn.Module,
    volume: np.ndarray,
    *,
    patch_size: Sequence[int],
    overlap: float = 0.5,
    blending: str = "gaussian",
    batch_size: int = 4,
    device: torch.device | str | None = None,
    probabilities: bool = False,
    tta: bool = False,
    memory_limit_bytes: int | None = None,
) -> np.ndarray:
    """Predict a whole volume with a sliding window (see `iter_predict_volume` for the options).

    Returns:
        Labels ``(Z, Y, X)`` uint8 (int16 with more than 255 classes), or, with
        ``probabilities=True``, probabilities ``(K, Z, Y, X)`` float32.
    """
    out: np.ndarray | None = None
    for region in iter_predict_volume(
        model, volume, patch_size=patch_size, overlap=overlap, blending=blending,
        batch_size=batch_size, device=device, probabilities=probabilities, tta=tta,
        memory_limit_bytes=memory_limit_bytes,
    ):
        part = region.probabilities if probabilities else region.labels
        if out is None:
            spatial = tuple(np.shape(volume)[-3:])
            out = np.empty(part.shape[:-3] + spatial, dtype=part.dtype)
        out[(Ellipsis, *region.slices)] = part
        logger.debug("Predicted %d/%d windows", region.windows_done, region.windows_total)
    assert out is not None  # at least one region is always yielded
    return out


def _as_channels_first(volume: np.ndarray) -> np.ndarray:
    """``(Z, Y, X)`` or ``(C, Z, Y, X)`` to a float32 ``(C, Z, Y, X)`` array."""
    data = np.asarray(volume, dtype=np.float32)
    if data.ndim == 3:
        data = data[None]
    if data.ndim != 4 or 0 in data.shape:
        raise ValueError(
            f"Expected a non-empty volume (Z, Y, X) or (C, Z, Y, X), got shape {np.shape(volume)}."
        )
    return data


def _source_tensor(data: np.ndarray, patch: Sequence[int]) -> torch.Tensor:
    """The volume ``(C, Z, Y, X)`` padded for the windows, as a CPU tensor (no copy if possible)."""
    padded, _ = pad_for_window(data, patch, mode="reflect")
    with warnings.catch_warnings():  # a read-only array is fine: the tensor is only read
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.ascontiguousarray(padded))


def _check_options(patch_size: Sequence[int], overlap: float, blending: str, batch: int) -> None:
    if len(patch_size) != 3 or min(int(p) for p in patch_size) < 1:
        raise ValueError(f"patch_size must be three positive integers (z, y, x), got {patch_size}.")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}.")
    if blending not in BLENDINGS:
        raise ValueError(f"Unknown blending {blending!r}; choose one of {', '.join(BLENDINGS)}.")
    if batch < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch}.")


def _resolve_device(model: nn.Module, device: torch.device | str | None) -> torch.device:
    """The requested device, else the device of the model's first parameter, else the CPU."""
    if device is not None:
        return torch.device(device)
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _blending_weights(blending: str, patch: Sequence[int], device: torch.device) -> torch.Tensor:
    if blending == "gaussian":
        return gaussian_weights(patch, device=device)
    return constant_weights(patch, device=device)


def _gather(source: torch.Tensor, batch: Sequence[Window], device: torch.device) -> torch.Tensor:
    """Stack the crops of ``source`` ``(C, Z, Y, X)`` into ``(B, C, z, y, x)``.

    For a CUDA ``device`` the stack is written straight into pinned memory, for an asynchronous
    copy (the caching host allocator keeps the buffer alive until the copy is done).
    """
    crops = [source[(slice(None), *w)] for w in batch]
    if device.type != "cuda":
        return torch.stack(crops)
    out = torch.empty((len(crops), *crops[0].shape), dtype=source.dtype, pin_memory=True)
    return torch.stack(crops, out=out)


def _to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    return batch.to(device, non_blocking=batch.is_pinned())


def _forward(model: nn.Module, inputs: torch.Tensor, tta: bool) -> torch.Tensor:
    """Class probabilities ``(B, K, z, y, x)`` float32 of a batch ``(B, C, z, y, x)``."""
    flips = TTA_FLIPS if tta else ((),)
    total = None
    for dims in flips:
        x = inputs.flip(dims) if dims else inputs
        with _autocast(inputs.device):
            logits = model(x)
        _check_logits(logits, inputs)
        probs = _activate(logits.float())
        probs = probs.flip(dims) if dims else probs
        total = probs if total is None else total.add_(probs)
    return total if len(flips) == 1 else total.div_(len(flips))


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """float16 autocast on CUDA; nothing elsewhere."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def _check_logits(logits: torch.Tensor, inputs: torch.Tensor) -> None:
    shape = tuple(getattr(logits, "shape", ()))
    if len(shape) != 5 or shape[:1] + shape[2:] != tuple(inputs.shape[:1] + inputs.shape[2:]):
        raise ValueError(
            f"The model must map (B, C, z, y, x) {tuple(inputs.shape)} to logits (B, K, z, y, x) "
            f"of the same spatial size; it returned {shape}."
        )


def _activate(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over classes (dim 1), or the sigmoid for a single output channel."""
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


def _after_out_of_memory(size: int, acc):
    """The batch size and accumulators to retry with after a CUDA out-of-memory error: half the
    windows at a time, then (at one window) the accumulators moved to CPU memory; a
    :class:`Seg3DError` when nothing is left to give. Each step is announced as a warning."""
    torch.cuda.empty_cache()
    if size > 1:
        warnings.warn(f"Out of GPU memory predicting {size} windows at a time: retrying with "
                      f"{size // 2}.", RuntimeWarning, stacklevel=3)
        return size // 2, acc
    if acc is not None and acc[0].device.type == "cuda":
        warnings.warn("Out of GPU memory with one window at a time: moving the blended "
                      "predictions to CPU memory and retrying.", RuntimeWarning, stacklevel=3)
        return size, tuple(t.cpu() for t in acc)
    raise Seg3DError("Out of GPU memory even with one window at a time: use a model trained "
                     "with a smaller patch, or predict on the CPU (device cpu).")


def _allocate(
    n_classes: int, shape: Sequence[int], device: torch.device, memory_limit_bytes: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zeroed accumulators: probability sum ``(K, Z, Y, X)`` and weight sum ``(Z, Y, X)``.

    They go on ``device`` when they fit (``memory_limit_bytes``, or on CUDA the free memory less
    a headroom), otherwise in CPU memory. Both are float32.
    """
    n_bytes = 4 * (n_classes + 1) * int(np.prod(shape))
    if memory_limit_bytes is not None:
        fits = n_bytes <= memory_limit_bytes
    elif device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        fits = n_bytes <= free - max(_CUDA_HEADROOM_BYTES, total // 10)
    else:
        fits = True
    if not fits:
        logger.info("Accumulating %.2f GB of predictions in CPU memory", n_bytes / 1e9)
    where = device if fits else torch.device("cpu")
    prob_sum = torch.zeros((n_classes, *shape), dtype=torch.float32, device=where)
    weight_sum = torch.zeros(tuple(shape), dtype=torch.float32, device=where)
    return prob_sum, weight_sum


def _accumulate(
    prob_sum: torch.Tensor, weight_sum: torch.Tensor, probs: torch.Tensor, weights: torch.Tensor,
    batch: Sequence[Window],
) -> None:
    """Add ``probs * weights`` of each window ``(B, K, z, y, x)`` and the weights in place."""
    probs = probs.to(prob_sum.device)
    weights = weights.to(prob_sum.device)
    for window_probs, window in zip(probs, batch):
        # in place: no (B, K, z, y, x) temporary (0.20 -> 0.13 s per 4 x 128^3 batch on the CPU)
        prob_sum[(slice(None), *window)].addcmul_(window_probs, weights)
        weight_sum[window] += weights


def _finished_z(windows: Sequence[Window], n_done: int, depth: int) -> int:
    """First z that a window not yet processed touches (``depth`` when all are done).

    Assumes ``windows`` sorted by z start.
    """
    return windows[n_done][0].start if n_done < len(windows) else depth


def _normalise(prob_sum: torch.Tensor, weight_sum: torch.Tensor) -> torch.Tensor:
    """Blended probabilities ``(K, z, y, x)``: accumulated sum over accumulated weight."""
    return prob_sum / weight_sum.clamp_min(torch.finfo(weight_sum.dtype).tiny)


def _labels(probs: torch.Tensor) -> torch.Tensor:
    """Labels ``(z, y, x)`` from probabilities ``(K, z, y, x)``: argmax, or ``p > 0.5`` if K is 1."""
    n_classes = probs.shape[0]
    if n_classes == 1:
        return (probs[0] > 0.5).to(torch.uint8)
    # max().indices equals argmax (ties included) and is ~8x faster on the CPU
    return probs.max(dim=0).indices.to(torch.uint8 if n_classes <= 255 else torch.int16)


def _finish_slab(
    prob_sum: torch.Tensor, weight_sum: torch.Tensor, z_start: int, z_stop: int,
    shape: Sequence[int], with_probabilities: bool,
) -> tuple[Window, np.ndarray, np.ndarray | None] | None:
    """Slices, labels and optional probabilities of ``z_start:z_stop`` cropped to ``shape``.

    Returns None when the slab is empty.
    """
    if z_stop <= z_start:
        return None
    slices = (slice(z_start, z_stop), slice(0, shape[1]), slice(0, shape[2]))
    region_sum, region_weight = prob_sum[(slice(None), *slices)], weight_sum[slices]
    if with_probabilities or region_sum.shape[0] == 1:
        probs = _normalise(region_sum, region_weight)
        labels = _labels(probs).cpu().numpy()
        return slices, labels, probs.cpu().numpy() if with_probabilities else None
    # the weight sum is positive, so the argmax of the sums is the argmax of the probabilities
    return slices, _labels(region_sum).cpu().numpy(), None
