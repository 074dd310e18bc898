"""Time from pressing *Train* to the first prediction in the viewer, and to the network's own.

A real napari window (on Xvfb when there is no display) with the nuclei sample and the Train
widget, as a user has them: each run presses Train in a fresh process (so scikit-learn and the
network are imported as in a new session) and records when the ``nuclei preview`` layer first
holds a segmentation (the random forest's), when the first self-training round replaces it (the
network's own segmentation of the whole volume) and when training ends. The Dice of each against
the ground truth is printed beside it. Target (issue 6): the first prediction within 5 s.

    python benchmarks/bench_first_prediction.py --runs 3 --iterations 800
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import numpy as np


def one_run(iterations: int, device: str) -> dict:
    """In this process: open the viewer, press Train, record the moments the preview changes."""
    from napari_seg3d._demo import _start_xvfb

    xvfb = _start_xvfb() if "DISPLAY" not in __import__("os").environ else None
    try:
        import napari
        from qtpy.QtWidgets import QApplication

        from napari_seg3d._sample_data import load_nuclei
        from napari_seg3d._widgets.train import TrainWidget
        from napari_seg3d.engine.metrics import dice_scores

        truth = load_nuclei()[1]
        viewer = napari.Viewer(show=True)
        viewer.open_sample("napari-seg3d", "nuclei3d")
        widget = TrainWidget(viewer)
        viewer.window.add_dock_widget(widget)
        widget.iterations_spin.setValue(iterations)
        widget.device_combo.setCurrentText(device)
        app = QApplication.instance()
        app.processEvents()
        events: list[tuple[float, float]] = []
        t0 = time.perf_counter()
        assert widget.start_training()
        last = None
        while widget.worker is not None:  # poll what the user sees, 20 times a second
            app.processEvents()
            if "nuclei preview" in viewer.layers:
                data = np.asarray(viewer.layers["nuclei preview"].data)
                if data.any() and (last is None or not np.array_equal(data, last)):
                    last = data.copy()
                    dice = float(np.mean(dice_scores(data, truth, (1, 2))))
                    events.append((time.perf_counter() - t0, dice))
            time.sleep(0.05)
        total = time.perf_counter() - t0
        viewer.close()
    finally:
        if xvfb is not None:
            xvfb.terminate()
    firsts = [e for e in events if e[1] > 0]
    return {"first_s": firsts[0][0] if firsts else None,
            "first_dice": firsts[0][1] if firsts else None,
            "updates": [[round(t, 2), round(d, 3)] for t, d in events],
            "train_s": total}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--iterations", type=int, default=800)
    p.add_argument("--device", default="auto")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(one_run(args.iterations, args.device)))
        return 0
    results = []
    for i in range(args.runs):
        out = subprocess.run([sys.executable, __file__, "--child", "--iterations",
                              str(args.iterations), "--device", args.device],
                             capture_output=True, text=True, check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = results[-1]
        print(f"run {i + 1}: first prediction {r['first_s']:.2f} s (Dice {r['first_dice']:.3f}); "
              f"preview updates (s, Dice) {r['updates']}; training done at {r['train_s']:.0f} s",
              file=sys.stderr)
    firsts = [r["first_s"] for r in results]
    print("\nTime from pressing Train to the first prediction in the viewer (nuclei sample)")
    print("| runs | median s | max s | target s | first Dice | network Dice at 50% / 75% | train s |")
    print("|---|---|---|---|---|---|---|")
    later = [r["updates"][1:3] for r in results]
    net = " ; ".join("/".join(f"{d:.3f}" for _, d in u) for u in later)
    print(f"| {len(results)} | {statistics.median(firsts):.2f} | {max(firsts):.2f} | 5 | "
          f"{statistics.median(r['first_dice'] for r in results):.3f} | {net} | "
          f"{statistics.median(r['train_s'] for r in results):.0f} |")
    print(json.dumps({"benchmark": "first_prediction", "runs": results,
                      "median_first_s": statistics.median(firsts), "max_first_s": max(firsts)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
