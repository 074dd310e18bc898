"""Sliding-window prediction: napari-seg3d `predict_volume` vs MONAI `sliding_window_inference`.

Both run the same U-Net weights over the same windows (same patch, overlap 0.5, Gaussian blending
with sigma = 0.125 x patch, same windows per batch), with the volume and the result in CPU
memory, as a napari layer needs them. A third row runs only the network over the same windows,
already batched on the device: the floor that any sliding window pays.

    python benchmarks/bench_predict.py                      # CPU, 96^3 volume, 48^3 patch
    python benchmarks/bench_predict.py --device cuda        # 256^3 volume, 128^3 patch

Every method runs in float32 and under mixed precision (float16 autocast on CUDA, bfloat16 on a
CPU with native bfloat16; `--precision` picks one), each compared with MONAI and with the
forward in the same precision.

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial

import numpy as np
import torch
from _common import (
    LoadMonitor,
    autocast,
    json_line,
    machine,
    precision_name,
    resolve_device,
    synthetic_volume,
    table,
    timed,
    triple,
)
from torch import nn

from napari_seg3d.engine import predict_volume
from napari_seg3d.engine.models import UNet
from napari_seg3d.engine.prediction.blocks import plan_blocks
from napari_seg3d.engine.prediction.windows import pad_for_window

OVERLAP = 0.5
SIGMA_SCALE = 0.125  # MONAI's default and napari-seg3d's `gaussian_weights` default

NOTES = """\
Notes:
- Same weights, windows, batches and Gaussian weights (sigma = 0.125 x patch) for both methods;
  volume and result in CPU memory (MONAI: sw_device=<device>, device="cpu"; ours: numpy in/out).
- MONAI averages whatever the predictor returns; napari-seg3d averages softmax probabilities.
  To compare like with like, MONAI runs the predictor `lambda x: net(x).softmax(1)`, and ours
  runs with probabilities=True (it also computes the argmax labels of each finished slab).
- The difference is the Gaussian map alone (MONAI given ours as roi_weight_map matches ours
  to 0.0): both clamp the weights at 1e-3, ours after normalising the map to a maximum of 1,
  MONAI before (for even patches there is no centre voxel, so its maximum is below 1: 0.990 for
  48^3). Clamped window corners then weigh ~1% more in MONAI; that shows where every window
  covering a voxel has a tiny weight (near the volume border).
- 'forward only' runs the network over the same windows, pre-batched on the device (no gather,
  softmax, blending or copies). 'overhead vs forward' = (seconds / forward seconds - 1) x 100.
- 'speed vs MONAI' = MONAI seconds / seconds in the same precision: above 1 is faster than
  MONAI. Mixed precision: MONAI runs inside the same torch.autocast, ours with amp=True.
- 'overhead vs forward' compares with the forward in the same precision.
- 'CPU s': CPU seconds of this process during the best run (all threads). On a shared machine it
  is the steadier figure with --threads 1 (more threads also count time spent spinning)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--size", type=triple, default=None,
                   help="volume edge, or z,y,x (default 96 on CPU, 256 on CUDA)")
    p.add_argument("--patch", type=triple, default=None,
                   help="window edge, or z,y,x (default 48 on CPU, 128 on CUDA)")
    p.add_argument("--batch-size", type=int, default=4, help="windows per forward pass")
    p.add_argument("--base-filters", type=int, default=None,
                   help="U-Net filters at level 1 (default 16 on CPU: 1.8M parameters; 32 on CUDA: "
                        "7.1M)")
    p.add_argument("--levels", type=int, default=4, help="U-Net resolution levels")
    p.add_argument("--classes", type=int, default=2, help="output classes")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed runs of each method, best taken (default 2 on CPU, 5 on CUDA)")
    p.add_argument("--precision", choices=("both", "float32", "mixed"), default="both",
                   help="float32, mixed precision (float16 autocast on CUDA, bfloat16 on a CPU "
                        "with native bfloat16), or both")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice, one per core)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    args.size = args.size or triple("256" if cuda else "96")
    args.patch = args.patch or triple("128" if cuda else "48")
    args.base_filters = args.base_filters or (32 if cuda else 16)
    args.repeats = args.repeats or (5 if cuda else 2)
    args.amps = {"both": (False, True), "float32": (False,), "mixed": (True,)}[args.precision]
    return args


