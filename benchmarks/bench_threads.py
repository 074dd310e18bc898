"""Training speed on a busy machine: torch's thread count chosen by napari-seg3d (``auto``)
against torch's default (all cores) and one thread, alone and beside other CPU jobs.

Each cell is a fresh process that trains the nuclei sample's default network (CLI settings:
patch from the image, batch 2) for ``--seconds`` after a warm-up, and counts iterations. The
other jobs are busy-loop processes (one core each), or a second training in the same mode
(``2 trainings``). Everything in one run, side by side, so the ratios hold on a noisy machine.

    python benchmarks/bench_threads.py                  # 2 x 12 s per cell, about 6 minutes
    python benchmarks/bench_threads.py --seconds 20     # steadier figures

Targets (issue 19): each of two concurrent trainings at >= 40 % of its speed alone; auto never
slower than one thread. The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from _common import json_line, machine, table

MODES = {"torch default": "default", "1 thread": "1", "auto": "auto"}
LOADS = ("alone", "+1 job", "+2 jobs", "2 trainings")


def _worker(mode: str, seconds: float, warmup: int) -> None:
    """One training process: prints ``{"its": ..., "seconds": ..., "threads": [...]}``."""
    import numpy as np
    import torch

    from napari_seg3d._sample_data import load_nuclei
    from napari_seg3d.engine import TrainConfig, Trainer, propose_patch_size
    from napari_seg3d.engine import threads as threads_module

    if mode == "default":
        threads_module.set_default_threads(torch.get_num_threads())  # torch's own: all cores
    elif mode != "auto":
        threads_module.set_default_threads(int(mode))
    image, _, scribbles = load_nuclei()
    cfg = TrainConfig(patch_size=propose_patch_size(image.shape), iterations=100_000,
                      self_training=0, validate_every=100_000)
    trainer = Trainer(image, scribbles, cfg)
    gen = trainer.run()
    counts, t_start, used = 0, None, []
    for i, _ in enumerate(gen):
        if i == warmup:
            t_start = time.perf_counter()
        elif t_start is not None:
            counts += 1
            used.append(torch.get_num_threads())
            if time.perf_counter() - t_start >= seconds:
                break
    elapsed = time.perf_counter() - t_start
    trainer.request_stop()
    gen.close()
    print(json.dumps({"its": counts, "seconds": elapsed,
                      "threads": sorted(set(int(u) for u in used)),
                      "threads_median": float(np.median(used))}))


def _spawn_worker(mode: str, args) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS",
                                                            "NAPARI_SEG3D_THREADS")}
    return subprocess.Popen([sys.executable, __file__, "--worker", mode, str(args.seconds),
                             str(args.warmup)], stdout=subprocess.PIPE, text=True, env=env)


def _busy_jobs(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def _result(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate(timeout=3600)
    return json.loads(out.strip().splitlines()[-1])


def _cell(mode: str, load: str, args) -> list[dict]:
    jobs = _busy_jobs({"+1 job": 1, "+2 jobs": 2}.get(load, 0))
    try:
        time.sleep(0.5 if jobs else 0)
        procs = [_spawn_worker(mode, args) for _ in range(2 if load == "2 trainings" else 1)]
        return [_result(p) for p in procs]
    finally:
        for j in jobs:
            j.kill()
            j.wait()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=12.0, help="measured seconds per process")
    p.add_argument("--warmup", type=int, default=5, help="iterations before the clock starts")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated, of: " + ", ".join(MODES))
    p.add_argument("--loads", default=",".join(LOADS), help="comma-separated, of: " + ", ".join(LOADS))
    args = p.parse_args(argv)
    import torch

    modes = [m.strip() for m in args.modes.split(",")]
    loads = [x.strip() for x in args.loads.split(",")]
    speed: dict[tuple[str, str], list[float]] = {}
    used: dict[tuple[str, str], list] = {}
    for load in loads:
        for mode in modes:
            res = _cell(MODES[mode], load, args)
            speed[mode, load] = [r["its"] / r["seconds"] for r in res]
            used[mode, load] = [r["threads"] for r in res]
            print(f"  {mode:14s} {load:12s} " + " ".join(f"{s:.2f} it/s" for s in speed[mode, load])
                  + f"  threads {used[mode, load]}", file=sys.stderr)
    rows = []
    for mode in modes:
        alone = speed.get((mode, "alone"), [float("nan")])[0]
        row = [mode]
        for load in loads:
            s = speed[mode, load]
            frac = " / ".join(f"{100 * v / alone:.0f}%" for v in s)
            row.append(f"{min(s):.2f} it/s ({frac})")
        rows.append(row)
    print(table(["threads"] + [f"{x} (share of alone)" for x in loads], rows))
    one = {load: min(speed["1 thread", load]) for load in loads if ("1 thread", load) in speed}
    if "auto" in modes and one:
        print("auto / 1 thread: " + ", ".join(
            f"{load} {min(speed['auto', load]) / one[load]:.2f}x" for load in loads if load in one))
    print(json_line({"benchmark": "threads", "machine": machine(torch.device("cpu")),
                     "seconds": args.seconds,
                     "speed_it_per_s": {f"{m} | {x}": v for (m, x), v in speed.items()},
                     "threads_used": {f"{m} | {x}": v for (m, x), v in used.items()}}))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _worker(sys.argv[2], float(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
