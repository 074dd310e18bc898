"""The training loop behind :meth:`Trainer.run`: steps, checkpoints, the model kept, the
updates sent in, a stop at any moment."""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generator

import numpy as np
import torch

from ..budget import FIX_AFTER, RunEstimate
from ..interrupt import Interrupted, interruptible
from ..model_file import SegmentationModel
from ..threads import compute_threads
from .early_stop import ENDED_EARLY_REASON, EarlyStop
from .prefetch import Prefetcher
from .schedule import eta, last_phase_start, self_training_starts, validates_after
from .selection import ModelSelection
from .step import make_batch, train_step, validate
from .timing import fix_run

if TYPE_CHECKING:
    from .progress import TrainProgress, TrainResult
    from .trainer import Trainer

_VAL_PATCHES = 16


def _snapshot(trainer: Trainer, iteration: int, optimizer) -> SegmentationModel:
    m = trainer.model
    net = copy.deepcopy(m.network).cpu()
    return SegmentationModel(
        network=net, model_config=m.model_config, train_config=trainer.config,
        class_values=m.class_values, normalization=m.normalization, in_channels=m.in_channels,
        class_names=m.class_names, channel_names=m.channel_names, voxel_size=m.voxel_size,
        iteration=iteration,
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


@dataclass
class _Loop:
    """What the loop carries from step to step."""

    done: int  # steps finished: the state a stop keeps
    best: SegmentationModel | None = None
    preview: object = None
    step_time: float = float("nan")
    wait: float = 0.0
    step_times: list[float] = field(default_factory=list)  # this session's first steps
    estimate: RunEstimate | None = None  # known once the first steps are timed
    ended_early: int | None = None
    lr: float = 0.0

    def timed(self, t_data: float, dt: float) -> None:
        self.step_time = dt if not np.isfinite(self.step_time) else 0.9 * self.step_time + 0.1 * dt
        self.wait = 0.9 * self.wait + 0.1 * (t_data / max(dt, 1e-9))
        if len(self.step_times) < FIX_AFTER:
            self.step_times.append(dt)


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
    loop.best = trainer.kept = _snapshot(trainer, iteration, optimizer)
    return val_dice, True


def _take_update(trainer: Trainer, pf: Prefetcher, update, iteration: int, val_patches):
    """Apply what the caller sent after ``iteration`` steps: new strokes, a preview request.
    Returns ``(preview or None, validation patches)``."""
    from .progress import TrainerUpdate

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


class _Phases:
    """The self-training rounds, the model kept and the early stop of a run, made anew when its
    total is fixed (they follow from it)."""

    def __init__(self, config) -> None:
        self.rounds = self_training_starts(config)
        self.selection = ModelSelection(self.rounds)
        self.early = EarlyStop(last_phase_start(config)) if config.early_stop else None

    def refix(self, config) -> None:
        """Follow a total fixed after the first steps (before any round or kept model)."""
        self.rounds = self_training_starts(config)
        self.selection.rounds = tuple(self.rounds)
        if self.early is not None:
            self.early.start = last_phase_start(config)

    def ends_early(self, iteration: int, val_dice) -> bool:
        """After a validation: True when the held-out strokes stopped improving in the last
        phase (never without held-out strokes)."""
        return (self.early is not None and val_dice is not None
                and self.early.update(iteration, _score(val_dice, None)))


def _step(trainer: Trainer, loop: _Loop, pf, net, optimizer, scaler, it: int) -> float:
    """Train step ``it``; returns its loss."""
    t0 = time.perf_counter()
    batch = tuple(t.to(trainer.device, non_blocking=True) for t in pf.get(it))
    t_data = time.perf_counter() - t0
    loss, lr = train_step(trainer, net, optimizer, scaler, batch, it)
    loop.done = it + 1
    loop.timed(t_data, time.perf_counter() - t0)
    trainer.model.history["loss"].append(loss)
    loop.lr = lr
    return loss


def _progress(loop: _Loop, cfg, loss: float, voxels: int, val_dice, is_best: bool,
              threads: int) -> TrainProgress:
    """The record of the step just done."""
    from .progress import TrainProgress

    left = 0 if loop.ended_early else cfg.iterations - loop.done
    return TrainProgress(
        iteration=loop.done, iterations=cfg.iterations, loss=loss, learning_rate=loop.lr,
        voxels_per_s=voxels / loop.step_time, eta_s=eta(loop.step_time, left),
        data_wait=loop.wait, val_dice=val_dice, is_best=is_best, preview=loop.preview,
        threads=threads, estimate=loop.estimate, ended_early=loop.ended_early is not None)


def training_loop(trainer: Trainer) -> Generator[TrainProgress, np.ndarray | None, TrainResult]:
    from .progress import TrainResult

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
    phases = _Phases(cfg)
    loop, start, stopped = _Loop(done=trainer.start_iteration), trainer.start_iteration, False
    timed_at = min(start + FIX_AFTER, cfg.iterations)  # the total is fixed after these steps
    try:
        with compute_threads() as threads, interruptible(trainer._stop):
            if any(r <= start for r in phases.rounds):  # resumed after self-training began
                loop.preview = trainer.self_train(start)
            with Prefetcher(lambda i: make_batch(trainer, i), range(start, cfg.iterations)) as pf:
                it = start
                while it < trainer.config.iterations:
                    if trainer._stop.is_set():
                        raise Interrupted
                    if it in phases.rounds and it > start:
                        loop.preview = pf.restart(range(it, trainer.config.iterations),
                                                  lambda it=it: trainer.self_train(it))
                    threads.update()
                    loss = _step(trainer, loop, pf, net, optimizer, scaler, it)
                    if loop.done == timed_at:
                        loop.estimate = fix_run(trainer, loop.done, loop.step_times, val_patches)
                        phases.refix(trainer.config)
                    cfg = trainer.config
                    val_dice, is_best = None, False
                    if validates_after(cfg, loop.done):
                        val_dice, is_best = _checkpoint(trainer, loop, phases.selection,
                                                        val_patches, optimizer, loop.done)
                        if loop.done < cfg.iterations and phases.ends_early(loop.done, val_dice):
                            loop.ended_early = loop.done
                    progress = _progress(loop, cfg, loss, voxels, val_dice, is_best,
                                         threads.threads)
                    _call_loggers(trainer, "log", progress)
                    update = yield progress
                    loop.preview, patches = _take_update(trainer, pf, update, loop.done,
                                                         val_patches)
                    if patches is not val_patches and phases.early is not None:
                        phases.early.reset()  # new strokes: new held-out strokes
                    val_patches = patches
                    if loop.ended_early:
                        m.history["ended_early"] = {"iteration": loop.ended_early,
                                                    "reason": ENDED_EARLY_REASON}
                        break
                    it += 1
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
    if cfg.keep_forest and loop.done > 0:
        from .self_training import final_forest

        m.forest = best.forest = last.forest = final_forest(trainer)
    return TrainResult(best=best, last=last, stopped=stopped, ended_early=loop.ended_early)
