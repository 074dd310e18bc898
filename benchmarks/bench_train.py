"""Training throughput: napari-seg3d `Trainer` against the network's own training step.

The Trainer trains on a synthetic volume with simulated brush strokes (sparse labels), so each
step samples patches around the strokes, augments them in the prefetch thread, moves them to the
device and runs forward, masked loss, backward, gradient clipping and AdamW. The second row runs
exactly that step (same network, loss, optimizer, batch and patch) on one batch already on the
device: the floor that the Trainer's data path adds to.

    python benchmarks/bench_train.py                 # CPU, 96^3 volume, 32x64x64 patches
    python benchmarks/bench_train.py --device cuda   # 256^3 volume, 128^3 patches, fp16

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import sys
import time
from unittest import mock

import numpy as np
import torch
from _common import (
    LoadMonitor,
    json_line,
    machine,
    median,
    precision_name,
    resolve_device,
    sync,
    synthetic_volume,
    table,
    triple,
)

from napari_seg3d.engine import TrainConfig, Trainer, build_model, default_model_config
from napari_seg3d.engine.training import loop as train_loop
from napari_seg3d.engine.training import step as train_step
from napari_seg3d.engine.training.prefetch import Prefetcher
from napari_seg3d.engine.training.scribbles import simulate_scribbles

WARMUP_STEPS = 2

NOTES = """\
Notes:
- seconds/step: median over the measured steps (the first {warmup} steps and the last one,
  which validates and snapshots the model, are left out). Mvoxel/s = batch x patch voxels / that.
- data wait (timed): seconds the loop blocked in Prefetcher.get, over the measured step time;
  data wait (TrainProgress): the loop's own running average of the same share (it also counts
  the copy to the device), as shown in the GUI.
- batch prep: seconds the prefetch thread spends sampling + augmenting one batch (it overlaps
  with the step unless the wait is above zero; on a CPU it competes with the step for cores).
