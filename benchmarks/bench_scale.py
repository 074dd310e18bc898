"""Real size: forest and ours on synthetic volumes of 10^7 to 5x10^8 voxels, out of core.

For each content kind and size (see ``_scale_volumes.py``; files cached in ``--data``), from
the same strokes (about 0.01 % of the voxels, on a few slices):

- forest: an ilastik-style random forest, fit on the strokes and predicting block by block
  (``_scale_forest.py``, in its own process);
- ours: ``napari-seg3d train`` with its defaults, then ``napari-seg3d predict --format h5``,
  each its own process;
- gui: a real napari window, the Train widget, time from *Train* to the first preview of the
  displayed slice (``_scale_gui.py``, its own process).

Every process's peak resident memory is read when it exits (``os.wait4``); Dice is computed
block by block against the truth file, every voxel counted.

    python benchmarks/bench_scale.py                              # 10^7, 3 kinds, all parts
    python benchmarks/bench_scale.py --sizes 1e7,1e8 --kinds tissue --what forest,ours
    python benchmarks/bench_scale.py --sizes 5e8 --what forest   # hours on a 2-core CPU

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
from _common import LoadMonitor, json_line, machine, table
from _scale_data import dice_blockwise, ensure_strokes, ensure_volume, stroke_planes
from _scale_volumes import CLASS_NAMES, KINDS, shape_for

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent / "bench-scale-data"
MIB = 1 << 20
STOP_GRACE_S = 120  # after SIGTERM, the training may take this long to save before a SIGKILL


# --- running a process and measuring it ----------------------------------------------------------

def run_measured(cmd: list[str], log: Path, limit_s: float | None = None) -> dict:
    """Run ``cmd`` (stdout to ``log``.out, stderr to ``log``.err); its wall seconds, peak RSS
    (``ru_maxrss`` from ``os.wait4``) and exit code. Past ``limit_s`` it gets SIGTERM (the
    command line then saves and exits), and SIGKILL :data:`STOP_GRACE_S` later."""
    env = {k: v for k, v in os.environ.items() if k != "NAPARI_SEG3D_THREADS"}
    with open(f"{log}.out", "w") as out, open(f"{log}.err", "w") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        stopped_at = None
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            now = time.perf_counter() - t0
            if limit_s is not None and stopped_at is None and now > limit_s:
                proc.send_signal(signal.SIGTERM)
                stopped_at = now
            elif stopped_at is not None and now > stopped_at + STOP_GRACE_S:
                proc.kill()
            time.sleep(0.1)
        seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"rc": proc.returncode, "seconds": seconds, "peak_rss_mib": usage.ru_maxrss / 1024,
            "stopped_at_s": stopped_at}


def _tail(path: str, n: int = 600) -> str:
    text = Path(path).read_text(errors="replace")
    return text[-n:].replace("\r", "\n")


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "napari_seg3d.cli", *args]


def cli_accepts(option: str) -> bool:
    """Whether ``napari-seg3d train`` has ``option`` (e.g. ``--minutes``)."""
    out = subprocess.run(_cli("train", "--help"), capture_output=True, text=True)
    return option in out.stdout


# --- the three parts -----------------------------------------------------------------------------

def run_forest(volume: Path, strokes: Path, work: Path, classes, seed: int) -> dict:
    out = work / "forest.h5"
    r = run_measured([sys.executable, str(HERE / "_scale_forest.py"), str(volume), str(strokes),
                      str(out), "--seed", str(seed)], work / "forest")
    if r["rc"] != 0:
        return {**r, "error": _tail(f"{work / 'forest'}.err")}
    r.update(json.loads(Path(f"{work / 'forest'}.out").read_text().strip().splitlines()[-1]))
    r["dice"] = dice_blockwise(f"{out}:/labels", volume, classes)
    out.unlink()
    return r


_PROGRESS = re.compile(r"(\d+)/(\d+) \[[^\]]*?([\d.]+)(s/it|it/s)")


def training_progress(err_log: str) -> dict:
    """The last progress of the training bar: iterations done and planned, seconds per step."""
    found = _PROGRESS.findall(Path(err_log).read_text(errors="replace"))
    if not found:
        return {}
    done, total, rate, unit = found[-1]
    s_per_it = float(rate) if unit == "s/it" else 1 / max(float(rate), 1e-9)
    return {"iterations_done": int(done), "iterations_planned": int(total), "s_per_it": s_per_it}


def run_ours(volume: Path, strokes: Path, work: Path, classes, args) -> dict:
    model = work / "model.pt"
    extra = ["--minutes", str(args.minutes)] if args.minutes and args.cli_minutes else []
    extra += shlex.split(args.train_args)
    train = run_measured(_cli("train", "--image", f"{volume}:/image", "--labels",
                              f"{strokes}:/labels", "--out", str(model), *extra),
                         work / "train", limit_s=args.ours_limit * 60)
    out = {"train": {**train, **training_progress(f"{work / 'train'}.err")}}
    if train["rc"] != 0 or not model.exists():
        out["error"] = _tail(f"{work / 'train'}.err")
        return out
    info = subprocess.run(_cli("info", str(model.with_name("model.last.pt"))),
                          capture_output=True, text=True)
    if info.returncode == 0:
        out["train"]["iterations_trained"] = json.loads(info.stdout)["iterations_trained"]
    pred_dir = work / "predicted"
    predict = run_measured(_cli("predict", f"{volume}:/image", "--model", str(model), "--out",
                                str(pred_dir), "--format", "h5", "--overwrite", "--quiet"),
                           work / "predict")
    out["predict"] = predict
    files = sorted(pred_dir.glob("*_labels.h5"))
    if predict["rc"] != 0 or not files:
        out["error"] = _tail(f"{work / 'predict'}.err")
        return out
    with h5py.File(files[0], "r") as f:
        key = "labels" if "labels" in f else next(iter(f))
    out["dice"] = dice_blockwise(f"{files[0]}:/{key}", volume, classes)
    out["seconds"] = train["seconds"] + predict["seconds"]
    files[0].unlink()
    return out


def run_gui(volume: Path, strokes: Path, work: Path, kind: str, shape, timeout: float) -> dict:
    z = stroke_planes(shape)[0][1]
    r = run_measured([sys.executable, str(HERE / "_scale_gui.py"), str(volume), str(strokes),
                      "--name", kind, "--z", str(z), "--timeout", str(timeout)], work / "gui")
    if r["rc"] != 0:
        return {**r, "error": _tail(f"{work / 'gui'}.err")}
    r.update(json.loads(Path(f"{work / 'gui'}.out").read_text().strip().splitlines()[-1]))
    return r


# --- one volume ----------------------------------------------------------------------------------

def run_case(kind: str, size: float, args) -> dict:
    """Make (or reuse) the volume and its strokes, then run the parts asked for."""
    shape = shape_for(kind, size)
    classes = list(range(1, len(CLASS_NAMES[kind]) + 1))
    volume, made = ensure_volume(args.data, kind, shape, args.seed)
    strokes, painted = ensure_strokes(volume, args.seed, args.painted / 100)
    with h5py.File(volume, "r") as f:
        generate_s = float(f.attrs["generate_s"])
    work = args.data / "runs" / (volume.stem + (f"-{args.tag}" if args.tag else ""))
    work.mkdir(parents=True, exist_ok=True)
    case = {"kind": kind, "size": size, "shape": shape, "voxels": int(np.prod(shape)),
            "painted": painted, "painted_pct": 100 * painted / np.prod(shape),
            "generate_s": generate_s, "generated_now": made}
    log(f"{kind} {shape}: {painted} voxels painted; generation "
        f"{'took' if made else 'cached, took'} {generate_s:.0f} s")
    for part in args.what:
        monitor = LoadMonitor()
        if part == "forest":
            case[part] = run_forest(volume, strokes, work, classes, args.seed)
        elif part == "ours":
            case[part] = run_ours(volume, strokes, work, classes, args)
        else:
            case[part] = run_gui(volume, strokes, work, kind, shape, args.gui_timeout)
        case[part]["load"] = {**monitor.summary(), "load_avg_1m": os.getloadavg()[0]}
        log(f"  {part}: {json.dumps(case[part], default=str)[:600]}")
    return case


def _s(value, fmt: str = ".1f", unit: str = " s") -> str:
    return "-" if value is None else f"{value:{fmt}}{unit}"


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- the table and the costs ---------------------------------------------------------------------

def _mean(dice) -> float | None:
    return None if not dice else float(np.nanmean(dice))


def _row(case: dict) -> list:
    f, o, g = case.get("forest", {}), case.get("ours", {}), case.get("gui", {})
    train, pred = o.get("train", {}), o.get("predict", {})
    its = (f"{train.get('iterations_trained', train.get('iterations_done', '?'))}/"
           f"{train.get('iterations_planned', '?')}" + (" stopped" if train.get("stopped_at_s")
                                                          else "")) if train else None
    mib = "/".join(f"{d['peak_rss_mib']:.0f}" for d in (train, pred) if d) or None
    return [case["kind"], f"{case['voxels'] / 1e6:.1f}M", f"{case['painted_pct']:.4f}",
            _mean(f.get("dice")), f.get("seconds"), f.get("peak_rss_mib"),
            _mean(o.get("dice")), o.get("seconds"), train.get("seconds"), pred.get("seconds"),
            mib, its, train.get("s_per_it"), g.get("first_preview_s"), g.get("peak_rss_mib")]


HEADERS = ["volume", "voxels", "painted %", "forest Dice", "forest s", "forest MiB",
           "ours Dice", "ours s", "train s", "predict s", "ours MiB (train/predict)",
           "iterations", "s/it", "Train->preview s", "GUI MiB"]


def costs(cases: list[dict], data: Path) -> dict:
    """Seconds each part took per kind and size, merged into ``data/costs.json`` (so a later run
    still knows what a size it did not run cost)."""
    path = data / "costs.json"
    known = json.loads(path.read_text()) if path.exists() else {}
    for c in cases:
        entry = known.setdefault(f"{c['kind']} {size_name(c['size'])}", {"voxels": c["voxels"]})
        entry["generate_s"] = c["generate_s"]
        for part, key in (("forest", "seconds"), ("gui", "seconds")):
            if part in c and c[part].get("rc") == 0:
                entry[f"{part}_s"] = c[part][key]
        ours = c.get("ours", {})
        for step in ("train", "predict"):
            if ours.get(step, {}).get("rc") == 0:
                entry[f"{step}_s"] = ours[step]["seconds"]
        entry["measured"] = time.strftime("%Y-%m-%d %H:%M")
    path.write_text(json.dumps(known, indent=1))
    return known


UNSCALED = ("train_s", "gui_s")  # training: iterations not set by the volume; GUI: to a preview


def size_name(size: float) -> str:
    """``1e7``, ``5e8``, ``3e5``."""
    mantissa, exponent = f"{size:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def cost_lines(known: dict, sizes=(1e7, 1e8, 5e8)) -> list[str]:
    """Seconds per part and size: measured where known, else scaled linearly in voxels from
    the largest measured size of that kind (except :data:`UNSCALED`: the training's iterations
    do not depend on the volume, the GUI part ends at the first preview)."""
    lines = []
    for kind in KINDS:
        measured = {float(k.split()[1]): v for k, v in known.items() if k.split()[0] == kind}
        if not measured:
            continue
        for size in sizes:
            if size in measured:
                entry, how = measured[size], "measured"
            else:
                base = max(measured)
                ratio = size / base
                entry = {k: (v if k in UNSCALED else v * ratio)
                         for k, v in measured[base].items() if k.endswith("_s")}
                how = f"ESTIMATE from {size_name(base)} (x{ratio:.3g} voxels)"
            parts = ", ".join(f"{k[:-2]} {v / 60:.1f} min" for k, v in entry.items()
                              if k.endswith("_s") and v == v)
            lines.append(f"  {kind} {size_name(size)}: {parts} [{how}]")
    return lines


NOTES = """\
Notes:
- Each volume is a pure function of (kind, shape, seed), written slab by slab to chunked HDF5
  (_scale_volumes.py, _scale_data.py); object sizes are fixed in voxels, so larger volumes hold
  more of the same content. Strokes: brush radius 1-2, random walks of 10-40 steps inside their
  class, every class on 3-5 z slices, then on one y and one x slice, until ~0.01 % is painted.
