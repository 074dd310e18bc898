"""One training step and one validation, as functions of the trainer's state: the loop and
``benchmarks/bench_train.py`` run the same step."""

from __future__ import annotations

import contextlib
import warnings
from typing import TYPE_CHECKING

import numpy as np
import torch

from .. import precision
from ..errors import Seg3DError
from .losses import dice_per_class, is_binary_loss
from .regularizer import edge_aware_smoothness
from .sampling import augment
from .schedule import batch_rng, learning_rate_at

if TYPE_CHECKING:
    from .trainer import Trainer


def make_batch(trainer: Trainer, iteration: int):
    cfg = trainer.config
    rng, gen = batch_rng(cfg.seed, iteration)
    b = trainer.sampler.sample(cfg.batch_size, rng)
    image, target, mask = (torch.from_numpy(b.image), torch.from_numpy(b.target),
                           torch.from_numpy(b.mask))
    if cfg.augment:
        vs = trainer.model.voxel_size  # a 2D network treats every plane as isotropic
        iso_yx = trainer.sliced or vs is None or abs(vs[1] - vs[2]) <= 1e-3 * max(vs[1], vs[2])
        image, target, mask = augment(image, target, mask, gen, rotate_yx=iso_yx)
    if trainer.device.type == "cuda":
        image, target, mask = image.pin_memory(), target.pin_memory(), mask.pin_memory()
    return image, target, mask


def _smoothness(trainer: Trainer, logits: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """The edge-aware smoothness loss of a batch (every voxel, annotated or not)."""
    logits = logits.float()
    if is_binary_loss(trainer.config.loss):
        fg = torch.sigmoid(logits)
        probs = torch.cat([1 - fg, fg], 1)
    else:
        probs = torch.softmax(logits, 1)
    spacing = (trainer.model.voxel_size if not trainer.sliced else None) or (1.0, 1.0, 1.0)
    return edge_aware_smoothness(probs, image, spacing=spacing)


def _batch_loss(trainer: Trainer, net, use_amp: bool, image, target, mask) -> torch.Tensor:
    with precision.autocast(image.device, use_amp):
        logits = net(image)
    loss = trainer.loss_fn(logits, target, mask)
    if trainer.config.smoothness > 0:
        loss = loss + trainer.config.smoothness * _smoothness(trainer, logits, image)
    return loss


def _backward(trainer: Trainer, net, optimizer, scaler, use_amp: bool, image, target, mask) -> float:
    """Gradients of the batch loss, in ``trainer.micro_batches`` parts (gradient accumulation);
    on CUDA out of memory the parts double and the step is redone, with a warning. Returns the
    loss."""
    while True:
        optimizer.zero_grad(set_to_none=True)
        parts = trainer.micro_batches
        try:
            total = 0.0
            for chunk in zip(*(t.tensor_split(parts) for t in (image, target, mask))):
                share = len(chunk[0]) / len(image)
                loss = _batch_loss(trainer, net, use_amp, *chunk) * share
                scaler.scale(loss).backward()
                total += float(loss.detach())
            return total
        except torch.cuda.OutOfMemoryError:
            optimizer.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            if parts >= len(image):
                raise Seg3DError("Out of GPU memory even with one patch at a time: choose a "
                                 "smaller patch size, or train on the CPU.") from None
            trainer.micro_batches = min(2 * parts, len(image))
            warnings.warn(f"Out of GPU memory with {len(image) // parts} patches at a time: "
                          f"training on {trainer.micro_batches} parts of the batch.",
                          RuntimeWarning, stacklevel=2)


def _predict_classes(net: torch.nn.Module, x: torch.Tensor, binary: bool) -> torch.Tensor:
    """Classes of a validation chunk; one patch at a time after CUDA out of memory."""
    try:
        logits = net(x).float()
    except torch.cuda.OutOfMemoryError:
        if len(x) == 1:
            raise Seg3DError("Out of GPU memory even with one patch at a time: choose a "
                             "smaller patch size, or train on the CPU.") from None
        torch.cuda.empty_cache()
        return torch.cat([_predict_classes(net, part, binary) for part in x.split(1)])
    return (logits[:, 0] > 0).long() if binary else logits.argmax(1)


@torch.no_grad()
def validate(trainer: Trainer, patches) -> tuple[float, ...] | None:
    """Dice per class on the held-out annotations, ``None`` when there are none."""
    if not patches:
        return None
    net = trainer.model.network
    net.eval()
    binary = is_binary_loss(trainer.config.loss)
    k = len(trainer.model.class_values)
    preds, targets, masks = [], [], []
    for i in range(0, len(patches), 2):
        chunk = patches[i:i + 2]
        x = torch.from_numpy(np.stack([p[0] for p in chunk])).to(trainer.device)
        with precision.autocast(trainer.device, trainer.config.amp):
            preds.append(_predict_classes(net, x, binary).cpu())
        targets.append(torch.from_numpy(np.stack([p[1] for p in chunk])))
        masks.append(torch.from_numpy(np.stack([p[2] for p in chunk])))
    net.train()
    return tuple(dice_per_class(torch.cat(preds), torch.cat(targets), torch.cat(masks), k))


def train_step(trainer: Trainer, net, optimizer, scaler, batch,
               iteration: int) -> tuple[float, float]:
    """One optimisation step on ``batch`` ``(image, target, mask)`` on the device: the learning
    rate of ``iteration``, forward, loss, backward (in parts after CUDA out of memory),
    gradient clipping, AdamW. Returns ``(loss, learning rate)``."""
    cfg = trainer.config
    lr = learning_rate_at(iteration, cfg.iterations, cfg.learning_rate)
    for group in optimizer.param_groups:
        group["lr"] = lr
    with _step_rng(net, cfg.seed * 1_000_003 + iteration, batch[0].device):
        loss = _backward(trainer, net, optimizer, scaler, cfg.amp, *batch)
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(net.parameters(), 12.0)
    scaler.step(optimizer)
    scaler.update()
    return loss, lr


def _step_rng(net, seed: int, device: torch.device):
    """Random layers (dropout) draw from torch's global generator: seed it for the step, so a
    resumed run continues exactly, and put it back afterwards. Networks without them (the
    default) leave the global generator alone."""
    stochastic = any(isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0
                     for m in net.modules())
    if not stochastic:
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def seeded():
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            yield

    return seeded()