- network step only: forward, the loop's loss (masked ce+Dice and the edge-aware smoothness
  term), backward, gradient clipping and AdamW on one batch already on the device (the
  Trainer's step without its data path); median of the runs before and after the Trainer.
- Self-training is off: its rounds are whole-volume predictions between steps, not steps.
- overhead vs network step = (seconds/step / network seconds/step - 1) x 100.
- CPU s/step: median CPU seconds of this process per step (all threads, the prefetch thread
  included). On a shared machine it is the steadier figure with --threads 1."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--size", type=triple, default=None,
                   help="volume edge, or z,y,x (default 96 on CPU, 256 on CUDA)")
    p.add_argument("--patch", type=triple, default=None,
                   help="patch edge, or z,y,x (default 32,64,64 on CPU, 128 on CUDA)")
    p.add_argument("--batch-size", type=int, default=2, help="patches per step")
    p.add_argument("--iterations", type=int, default=None,
                   help=f"measured steps of the Trainer, after {WARMUP_STEPS} warm-up steps; the "
                        "network step runs as many before and as many after it "
                        "(default 6 on CPU, 30 on CUDA)")
    p.add_argument("--base-filters", type=int, default=None,
                   help="U-Net filters at level 1 (default 16 on CPU, 32 on CUDA)")
    p.add_argument("--levels", type=int, default=None,
                   help="U-Net levels (default: as many as the patch allows, at most 4)")
    p.add_argument("--no-amp", action="store_true",
                   help="train in float32 (default: mixed precision as the GUI trains, float16 "
                        "autocast on CUDA, bfloat16 on a CPU with native bfloat16)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice, one per core)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    args.size = args.size or triple("256" if cuda else "96")
    args.patch = args.patch or triple("128" if cuda else "32,64,64")
    args.iterations = args.iterations or (30 if cuda else 6)
    args.base_filters = args.base_filters or (32 if cuda else 16)
    args.amp = not args.no_amp
    return args


class _TimedPrefetcher(Prefetcher):
    """The engine's Prefetcher, recording how long each batch takes to make and to get."""

    make_seconds: dict[int, float] = {}
    wait_seconds: dict[int, float] = {}

    def __init__(self, make_batch, iterations, depth: int = 3) -> None:
        def timed_make(i):
            start = time.perf_counter()
            batch = make_batch(i)
            _TimedPrefetcher.make_seconds[i] = time.perf_counter() - start
            return batch

        super().__init__(timed_make, iterations, depth)

    def get(self, iteration: int):
        start = time.perf_counter()
        batch = super().get(iteration)
        _TimedPrefetcher.wait_seconds[iteration] = time.perf_counter() - start
        return batch


def make_trainer(args, device: torch.device) -> tuple[Trainer, int]:
    """A Trainer on the synthetic volume and its simulated strokes; also the painted voxels."""
    image, truth = synthetic_volume(args.size, args.seed)
    labels = simulate_scribbles(truth, slices_per_axis=3, strokes_per_class=2, length=20,
                                radius=1, seed=args.seed)
    total = WARMUP_STEPS + args.iterations + 1
    config = TrainConfig(patch_size=args.patch, batch_size=args.batch_size, iterations=total,
                         device=device.type, amp=args.amp, validate_every=total, seed=args.seed,
                         self_training=0)
    model_config = default_model_config(1, 2, args.patch, base_filters=args.base_filters,
                                        levels=args.levels)
    return Trainer(image, labels, config, model_config=model_config), int((labels > 0).sum())


def run_trainer(trainer: Trainer) -> dict:
    """Run the Trainer to the end; per-step seconds, waits and batch times of the measured steps."""
    _TimedPrefetcher.make_seconds, _TimedPrefetcher.wait_seconds = {}, {}
    steps, cpu_steps, records = [], [], []
    with mock.patch.object(train_loop, "Prefetcher", _TimedPrefetcher):
        gen = trainer.run()
        last, last_cpu = time.perf_counter(), time.process_time()
        try:
            while True:
                progress = next(gen)
                now, now_cpu = time.perf_counter(), time.process_time()
                steps.append(now - last)
                cpu_steps.append(now_cpu - last_cpu)
                records.append(progress)
                last, last_cpu = now, now_cpu
        except StopIteration:
            pass
    measured = range(WARMUP_STEPS, len(steps) - 1)  # drop warm-up and the validating last step
    step_s = [steps[i] for i in measured]
    wait_s = [_TimedPrefetcher.wait_seconds[i] for i in measured]
    make_s = [_TimedPrefetcher.make_seconds[i] for i in measured]
    final = records[measured[-1]]
    return {"step_s": step_s, "cpu_s": [cpu_steps[i] for i in measured],
            "wait_share": sum(wait_s) / sum(step_s), "make_s": make_s,
            "progress_data_wait": final.data_wait, "progress_voxels_per_s": final.voxels_per_s,
            "final_loss": final.loss}


def run_network_step(trainer: Trainer, args, device: torch.device) -> tuple[list, list]:
    """The Trainer's step alone, on one batch already on the device: wall and CPU seconds of
    each measured step."""
    cfg = trainer.config
    mc = trainer.model.model_config
    torch.manual_seed(args.seed)
    net = build_model(mc.architecture, **mc.kwargs).to(device).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.learning_rate,
                                  weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=args.amp and device.type == "cuda")
    batch = trainer.sampler.sample(cfg.batch_size, np.random.default_rng(args.seed))
    image, target, mask = (torch.from_numpy(a).to(device) for a in (batch.image, batch.target,
                                                                     batch.mask))
    seconds, cpu_seconds = [], []
    for _ in range(WARMUP_STEPS + args.iterations):
        sync(device)
        start, start_cpu = time.perf_counter(), time.process_time()
        # the loop's own loss: masked loss plus the edge-aware smoothness term
        loss = train_step._batch_loss(trainer, net, args.amp, image, target, mask)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(net.parameters(), 12.0)
        scaler.step(optimizer)
        scaler.update()
        float(loss.detach())  # the loop reads the loss every step, which waits for the device
        seconds.append(time.perf_counter() - start)
        cpu_seconds.append(time.process_time() - start_cpu)
    return seconds[WARMUP_STEPS:], cpu_seconds[WARMUP_STEPS:]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    load = LoadMonitor()
    trainer, painted = make_trainer(args, device)
    n_params = sum(p.numel() for p in trainer.model.network.parameters())
    levels = trainer.model.model_config.kwargs["levels"]
    voxels = args.batch_size * int(np.prod(args.patch))

    # The network step runs before and after the Trainer, so that load drifting during the
    # run weighs on both rows alike.
    net_steps, net_cpu = run_network_step(trainer, args, device)
    result = run_trainer(trainer)
    more_steps, more_cpu = run_network_step(trainer, args, device)
    net_steps, net_cpu = net_steps + more_steps, net_cpu + more_cpu
    net_s = median(net_steps)
    step_s = median(result["step_s"])
    rows = [
        ["Trainer.run (full loop)", step_s, voxels / step_s / 1e6,
         100 * result["wait_share"], 100 * result["progress_data_wait"],
         median(result["make_s"]), 100 * (step_s / net_s - 1), median(result["cpu_s"])],
        ["network step only", net_s, voxels / net_s / 1e6, None, None, None, None,
         median(net_cpu)],
    ]
    env = machine(device)
    print(f"Training throughput, {args.device} {precision_name(device, args.amp)}: "
          f"volume {args.size} with {painted} painted voxels, patch {args.patch}, batch "
          f"{args.batch_size}, U-Net levels={levels} base_filters={args.base_filters} "
          f"({n_params / 1e6:.2f}M parameters), loss {trainer.config.loss}, "
          f"{args.iterations} measured steps each")
    print(f"{env['device_name']}, {env['cpu_count']} CPUs, torch {torch.__version__} "
          f"({env['torch_threads']} threads)")
    print()
    print(table(["method", "s/step", "Mvoxel/s", "data wait % (timed)",
                 "data wait % (TrainProgress)", "batch prep s", "overhead vs network step %",
                 "CPU s/step"],
                rows))
    print()
    print(NOTES.format(warmup=WARMUP_STEPS))
    note = load.note()
    if note:
        print(note)
    print(json_line({
        "benchmark": "train", **env, **load.summary(), "volume": list(args.size),
        "painted_voxels": painted, "patch": list(args.patch), "batch_size": args.batch_size,
        "levels": levels, "base_filters": args.base_filters, "parameters": n_params,
        "amp": args.amp, "precision": precision_name(device, args.amp),
        "loss": trainer.config.loss, "measured_steps": args.iterations,
        "trainer": {"seconds_per_step": step_s, "mvoxel_per_s": voxels / step_s / 1e6,
                    "step_seconds": result["step_s"], "data_wait_share_timed": result["wait_share"],
                    "data_wait_share_progress": result["progress_data_wait"],
                    "progress_voxels_per_s": result["progress_voxels_per_s"],
                    "batch_prep_seconds": median(result["make_s"]),
                    "overhead_vs_network_pct": 100 * (step_s / net_s - 1),
                    "cpu_seconds_per_step": median(result["cpu_s"])},
        "network_step": {"seconds_per_step": net_s, "mvoxel_per_s": voxels / net_s / 1e6,
                         "step_seconds": net_steps, "cpu_seconds_per_step": median(net_cpu)},
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
