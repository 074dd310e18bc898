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

from ..call_checks import check_network, check_volume
from ..config import PredictConfig, predict_config
from ..devices import resolve_device
from ..models.slices import with_planes
from ..precision import autocast
from ..threads import ThreadPolicy, compute_threads
from ._buffers import Accumulator, Rows, after_out_of_memory, depth_of, shift_window
from .blocks import Block, Normalize, plan_blocks, read_region
from .windows import Window, constant_weights, gaussian_weights

logger = logging.getLogger(__name__)

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
    config: PredictConfig | None = None,
    normalize: Normalize | None = None,
    blocks: Sequence[int] | None = None,
    memory_limit_bytes: int | None = None,
    trained_amp: bool = True,
    first_region: Window | None = None,
    **overrides: Any,
) -> Generator[RegionDone, None, None]:
    """Predict a volume window by window, yielding each finished region as soon as it is done.

    The volume is read piece by piece (``normalize``, or a cast to float32, applied to each
    piece), so an h5py, zarr or memory-mapped volume is never loaded whole. Axes shorter than the
    patch are padded by reflection and cropped back. Overlapping windows are blended with
    ``config.blending`` weights; probabilities are the softmax of the logits (the sigmoid when
    the model has one output channel, whose label is then ``p > 0.5``). With ``config.tta``,
    each window is also predicted mirrored along z, along y and along x (4 passes) and the
    probabilities are averaged. Closing the generator stops the work at once.

    With ``config.block_shape``, the volume is predicted block by block (see :mod:`.blocks`):
    memory then depends on the block, not on the volume, and the result is the same.

    Args:
        model: Maps ``(B, C, z, y, x)`` to logits ``(B, K, z, y, x)``. It is never changed: a 2D
            :class:`.SliceNetwork` predicts along ``config.planes`` through a view that shares
            its weights, and it must already be on ``config.device``.
        volume: ``(Z, Y, X)`` (one channel) or ``(C, Z, Y, X)`` array-like.
        patch_size: Window size ``(z, y, x)``.
        config: The prediction settings (see :class:`.PredictConfig`); default
            ``PredictConfig()``. ``device=None`` means the device of the model's parameters.
        normalize: Maps each ``(C, z, y, x)`` piece read to the float32 network input.
        blocks: Predict only these blocks of the plan (indices), e.g. one machine's share.
        memory_limit_bytes: Largest accumulator size kept on the device; larger ones live in CPU
            memory. None means: what fits in free GPU memory (always the device off CUDA).
        trained_amp: What ``config.amp=None`` means: the precision the network was trained in
            (a bare network: mixed precision on).
        first_region: ``(z, y, x)`` slices to predict first, e.g. the slice on screen: the
            first region yielded holds its first z slice (see :func:`.blocks.plan_blocks`).
        **overrides: Fields of :class:`.PredictConfig` replacing those of ``config``, e.g.
            ``overlap=0.25, batch_size=2``.

    Yields:
        `RegionDone` records whose slices tile the volume exactly once: z-slabs of each block,
        block after block (z-slabs of the whole volume, in increasing z, without blocks). Their
        ``labels`` are class indices ``0 .. K-1`` (see :meth:`.SegmentationModel.iter_predict`
        for the painted values).

    Raises:
        TypeError: An override is not a field of :class:`.PredictConfig`.
        ValueError: A bad setting, volume or patch size; planes for a 3D network.
    """
    config = predict_config(config, **overrides)
    check_network(model)
    check_volume(volume)
    source = channels_first(volume)
    _check_patch_size(patch_size)
    patch = tuple(int(p) for p in patch_size)
    network = with_planes(model, config.planes)
    plan = plan_blocks(source.shape[1:], patch, config.overlap, config.block_shape, first_region)
    if blocks is not None:
        plan = [plan[i] for i in blocks]
    run = _Run(network, source, patch, config, _resolve_device(model, config.device),
               memory_limit_bytes, normalize, sum(b.n_windows for b in plan),
               amp=trained_amp if config.amp is None else config.amp)
    return _stream(run, plan)


@dataclass
class _Run:
    """The settings of one prediction, and its progress over the blocks."""

    model: nn.Module
    source: Any
    patch: tuple[int, int, int]
    config: PredictConfig
    device: torch.device
    memory_limit_bytes: int | None
    normalize: Normalize | None
    windows_total: int
    amp: bool
    windows_done: int = 0
    threads: ThreadPolicy | None = None  # set while the prediction runs

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.source.shape[1:])  # type: ignore[return-value]


def _stream(run: _Run, blocks: Sequence[Block]) -> Generator[RegionDone, None, None]:
    """The body of `iter_predict_volume`: the blocks one after the other."""
    weights = _blending_weights(run.config.blending, run.patch, run.device)
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
    depth = depth_of(windows, run.config.batch_size, run.patch[0])
    rows = Rows(partial(_read_rows, run, block), block, depth)
    acc: Accumulator | None = None
    n_done, size = 0, run.config.batch_size
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
                probs = _forward(run.model, _to_device(inputs, run.device), run.config.tta, run.amp)
            except torch.cuda.OutOfMemoryError:
                size, acc = after_out_of_memory(size, acc)
                continue
            if acc is None:
                acc = Accumulator(probs.shape[1], block, depth, run.device,
                                  run.memory_limit_bytes, run.config.needs_probabilities)
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
    volume: Any,
    *,
    patch_size: Sequence[int],
    config: PredictConfig | None = None,
    normalize: Normalize | None = None,
    memory_limit_bytes: int | None = None,
    trained_amp: bool = True,
    **overrides: Any,
) -> np.ndarray:
    """Predict a whole volume with a bare network (see `iter_predict_volume` for the options).

    Returns **class indices** ``0 .. K-1``, not the painted label values; a trained
    :class:`.SegmentationModel` maps them to the painted values in :meth:`~.SegmentationModel.predict`.

    Example:
        >>> import numpy as np
        >>> from napari_seg3d.engine import UNet, predict_volume
        >>> net = UNet(in_channels=1, out_channels=2, base_filters=4, levels=2)
        >>> volume = np.random.default_rng(0).random((9, 20, 20), dtype=np.float32)
        >>> predict_volume(net, volume, patch_size=(8, 16, 16), overlap=0.25).shape
        (9, 20, 20)

    Returns:
        Class indices ``(Z, Y, X)`` uint8 (int16 with more than 255 classes), or, with
        ``probabilities=True``, probabilities ``(K, Z, Y, X)`` float32.
    """
    config = predict_config(config, **overrides)
    out: np.ndarray | None = None
    for region in iter_predict_volume(model, volume, patch_size=patch_size, config=config,
                                      normalize=normalize, memory_limit_bytes=memory_limit_bytes,
                                      trained_amp=trained_amp):
        part = region.probabilities if config.probabilities else region.labels
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


def _check_patch_size(patch_size: Sequence[int]) -> None:
    if len(patch_size) != 3 or min(int(p) for p in patch_size) < 1:
        raise ValueError(f"patch_size must be three positive integers (z, y, x), got {patch_size}.")


def _resolve_device(model: nn.Module, device: str | None) -> torch.device:
    """The requested device (``"auto"`` resolved), else the device of the model's first
    parameter, else the CPU."""
    if device is not None:
        return resolve_device(device)  # a sentence for an unknown or unavailable device
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
        with autocast(inputs.device, amp):
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


