"""The training loop behind :meth:`Trainer.run`: one step, validation, best-model tracking."""

from __future__ import annotations

import contextlib
import copy
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generator

import numpy as np
import torch

from . import precision
from .errors import Seg3DError
from .interrupt import Interrupted, interruptible
from .losses import dice_per_class, is_binary_loss
from .model_file import SegmentationModel
from .prefetch import Prefetcher
from .regularizer import edge_aware_smoothness
from .sampling import augment
from .selection import ModelSelection
from .threads import compute_threads

if TYPE_CHECKING:
    from .train import Trainer, TrainProgress, TrainResult

_VAL_PATCHES = 16


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


def train_step(trainer: Trainer, net, optimizer, scaler, batch,
               iteration: int) -> tuple[float, float]:
    """One optimisation step on ``batch`` ``(image, target, mask)`` on the device: the learning
    rate of ``iteration``, forward, loss, backward (in parts after CUDA out of memory),
    gradient clipping, AdamW. Returns ``(loss, learning rate)``."""
    from .train import learning_rate_at

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


@dataclass
class _Loop:
    """What the loop carries from step to step."""

    done: int  # steps finished: the state a stop keeps
    best: SegmentationModel | None = None
    preview: object = None
    step_time: float = float("nan")
    wait: float = 0.0

    def timed(self, t_data: float, dt: float) -> None:
        self.step_time = dt if not np.isfinite(self.step_time) else 0.9 * self.step_time + 0.1 * dt
        self.wait = 0.9 * self.wait + 0.1 * (t_data / max(dt, 1e-9))


def _checkpoint(trainer: Trainer, loop: _Loop, selection: ModelSelection, val_patches,
                optimizer, iteration: int) -> tuple[tuple[float, ...] | None, bool]:
    """Validate after ``iteration`` steps; keep the model when the selection rule says so."""
    m = trainer.model
    val_dice = validate(trainer, val_patches)
    if val_dice is not None:
        m.history["val_dice"].append(list(val_dice))
        m.history["val_iteration"].append(iteration)
    if not selection.consider(iteration, _score(val_dice, m.history)):
        return val_dice, False
    if val_dice is not None:
        m.history["best_val_dice"] = list(val_dice)
    loop.best = _snapshot(trainer, iteration, optimizer)
    return val_dice, True


def _take_update(trainer: Trainer, pf: Prefetcher, update, iteration: int, val_patches):
    """Apply what the caller sent after ``iteration`` steps: new strokes, a preview request.
    Returns ``(preview or None, validation patches)``."""
    from .train import TrainerUpdate

    if isinstance(update, np.ndarray):
        update = TrainerUpdate(labels=update)
    if update is None:
        return None, val_patches
    if update.labels is not None:
        # batches made ahead were drawn from the old strokes: make them anew, so the very next
        # step already learns from new strokes (the live preview shows them)
        pf.restart(range(iteration, trainer.config.iterations),
                   lambda labels=update.labels: trainer.update_annotations(labels))
        val_patches = trainer.sampler.validation_patches(_VAL_PATCHES, trainer.config.seed)
    preview = trainer.preview(update.preview, iteration) if update.preview is not None else None
    return preview, val_patches


def training_loop(trainer: Trainer) -> Generator[TrainProgress, np.ndarray | None, TrainResult]:
    from .train import TrainProgress, TrainResult, eta, self_training_starts

    cfg, dev, m = trainer.config, trainer.device, trainer.model
    net = m.network.to(dev).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.learning_rate,
                                  weight_decay=cfg.weight_decay)
    if trainer.optimizer_state is not None:
        optimizer.load_state_dict(trainer.optimizer_state)
    # float16 needs loss scaling; bfloat16 (CPU) has float32's range and does not
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp and dev.type == "cuda")
    val_patches = trainer.sampler.validation_patches(_VAL_PATCHES, cfg.seed)
    voxels = cfg.batch_size * int(np.prod(cfg.patch_size))
    rounds = self_training_starts(cfg)
    selection = ModelSelection(rounds)
    loop, start, stopped = _Loop(done=trainer.start_iteration), trainer.start_iteration, False
    try:
        with compute_threads() as threads, interruptible(trainer._stop):
            if any(r <= start for r in rounds):  # resumed after self-training began
                loop.preview = trainer.self_train(start)
            with Prefetcher(lambda i: _make_batch(trainer, i), range(start, cfg.iterations)) as pf:
                for it in range(start, cfg.iterations):
                    if trainer._stop.is_set():
                        raise Interrupted
                    if it in rounds and it > start:
                        loop.preview = pf.restart(range(it, cfg.iterations),
                                                  lambda it=it: trainer.self_train(it))
                    threads.update()
                    t0 = time.perf_counter()
                    batch = tuple(t.to(dev, non_blocking=True) for t in pf.get(it))
                    t_data = time.perf_counter() - t0
                    loss, lr = train_step(trainer, net, optimizer, scaler, batch, it)
                    loop.done = it + 1
                    loop.timed(t_data, time.perf_counter() - t0)
                    m.history["loss"].append(loss)
                    val_dice, is_best = None, False
                    if loop.done % cfg.validate_every == 0 or loop.done == cfg.iterations:
                        val_dice, is_best = _checkpoint(trainer, loop, selection, val_patches,
                                                        optimizer, loop.done)
                    progress = TrainProgress(
                        iteration=loop.done, iterations=cfg.iterations, loss=loss,
                        learning_rate=lr, voxels_per_s=voxels / loop.step_time,
                        eta_s=eta(loop.step_time, cfg.iterations - loop.done),
                        data_wait=loop.wait, val_dice=val_dice, is_best=is_best,
                        preview=loop.preview, threads=threads.threads)
                    _call_loggers(trainer, "log", progress)
                    update = yield progress
                    loop.preview, val_patches = _take_update(trainer, pf, update, loop.done,
                                                             val_patches)
    except Interrupted:  # Stop: between two steps, or inside one (which is dropped)
        stopped = True
        optimizer.zero_grad(set_to_none=True)
        net.train()
    _call_loggers(trainer, "close")
    last = _snapshot(trainer, loop.done, optimizer)
    m.iteration = loop.done
    best = loop.best
    if best is None or (stopped and best.iteration < loop.done and not m.history["val_dice"]):
        best = last
    best.history = copy.deepcopy(m.history)
    return TrainResult(best=best, last=last, stopped=stopped)