- forest: _scale_forest.py, independent of napari_seg3d: 26 ilastik-style features (intensity;
  smoothed, gradient magnitude, 3 Hessian eigenvalues at sigmas 0.7-5 scaled by the voxel size),
  scikit-learn RandomForestClassifier(100 trees, n_jobs=-1) on every painted voxel, predicted
  block by block (96x160x160 + halo) into HDF5; time = fit + prediction, process start included.
- ours: `napari-seg3d train --image V:/image --labels S:/labels --out model.pt` with its
  defaults (plus --minutes when given and accepted), then `napari-seg3d predict --format h5`;
  time = both processes' wall time; iterations from `napari-seg3d info` of model.last.pt and the
  progress bar. A training past --ours-limit minutes gets SIGTERM (it saves its models) and the
  saved best model predicts: 'stopped' in the iterations column.
- Train->preview: a real napari window (Xvfb), the image as a dask array over the HDF5 dataset,
  the strokes as a Labels layer, the view on the first painted z slice, the Train widget with
  its defaults; seconds from pressing Train until '<image> preview' holds labels on that slice.
- MiB: peak resident memory of each process (ru_maxrss). Dice: mean over the classes, every
  voxel of the volume counted, computed block by block."""


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1e7", help="voxels per volume, e.g. 1e7,1e8,5e8")
    p.add_argument("--kinds", default=",".join(KINDS), help=f"any of {', '.join(KINDS)}")
    p.add_argument("--what", default="forest,ours,gui", help="any of forest, ours, gui")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA,
                   help="folder of the cached volumes and the runs (default bench-scale-data/)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--painted", type=float, default=0.01,
                   help="percent of the voxels the strokes paint (default 0.01; the same share "
                        "on a larger volume is more strokes)")
    p.add_argument("--minutes", type=float, help="passed to `train --minutes` if it has it")
    p.add_argument("--ours-limit", type=float, default=20.0,
                   help="minutes after which a training is stopped (SIGTERM; default 20)")
    p.add_argument("--gui-timeout", type=float, default=300.0,
                   help="seconds to wait for the first preview")
    p.add_argument("--train-args", default="",
                   help="more options for `napari-seg3d train`, e.g. \"--patch-size 32,32,32\" "
                        "(to compare a setting with the defaults)")
    p.add_argument("--tag", default="", help="a name for the runs' folder (with --train-args)")
    p.add_argument("--json", type=Path, help="also write the JSON record here")
    args = p.parse_args(argv)
    args.sizes = [float(s) for s in args.sizes.split(",") if s.strip()]
    args.kinds = [k for k in args.kinds.split(",") if k.strip()]
    args.what = [w for w in args.what.split(",") if w.strip()]
    bad = [k for k in args.kinds if k not in KINDS] + [
        w for w in args.what if w not in ("forest", "ours", "gui")]
    if bad:
        p.error(f"unknown kind or part: {', '.join(bad)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.cli_minutes = "ours" in args.what and cli_accepts("--minutes")
    if args.minutes and not args.cli_minutes:
        log("napari-seg3d train has no --minutes option: training runs with its defaults.")
    monitor = LoadMonitor()
    import torch

    record = {"benchmark": "scale", "machine": machine(torch.device("cpu")),
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
              "napari_seg3d_threads_unset_for_runs": True}
    print(f"bench_scale: sizes {', '.join(map(size_name, args.sizes))}; kinds "
          f"{', '.join(args.kinds)}; parts {', '.join(args.what)}; {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, load average {os.getloadavg()[0]:.2f}; "
          f"train --minutes {'accepted' if args.cli_minutes else 'absent or not asked'}")
    cases = [run_case(kind, size, args) for size in args.sizes for kind in args.kinds]
    record["cases"] = cases
    print()
    print(table(HEADERS, [_row(c) for c in cases]))
    print()
    for c in cases:
        per_class = "; ".join(f"{part} " + " / ".join(f"{d:.3f}" for d in c[part]["dice"])
                              for part in ("forest", "ours") if c.get(part, {}).get("dice"))
        if per_class:
            print(f"Dice per class, {c['kind']} {size_name(c['size'])} "
                  f"({' / '.join(CLASS_NAMES[c['kind']])}): {per_class}")
        g = c.get("gui", {})
        if g.get("started"):
            print(f"GUI, {c['kind']} {size_name(c['size'])}: pressing Train held the GUI thread "
                  f"{g['press_s']:.2f} s; the trainer existed at {_s(g.get('trainer_built_s'))}, "
                  f"the preview on slice z={g['z']} at {_s(g.get('first_preview_s'))} (its Dice "
                  f"on the {_s(g.get('slice_covered'), '.0%', '')} of that slice it covers "
                  f"{_s(g.get('slice_dice'), '.3f', '')}); opening the window and "
                  f"layers took {g['opened_s']:.1f} s")
        for part in args.what:
            if "error" in c.get(part, {}) or "error" in c.get(part, {}).get("train", {}):
                print(f"{c['kind']} {size_name(c['size'])} {part} FAILED: {c[part].get('error')}")
    print(NOTES)
    known = costs(cases, args.data)
    record["costs"] = known
    print("What each size costs (generation, forest, ours train, ours predict, GUI to the "
          "first preview stopped, in minutes):")
    print("\n".join(cost_lines(known)))
    loads = [c[p]["load"].get("cpu_taken_by_others_pct") for c in cases for p in args.what
             if p in c]
    loads = [x for x in loads if x is not None]
    if loads:
        print(f"Other processes took {min(loads):.0f}-{max(loads):.0f} % of the CPUs during the "
              "runs (per part): times are only as good as the CPU the runs got.")
    record.update(monitor.summary())
    line = json_line(record)
    if args.json:
        args.json.write_text(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
