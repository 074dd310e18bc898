"""Sliding-window prediction of a volume, streamed slab by slab, block by block.

Windows are visited z-major and batched. After each batch, the z-slab that no remaining window
touches is finished: its blended probabilities are normalised, turned into labels and yielded as a
`RegionDone`, so a viewer can show results while the rest is still computing. The input is read
row by row and only the rows in flight are held, so volumes on disk (HDF5, zarr, memmap) are never
loaded whole; :mod:`.blocks` cuts wide volumes into blocks that give the same result.
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import precision
from ..threads import ThreadPolicy, compute_threads
from ._buffers import Accumulator, Rows, after_out_of_memory, depth_of, shift_window
from .blocks import Block, Normalize, plan_blocks, read_region
from .windows import Window, constant_weights, gaussian_weights

logger = logging.getLogger(__name__)

BLENDINGS = ("gaussian", "constant")
TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (2,), (3,), (4,))  # identity, flip z, flip y, flip x


@dataclass(frozen=True)
class RegionDone:
    """One finished region of the prediction: a z-slab over the full Y and X extent.

    Attributes:
        slices: ``(slice_z, slice_y, slice_x)`` of the region in the volume.
        labels: Class index per voxel, ``(z, Y, X)``, uint8 (int16 with more than 255 classes).
        probabilities: Class probabilities ``(K, z, Y, X)`` float32, or None when not asked for.
        windows_done: Windows processed so far.
        windows_total: Windows in the whole volume.
        block: Index of the block the region belongs to (see :func:`.blocks.plan_blocks`);
            a block's regions come one after the other, so a new index means the last is done.
    """

    slices: tuple[slice, slice, slice]
    labels: np.ndarray
    probabilities: np.ndarray | None
    windows_done: int
    windows_total: int
    block: int = 0


def iter_predict_volume(
    model: nn.Module,
    volume: Any,
    *,
    patch_size: Sequence[int],
    overlap: float = 0.5,
    blending: str = "gaussian",
    batch_size: int = 4,
    device: torch.device | str | None = None,
    probabilities: bool = False,
    tta: bool = False,
    memory_limit_bytes: int | None = None,
    block_shape: Sequence[int] | None = None,
    normalize: Normalize | None = None,
    blocks: Sequence[int] | None = None,
    amp: bool = True,
    first_region: Window | None = None,
) -> Generator[RegionDone, None, None]:
    """Predict a volume window by window, yielding each finished region as soon as it is done.

    The volume is read piece by piece (``normalize``, or a cast to float32, applied to each
    piece), so an h5py, zarr or memory-mapped volume is never loaded whole. Axes shorter than the
    patch are padded by reflection and cropped back. Overlapping windows are blended with
    ``blending`` weights; probabilities are the softmax of the logits (the sigmoid when the model
    has one output channel, whose label is then ``p > 0.5``). With ``tta``, each window is also
    predicted mirrored along z, along y and along x (4 passes) and the probabilities are averaged.
    Closing the generator stops the work at once.

    With ``block_shape``, the volume is predicted block by block (see :mod:`.blocks`): memory
    then depends on the block, not on the volume, and the result is the same.

    Args:
        model: Maps ``(B, C, z, y, x)`` to logits ``(B, K, z, y, x)``.
        volume: ``(Z, Y, X)`` (one channel) or ``(C, Z, Y, X)`` array-like.
        patch_size: Window size ``(z, y, x)``.
        overlap: Fraction of overlap between neighbouring windows, in ``[0, 1)``.
        blending: ``"gaussian"`` or ``"constant"``.
        batch_size: Windows per forward pass.
        device: Where the model runs; None means the device of the model's parameters.
        probabilities: Also yield the probabilities of each region.
        tta: Average over mirrored passes (4x the compute).
        memory_limit_bytes: Largest accumulator size kept on ``device``; larger ones live in CPU
            memory. None means: what fits in free GPU memory (always ``device`` off CUDA).
        block_shape: Largest block core ``(z, y, x)``; None predicts the volume as one block.
        normalize: Maps each ``(C, z, y, x)`` piece read to the float32 network input.
        blocks: Predict only these blocks of the plan (indices), e.g. one machine's share.
        amp: Mixed precision where the device runs it natively (see :mod:`.precision`):
            float16 on CUDA, bfloat16 on CPUs with AVX512-BF16 or AMX; False: float32.
        first_region: ``(z, y, x)`` slices to predict first, e.g. the slice on screen: the
            first region yielded holds its first z slice (see :func:`.blocks.plan_blocks`).

    Yields:
        `RegionDone` records whose slices tile the volume exactly once: z-slabs of each block,
        block after block (z-slabs of the whole volume, in increasing z, without blocks).
    """
    source = channels_first(volume)
    _check_options(patch_size, overlap, blending, batch_size)
    patch = tuple(int(p) for p in patch_size)
    plan = plan_blocks(source.shape[1:], patch, overlap, block_shape, first_region)
    if blocks is not None:
        plan = [plan[i] for i in blocks]
    run = _Run(model, source, patch, blending, batch_size, _resolve_device(model, device),
               probabilities, tta, memory_limit_bytes, normalize,
               sum(b.n_windows for b in plan), amp=amp)
    return _stream(run, plan)


@dataclass
class _Run:
    """The settings of one prediction, and its progress over the blocks."""

    model: nn.Module
    source: Any
    patch: tuple[int, int, int]
    blending: str
    batch_size: int
    device: torch.device
    probabilities: bool
    tta: bool
    memory_limit_bytes: int | None
    normalize: Normalize | None
    windows_total: int
    windows_done: int = 0
    amp: bool = True
    threads: ThreadPolicy | None = None  # set while the prediction runs

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.source.shape[1:])  # type: ignore[return-value]


def _stream(run: _Run, blocks: Sequence[Block]) -> Generator[RegionDone, None, None]:
    """The body of `iter_predict_volume`: the blocks one after the other."""
    weights = _blending_weights(run.blending, run.patch, run.device)
    was_training = run.model.training
    run.model.eval()
    try:
        with compute_threads() as run.threads:
            for block in blocks:
                yield from predict_block(run, block, weights)
    finally:
        run.model.train(was_training)


def predict_block(run: _Run, block: Block, weights: torch.Tensor,
                  ) -> Generator[RegionDone, None, None]:
    """Predict the core of one block, z-slab by z-slab.

    The block's windows are visited z-major in batches; the input rows they need are read as
    they come and the blended sums are kept for the rows in flight only. After each batch, the
    z-slab of the core that no remaining window touches is finished and yielded.
    """
    windows = block.windows
    origin = tuple(r.start for r in block.read)
    depth = depth_of(windows, run.batch_size, run.patch[0])
    rows = Rows(partial(_read_rows, run, block), block, depth)
    acc: Accumulator | None = None
    n_done, size = 0, run.batch_size
    z_done = block.core[0].start
    while n_done < len(windows):
        if run.threads is not None:
            run.threads.update()
        batch = windows[n_done:n_done + size]
        # Inference mode only around the work: never leak it to the consumer across a yield.
        with torch.inference_mode():
            z_first, z_last = batch[0][0].start, batch[-1][0].stop
            local = [shift_window(w, (z_first, origin[1], origin[2])) for w in batch]
            try:
                inputs = _gather(rows.get(z_first, z_last), local, run.device)
                probs = _forward(run.model, _to_device(inputs, run.device), run.tta, run.amp)
            except torch.cuda.OutOfMemoryError:
                size, acc = after_out_of_memory(size, acc)
                continue
            if acc is None:
                acc = Accumulator(probs.shape[1], block, depth, run.device,
                                  run.memory_limit_bytes, run.probabilities)
            acc.add(probs, weights, batch)
            n_done += len(batch)
            run.windows_done += len(batch)
            z_next = windows[n_done][0].start if n_done < len(windows) else block.core[0].stop
            z_stop = min(z_next, block.core[0].stop)
            region = acc.finish(z_done, z_stop) if z_stop > z_done else None
            acc.drop_before(z_next)
        if region is not None:
            z_done = z_stop
            yield RegionDone(*region, windows_done=run.windows_done,
                             windows_total=run.windows_total, block=block.index)


def _read_rows(run: _Run, block: Block, z0: int, z1: int) -> np.ndarray:
    """Rows ``z0:z1`` (padded coordinates) of a block's read region, normalised."""
    region = (slice(z0, z1), *block.read[1:])
    return read_region(run.source, region, run.shape, run.patch, run.normalize)


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
    block_shape: Sequence[int] | None = None,
    normalize: Normalize | None = None,
    amp: bool = True,
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
        memory_limit_bytes=memory_limit_bytes, block_shape=block_shape, normalize=normalize,
        amp=amp,
    ):
        part = region.probabilities if probabilities else region.labels
        if out is None:
            spatial = tuple(np.shape(volume)[-3:])
            out = np.empty(part.shape[:-3] + spatial, dtype=part.dtype)
        out[(Ellipsis, *region.slices)] = part
        logger.debug("Predicted %d/%d windows", region.windows_done, region.windows_total)
    assert out is not None  # at least one region is always yielded
    return out


