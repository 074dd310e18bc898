"""Peak memory of command-line prediction: a 256^3 and a 1024 x 1024 x 512 uint8 volume.

Both volumes are chunked HDF5 files predicted by the same model with `napari-seg3d predict
--format h5`, each in a fresh process whose peak resident memory (ru_maxrss) is read when it
exits. Prediction reads the input and writes the output block by block, so the peak should not
depend on the volume. The anchor row predicts the 256^3 volume the in-memory way (read whole,
predict whole, as a napari layer does), for scale.

Target (issue 4): the large volume's peak within 10 % of the small one's, and under 2 GiB.

    python benchmarks/bench_memory.py                 # CPU; a tiny network keeps it to minutes
    python benchmarks/bench_memory.py --device cuda --base-filters 16 --levels 4

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from _common import LoadMonitor, json_line, machine, table

SMALL = (256, 256, 256)
LARGE = (512, 1024, 1024)  # (Z, Y, X): 1024 x 1024 x 512 voxels
TARGET_RATIO, TARGET_BYTES = 1.10, 2 << 30

_MEASURE = """
import resource, subprocess, sys, time
t = time.perf_counter()
code = subprocess.run(sys.argv[1:]).returncode
print(code, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""

_CLI = """
import sys, torch
torch.set_num_threads(int(sys.argv.pop(1)))
from napari_seg3d.cli import main
sys.exit(main(sys.argv[1:]))
"""

_IN_MEMORY = """
import sys, torch
torch.set_num_threads(int(sys.argv[4]))
from napari_seg3d.engine import load_model
from napari_seg3d.engine.io import read_volume, write_volume
model = load_model(sys.argv[1])
labels = model.predict(read_volume(sys.argv[2]).data, device=sys.argv[5])
write_volume(sys.argv[3], labels)
"""


def make_model(path: Path, patch, base_filters: int, levels: int) -> None:
    from napari_seg3d.engine import TrainConfig, default_model_config, save_model
    from napari_seg3d.engine.model_file import SegmentationModel
    from napari_seg3d.engine.models import build_model
    from napari_seg3d.engine.normalization import Normalization

    config = default_model_config(1, 2, patch, base_filters=base_filters, levels=levels)
    torch.manual_seed(0)
    network = build_model(config.architecture, **config.kwargs)
    model = SegmentationModel(network=network, model_config=config,
                              train_config=TrainConfig(patch_size=patch),
                              class_values=(1, 2), normalization=Normalization((0.0,), (255.0,)))
    save_model(model, path)


def make_volume(path: Path, shape, seed: int = 0) -> None:
    """A chunked, compressed uint8 HDF5 volume (blobs and noise), written slab by slab."""
    rng = np.random.default_rng(seed)
    z_step = 32
    yy, xx = np.mgrid[:shape[1], :shape[2]]
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("raw", shape=shape, dtype=np.uint8, chunks=(64, 64, 64),
                              compression="gzip", compression_opts=1)
        for z0 in range(0, shape[0], z_step):
            zz = np.arange(z0, min(z0 + z_step, shape[0]))[:, None, None]
            blobs = (np.sin(zz / 9.0) + np.sin(yy / 11.0) + np.sin(xx / 13.0)) > 1.0
            noise = rng.integers(0, 40, size=(len(zz), *shape[1:]), dtype=np.uint8)
            ds[z0:z0 + len(zz)] = (blobs * 150).astype(np.uint8) + noise


def measure(command: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-c", _MEASURE, *command], capture_output=True,
                         text=True, check=True)
    code, seconds, max_rss_kib = out.stdout.strip().splitlines()[-1].split()
    if int(code) != 0:
        raise SystemExit(f"{command} failed with exit code {code}:\n{out.stderr[-2000:]}")
    return {"seconds": float(seconds), "peak_rss_bytes": int(max_rss_kib) * 1024}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--base-filters", type=int, default=4)
    parser.add_argument("--levels", type=int, default=2)
    parser.add_argument("--patch", type=int, nargs=3, default=(32, 64, 64))
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--format", default="h5", choices=["h5", "zarr"])
    parser.add_argument("--large", type=int, nargs=3, default=LARGE, metavar=("Z", "Y", "X"),
                        help="the large volume (default 512 1024 1024)")
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and keep the files")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(args.keep or tempfile.mkdtemp(prefix="bench_memory_"))
    work.mkdir(parents=True, exist_ok=True)
    model = work / "model.pt"
    make_model(model, tuple(args.patch), args.base_filters, args.levels)
    large_name = "x".join(map(str, args.large[::-1]))
    volumes = {"256^3": (work / "small.h5", SMALL),
               large_name: (work / "large.h5", tuple(args.large))}
    for path, shape in volumes.values():
        if not path.exists():
            t = time.perf_counter()
            make_volume(path, shape)
            print(f"made {path.name} {shape} in {time.perf_counter() - t:.0f} s", flush=True)
    monitor = LoadMonitor()
    rows, figures = [], {}
    env_threads = ["--device", args.device, "--batch-size", str(args.batch_size)]
    for name, (path, shape) in volumes.items():
        out = work / f"out_{path.stem}"
        cmd = [sys.executable, "-c", _CLI, str(args.threads), "predict", f"{path}:/raw", "--model", str(model), "--out", str(out), "--format",
               args.format, "--overwrite", "--quiet", *env_threads]
        figures[name] = measure(cmd)
        figures[name]["voxels"] = int(np.prod(shape))
        print(f"{name}: {figures[name]}", flush=True)
    anchor = measure([sys.executable, "-c", _IN_MEMORY, str(model), f"{volumes['256^3'][0]}:/raw",
                      str(work / "in_memory.h5"), str(args.threads), args.device])
    anchor["voxels"] = int(np.prod(SMALL))
    small, large_name = figures["256^3"], next(n for n in figures if n != "256^3")
    large = figures[large_name]
    ratio = large["peak_rss_bytes"] / small["peak_rss_bytes"]
    passed = ratio <= TARGET_RATIO and large["peak_rss_bytes"] < TARGET_BYTES
    mib = 1 << 20
    for label, f in (("256^3, read whole, in memory (anchor)", anchor),
                     (f"256^3, block by block, --format {args.format}", small),
                     (f"{large_name}, block by block, --format {args.format}", large)):
        rows.append([label, f"{f['voxels'] / 1e6:.0f}", f"{f['seconds']:.1f}",
                     f"{f['voxels'] / f['seconds'] / 1e6:.2f}", f"{f['peak_rss_bytes'] / mib:.0f}",
                     f"{f['peak_rss_bytes'] / small['peak_rss_bytes']:.3f}"])
    print()
    print(table(["run", "Mvoxels", "seconds", "Mvoxel/s", "peak RSS MiB", "vs 256^3 blocks"],
                rows))
    print(f"\nTarget: large peak <= {TARGET_RATIO:.2f} x small and < 2048 MiB: "
          f"{ratio:.3f} x, {large['peak_rss_bytes'] / mib:.0f} MiB -> "
          f"{'PASS' if passed else 'FAIL'}")
    note = monitor.note()
    if note:
        print(note)
    print(json_line({"machine": machine(torch.device(args.device)), "settings": vars(args),
                     "in_memory_256": anchor, "blocks": figures, "ratio": ratio,
                     "passed": passed, **monitor.summary()}))
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