def make_volume(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """A float32 ``(Z, Y, X)`` test volume."""
    return synthetic_volume(shape, seed)[0]


def all_windows(shape, patch) -> list:
    """The windows of the whole volume, z-major: those of its one block."""
    return plan_blocks(shape, patch, OVERLAP, None)[0].windows


def window_batches(volume: np.ndarray, patch, batch_size: int, device: torch.device) -> list:
    """The windows of ``volume`` as ``(B, 1, z, y, x)`` tensors already on ``device``."""
    padded, _ = pad_for_window(volume, patch)
    source = torch.from_numpy(np.ascontiguousarray(padded))
    crops = [source[w] for w in all_windows(volume.shape, patch)]
    return [torch.stack(crops[i:i + batch_size])[:, None].to(device)
            for i in range(0, len(crops), batch_size)]


def run_monai(net: nn.Module, volume: torch.Tensor, args, device: torch.device,
              amp: bool) -> torch.Tensor:
    """MONAI's Gaussian sliding window over softmax probabilities, output in CPU memory."""
    from monai.inferers import sliding_window_inference

    with torch.inference_mode(), autocast(device, amp):
        out = sliding_window_inference(
            volume, args.patch, args.batch_size, lambda x: net(x).softmax(1), overlap=OVERLAP,
            mode="gaussian", sigma_scale=SIGMA_SCALE, sw_device=device, device="cpu")
    return out[0]


def run_ours(model: nn.Module, volume: np.ndarray, args, device: torch.device, amp: bool,
             memory_limit_bytes: int | None = None) -> np.ndarray:
    return predict_volume(model, volume, patch_size=args.patch, overlap=OVERLAP,
                          blending="gaussian", batch_size=args.batch_size, device=device,
                          probabilities=True, memory_limit_bytes=memory_limit_bytes, amp=amp)


def run_forward(net: nn.Module, batches: list, device: torch.device, amp: bool) -> None:
    with torch.inference_mode(), autocast(device, amp):
        for batch in batches:
            net(batch)


MONAI, OURS, FORWARD = ("MONAI sliding_window_inference", "napari-seg3d predict_volume",
                        "network forward only")


def methods(net: nn.Module, volume: np.ndarray, args, device: torch.device) -> dict:
    """(name, precision) -> zero-argument callable, for the timed volume ``volume``."""
    as_tensor = torch.from_numpy(volume)[None, None]
    batches = window_batches(volume, args.patch, args.batch_size, device)
    runs = {}
    for amp in args.amps:
        prec = precision_name(device, amp)
        runs[MONAI, prec] = partial(run_monai, net, as_tensor, args, device, amp)
        runs[OURS, prec] = partial(run_ours, net, volume, args, device, amp)
        if device.type == "cuda":  # also with the accumulator forced into CPU memory
            runs[f"{OURS} (CPU accumulator)", prec] = partial(
                run_ours, net, volume, args, device, amp, memory_limit_bytes=0)
        runs[FORWARD, prec] = partial(run_forward, net, batches, device, amp)
    return runs


def warm_up_volume(args, seed: int) -> np.ndarray:
    """A volume whose windows make exactly one full batch (all along x), to warm each method."""
    step = max(1, int(args.patch[2] * (1 - OVERLAP)))
    pz, py, px = args.patch
    return make_volume((pz, py, px + step * (args.batch_size - 1)), seed)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    load = LoadMonitor()
    torch.manual_seed(args.seed)
    net = UNet(3, 1, args.classes, levels=args.levels, base_filters=args.base_filters)
    net = net.to(device).eval()
    n_params = sum(p.numel() for p in net.parameters())
    volume = make_volume(args.size, args.seed)
    n_windows = len(all_windows(volume.shape, args.patch))

    for fn in methods(net, warm_up_volume(args, args.seed + 1), args, device).values():
        fn()
    runs = methods(net, volume, args, device)
    seconds = {name: float("inf") for name in runs}
    cpu_seconds = dict(seconds)
    outputs = {}
    for _ in range(args.repeats):  # interleaved, so that drifting load hits every method alike
        for name, fn in runs.items():
            t, cpu, out = timed(fn, device)
            seconds[name] = min(seconds[name], t)
            cpu_seconds[name] = min(cpu_seconds[name], cpu)
            outputs.setdefault(name, out)

    voxels = int(np.prod(args.size))
    rows, figures, max_diff = [], {}, {}
    for (name, prec), t in seconds.items():
        t_monai, t_fwd = seconds[MONAI, prec], seconds[FORWARD, prec]
        overhead = None if name == FORWARD else 100.0 * (t / t_fwd - 1.0)
        rows.append([name, prec, t, voxels / t / 1e6, t_monai / t, overhead,
                     cpu_seconds[name, prec]])
        figures[f"{name} [{prec}]"] = {
            "method": name, "precision": prec, "seconds": t, "mvoxel_per_s": voxels / t / 1e6,
            "speed_vs_monai": t_monai / t, "overhead_vs_forward_pct": overhead,
            "cpu_seconds": cpu_seconds[name, prec]}
        if name == OURS:
            monai_probs = outputs[MONAI, prec].float().numpy()
            max_diff[prec] = float(np.abs(monai_probs - outputs[OURS, prec]).max())

    env = machine(device)
    import monai
    print(f"Sliding-window prediction, {args.device}: volume {args.size}, patch {args.patch}, "
          f"overlap {OVERLAP}, {n_windows} windows, {args.batch_size} a batch, "
          f"U-Net levels={args.levels} base_filters={args.base_filters} ({n_params / 1e6:.2f}M "
          f"parameters), {args.classes} classes; best of {args.repeats}")
    print(f"{env['device_name']}, {env['cpu_count']} CPUs, torch {torch.__version__} "
          f"({env['torch_threads']} threads), MONAI {monai.__version__}")
    print()
    print(table(["method", "precision", "seconds", "Mvoxel/s", "speed vs MONAI",
                 "overhead vs forward %", "CPU s"], rows))
    print()
    if len(args.amps) == 2:
        mixed = precision_name(device, True)
        print(f"ours in {mixed} against MONAI in float32: "
              f"{seconds[MONAI, 'float32'] / seconds[OURS, mixed]:.2f}x as fast")
    print("max |MONAI - ours| over all probabilities: "
          + ", ".join(f"{d:.3g} ({prec})" for prec, d in max_diff.items()))
    print(NOTES)
    note = load.note()
    if note:
        print(note)
    print(json_line({
        "benchmark": "predict", **env, "monai": monai.__version__, **load.summary(),
        "volume": list(args.size), "patch": list(args.patch), "overlap": OVERLAP,
        "batch_size": args.batch_size, "windows": n_windows,
        "precisions": [precision_name(device, amp) for amp in args.amps],
        "levels": args.levels, "base_filters": args.base_filters, "classes": args.classes,
        "parameters": n_params, "repeats": args.repeats, "max_abs_diff": max_diff,
        "methods": figures,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
