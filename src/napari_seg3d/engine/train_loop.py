"""The training loop behind :meth:`Trainer.run`: one step, validation, best-model tracking."""

from __future__ import annotations

import copy
import time
import warnings
from typing import TYPE_CHECKING, Generator

import numpy as np
import torch

from . import precision
from .errors import Seg3DError
from .losses import dice_per_class, is_binary_loss
from .model_file import SegmentationModel
from .prefetch import Prefetcher
from .regularizer import edge_aware_smoothness
from .sampling import augment

if TYPE_CHECKING:
    from .train import Trainer, TrainProgress, TrainResult

_VAL_PATCHES = 16
_BEST_MARGIN = 0.05


def _make_batch(trainer: Trainer, iteration: int):
    from .train import batch_rng

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


def _snapshot(trainer: Trainer, iteration: int, optimizer) -> SegmentationModel:
    m = trainer.model
    net = copy.deepcopy(m.network).cpu()
    return SegmentationModel(
        network=net, model_config=m.model_config, train_config=trainer.config,
        class_values=m.class_values, normalization=m.normalization, in_channels=m.in_channels,
        class_names=m.class_names, voxel_size=m.voxel_size, iteration=iteration,
        history=copy.deepcopy(m.history), optimizer_state=_cpu_state(optimizer.state_dict()))


def _cpu_state(state):
    if isinstance(state, torch.Tensor):
        return state.detach().cpu().clone()
    if isinstance(state, dict):
        return {k: _cpu_state(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_cpu_state(v) for v in state)
    return state


def _score(val_dice, history) -> float:
    if val_dice is not None:
        finite = [d for d in val_dice if np.isfinite(d)]
        return float(np.mean(finite)) if finite else -1.0
    recent = history["loss"][-20:]
    return -float(np.mean(recent)) if recent else -np.inf


def _call_loggers(trainer: Trainer, method: str, *args) -> None:
    """Call ``method`` of every logger; one that raises is dropped with a warning (a full disk
    or a broken logger must not cost the training)."""
    for logger in list(trainer.loggers):
        try:
            getattr(logger, method)(trainer, *args) if method == "log" else getattr(logger, method)()
        except Exception as e:  # noqa: BLE001 - any logger failure
            trainer.loggers.remove(logger)
            warnings.warn(f"{type(logger).__name__} stopped logging: {e}", RuntimeWarning,
                          stacklevel=2)


def training_loop(trainer: Trainer) -> Generator[TrainProgress, np.ndarray | None, TrainResult]:
    from .train import (TrainerUpdate, TrainProgress, TrainResult, eta, learning_rate_at,
                        self_training_starts)

    cfg, dev, m = trainer.config, trainer.device, trainer.model
    net = m.network.to(dev).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    if trainer.optimizer_state is not None:
        optimizer.load_state_dict(trainer.optimizer_state)
    use_amp = cfg.amp
    # float16 needs loss scaling; bfloat16 (CPU) has float32's range and does not
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and dev.type == "cuda")
    val_patches = trainer.sampler.validation_patches(_VAL_PATCHES, cfg.seed)
    best, best_score = None, -np.inf
    voxels = cfg.batch_size * int(np.prod(cfg.patch_size))
    step_time, wait_frac, it = float("nan"), 0.0, trainer.start_iteration
    stopped, preview = False, None
    rounds = self_training_starts(cfg)
    if any(r <= trainer.start_iteration for r in rounds):  # resumed after self-training began
        preview = trainer.self_train(trainer.start_iteration)
    with Prefetcher(lambda i: _make_batch(trainer, i), range(trainer.start_iteration, cfg.iterations)) as pf:
        for it in range(trainer.start_iteration, cfg.iterations):
            if trainer._stop.is_set():
                stopped = True
                break
            if it in rounds and it > trainer.start_iteration:
                preview = pf.restart(range(it, cfg.iterations), lambda it=it: trainer.self_train(it))
            t0 = time.perf_counter()
            image, target, mask = (t.to(dev, non_blocking=True) for t in pf.get(it))
            t_data = time.perf_counter() - t0
            lr = learning_rate_at(it, cfg.iterations, cfg.learning_rate)
            for group in optimizer.param_groups:
                group["lr"] = lr
            torch.manual_seed(cfg.seed * 1_000_003 + it)
            loss_value = _backward(trainer, net, optimizer, scaler, use_amp, image, target, mask)
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(net.parameters(), 12.0)
            scaler.step(optimizer)
            scaler.update()
            dt = time.perf_counter() - t0
            step_time = dt if not np.isfinite(step_time) else 0.9 * step_time + 0.1 * dt
            wait_frac = 0.9 * wait_frac + 0.1 * (t_data / max(dt, 1e-9))
            m.history["loss"].append(loss_value)
            val_dice, is_best = None, False
            last_it = it + 1 == cfg.iterations
            if (it + 1) % cfg.validate_every == 0 or last_it:
                val_dice = validate(trainer, val_patches)
                if val_dice is not None:
                    m.history["val_dice"].append(list(val_dice))
                    m.history["val_iteration"].append(it + 1)
                score = _score(val_dice, m.history)
                # Held-out strokes are few and easy (inside objects, far from borders), so their
                # Dice saturates early and is noisy: on the nuclei sample the model picked at the
                # top score was often an early one, 0.05 worse against the ground truth than the
                # last. A later model replaces the best unless validation clearly degraded.
                if score >= best_score - _BEST_MARGIN:
                    best_score, is_best = max(score, best_score), True
                    if val_dice is not None:
                        m.history["best_val_dice"] = list(val_dice)
                    best = _snapshot(trainer, it + 1, optimizer)
            progress = TrainProgress(
                iteration=it + 1, iterations=cfg.iterations, loss=loss_value, learning_rate=lr,
                voxels_per_s=voxels / step_time, eta_s=eta(step_time, cfg.iterations - it - 1),
                data_wait=wait_frac, val_dice=val_dice, is_best=is_best, preview=preview)
            _call_loggers(trainer, "log", progress)
            update = yield progress
            preview = None
            if isinstance(update, np.ndarray):
                update = TrainerUpdate(labels=update)
            if update is not None and update.labels is not None:
                # batches made ahead were drawn from the old strokes: make them anew, so the
                # very next step already learns from new strokes (the live preview shows them)
                pf.restart(range(it + 1, cfg.iterations),
                           lambda labels=update.labels: trainer.update_annotations(labels))
                val_patches = trainer.sampler.validation_patches(_VAL_PATCHES, cfg.seed)
            if update is not None and update.preview is not None:
                preview = trainer.preview(update.preview, it + 1)
        else:
            it = cfg.iterations
    _call_loggers(trainer, "close")
    done = it if stopped else cfg.iterations
    last = _snapshot(trainer, done, optimizer)
    m.iteration = done
    if best is None or (stopped and best.iteration < done and not m.history["val_dice"]):
        best = last
    best.history = copy.deepcopy(m.history)
    return TrainResult(best=best, last=last, stopped=stopped)