def channels_first(volume: Any) -> Any:
    """A ``(C, Z, Y, X)`` view of a ``(Z, Y, X)`` or ``(C, Z, Y, X)`` array-like, not read."""
    if not hasattr(volume, "shape") or not hasattr(volume, "__getitem__"):
        volume = np.asarray(volume)
    shape = tuple(volume.shape)
    ndim = len(shape)
    if ndim not in (3, 4) or 0 in shape:
        raise ValueError(f"Expected a non-empty volume (Z, Y, X) or (C, Z, Y, X), got shape {shape}.")
    if ndim == 4:
        return volume
    if isinstance(volume, np.ndarray):
        return volume[None]
    return _OneChannel(volume)


class _OneChannel:
    """A lazily read ``(Z, Y, X)`` array seen as ``(1, Z, Y, X)``."""

    def __init__(self, data: Any) -> None:
        self.data = data
        self.shape = (1, *data.shape)
        self.ndim = 4
        self.dtype = data.dtype

    def __getitem__(self, key: tuple) -> np.ndarray:
        return np.asarray(self.data[key[1:]])[None]


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


def _forward(model: nn.Module, inputs: torch.Tensor, tta: bool, amp: bool = True) -> torch.Tensor:
    """Class probabilities ``(B, K, z, y, x)`` float32 of a batch ``(B, C, z, y, x)``."""
    flips = TTA_FLIPS if tta else ((),)
    total = None
    for dims in flips:
        x = inputs.flip(dims) if dims else inputs
        with precision.autocast(inputs.device, amp):
            logits = model(x)
        _check_logits(logits, inputs)
        probs = _activate(logits.float())
        probs = probs.flip(dims) if dims else probs
        total = probs if total is None else total.add_(probs)
    return total if len(flips) == 1 else total.div_(len(flips))


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


