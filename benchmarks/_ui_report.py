"""The report of ``bench_ui_latency.py``: the lateness table, the first region, the GUI-thread
calls per phase and the longest stalls with what ran in them, then one JSON line."""

from __future__ import annotations

import collections
import os

import numpy as np
from _common import json_line, table
from _ui_measure import (
    BASE_FILTERS,
    LEAD_S,
    PATCH,
    STALL_MS,
    STALLS_SHOWN,
    TAIL_S,
    TARGET_MAX_MS,
    TARGET_P99_MS,
    TICK_MS,
    Handlers,
    frames_of_interest,
)

NOTES = """\
Notes:
- lateness = interval between two ticks of a 10 ms QTimer (PreciseTimer) minus 10 ms; the loop
  runs Qt's own event loop (no polling with sleeps). A handler that blocks the GUI thread for T ms
  makes one tick T-10 ms late. p50/p99/max over every tick of the phase.
- redraw (reference, no plugin code): {redraws} canvas redraws one after the other, nothing else;
  its max is what one frame of this viewer costs here, the floor for any change shown on screen.
- a phase's ticks run from {lead} s before the press to {tail} s after the worker finished;
  duration is from the press to the widget's worker being None (training: start_training();
  prediction: start_prediction()). Both presses run inside the event loop, like a click.
- others %: CPU time taken by other processes during the phase, as a share of all CPUs; above
  25% the row is marked noisy (*): re-run on a quieter machine before quoting it.
- first region: from pressing Predict to the end of the first _on_region call that left non-zero
  labels in the layer (written and its refresh issued); on screen: to the first region that
  covers the displayed slice (2D: the current z; 3D: any region).
- handlers: wall time of GUI-thread calls (inclusive: napari's progress bar runs
  processEvents, so a handler can contain canvas paints and other handlers). "Qt window event
  UpdateRequest" is Qt repainting and composing the window (2 ms or longer only); canvas paints
  end with glFinish(){gl_note}, so a software renderer's work is timed in paintGL.
- the first training of a process also imports torch._dynamo in the worker (torch.optim builds
  it lazily), which holds the GIL long enough to show in the first train row."""



def stats(late: np.ndarray) -> dict[str, float]:
    if late.size == 0:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan")}
    return {"p50_ms": float(np.percentile(late, 50)), "p99_ms": float(np.percentile(late, 99)),
            "max_ms": float(late.max())}


def last_ms(handlers: Handlers, name: str) -> float | None:
    for n, _, dur, _ in reversed(handlers.calls):
        if n.endswith(f".{name}"):
            return dur * 1e3
    return None


def _overlapping(calls, a: float, b: float, min_s: float = 0.005, most: int = 8) -> str:
    """The calls that ran at least ``min_s`` of the interval ``(a, b)``, in order: ``name ms``,
    or ``name ms (of total)`` when the call was longer than its part of the interval."""
    out = []
    for name, start, dur, depth in sorted(calls, key=lambda c: c[1]):
        part = min(start + dur, b) - max(start, a)
        if part >= min_s:
            total = f" (of {dur * 1e3:.0f})" if dur - part > 0.002 else ""
            out.append(f"{'>' * depth}{name} {part * 1e3:.0f}{total}")
    return "; ".join(out[:most])


def _outermost(calls, a: float, b: float, min_s: float = 0.005) -> str:
    """The least nested call that ran at least ``min_s`` of ``(a, b)`` (the longest part among
    equals), or ``(none)``."""
    best = None
    for name, start, dur, depth in calls:
        part = min(start + dur, b) - max(start, a)
        if part >= min_s and (best is None or (depth, -part) < best[0]):
            best = ((depth, -part), name)
    return "(none)" if best is None else best[1]


def report(args, rows, phases, first_region, start_ms, handlers, probe, sampler, monitor,
            painted, renderer, total_s, virtual, env) -> None:
    z, y, x = args.size
    net = env["network"]
    size = f", {net['parameters'] / 1e6:.2f}M parameters" if "parameters" in net else ""
    print(f"GUI event-loop lateness: {z}x{y}x{x} float32 volume, {painted} voxels painted; "
          f"U-Net base filters {BASE_FILTERS}{size}, patch {tuple(net.get('patch', PATCH))}, "
          f"batch 2, {args.iterations} "
          f"iterations{' with live preview' if args.preview else ''}; prediction overlap 0.5, "
          "batch 4, streamed into a Labels layer.")
    print(f"napari {env['napari']}, {env['qt']}, torch {env['torch']} "
          f"({env['torch_threads']} threads), {env['cpu_count']} CPUs, "
          f"{'Xvfb' if virtual else 'display ' + os.environ.get('DISPLAY', '')}, "
          f"OpenGL {renderer}; {TICK_MS} ms timer; whole run {total_s:.0f} s.")
    print()
    noisy = lambda r: r["others_cpu_pct"] is not None and r["others_cpu_pct"] > 25
    print(table(
        ["phase", "display", "p50 ms", "p99 ms", "max ms", "ticks", "duration s", "others %",
         f"p99<{TARGET_P99_MS:.0f} & max<{TARGET_MAX_MS:.0f}"],
        [[r["phase"], r["display"], r["p50_ms"], r["p99_ms"], r["max_ms"], r["ticks"],
          r["duration_s"], None if r["others_cpu_pct"] is None else
          f"{r['others_cpu_pct']:.0f}{'*' if noisy(r) else ''}",
          "ref" if r["pass"] is None else "PASS" if r["pass"] else "MISS"] for r in rows]))
    print()
    for label, f in first_region.items():
        a, b = f["in_layer_s"], f["on_screen_s"]
        print(f"Predict -> first region in the layer ({label}): "
              f"{'-' if a is None else f'{a:.2f} s'}; on the displayed slice: "
              f"{'-' if b is None else f'{b:.2f} s'}.")
    print("Pressing the button (the call itself, GUI thread): " + ", ".join(
        f"{k.replace('_', ' ')} {'-' if v is None else f'{v:.0f} ms'}" for k, v in start_ms.items()))

    # Handlers: max ms (calls) per phase.
    per_phase = {f"{p} {nd}D": Handlers.summary(handlers.between(t0, t1))
                 for p, nd, t0, t1 in phases}
    shown = {k: v for k, v in per_phase.items() if k.split()[0] in ("train", "predict")}
    names = sorted({n for s in shown.values() for n in s},
                   key=lambda n: -max(s.get(n, {"max_ms": 0})["max_ms"] for s in shown.values()))
    print()
    print("GUI-thread calls while training and predicting: max ms / total ms (calls), inclusive "
          "of nested calls")
    print(table(["call"] + list(shown), [
        [n] + [f"{s[n]['max_ms']:.0f}/{s[n]['total_ms']:.0f} ({s[n]['calls']})" if n in s else ""
               for s in shown.values()] for n in names]))

    # The longest stalls of each phase and what ran in them.
    stalls: list[tuple[float, str, float, float]] = []
    print()
    print(f"Ticks more than {STALL_MS:.0f} ms late, the {STALLS_SHOWN} longest of each phase, with "
          "the GUI-thread calls of 5 ms or more that ran in them ('>': nested in the call before):")
    for p, nd, t0, t1 in phases:
        ends, late = probe.window(t0, t1)
        found = sorted(((float(lt), f"{p} {nd}D", float(end) - (lt + TICK_MS) / 1e3, float(end))
                        for end, lt in zip(ends, late) if lt > STALL_MS), reverse=True)
        stalls += found
        if not found:
            continue
        blame = collections.Counter(_outermost(handlers.calls, a, b) for _, _, a, b in found)
        print(f"  {p} {nd}D: {len(found)} ticks; by the outermost call in them: " + ", ".join(
            f"{n} {k}" for n, k in blame.most_common()))
        press = next((c[1] for c in handlers.calls if t0 <= c[1] <= t1 and (
            c[0].endswith(".start_training") or c[0].endswith(".start_prediction"))), t0)
        for lt, _, a, b in found[:STALLS_SHOWN]:
            text = _overlapping(handlers.calls, a, b) \
                or "(no instrumented call: napari/Qt internals or the GIL)"
            print(f"    {lt:6.0f} ms at {a - press:+6.1f} s  {text}")
            if sampler is not None:
                key = max((k for k in sampler.samples if a - 1e-3 <= k <= a + 1e-3), default=None)
                for stack, n in collections.Counter(
                        frames_of_interest(s) for s in sampler.samples.get(key, [])
                ).most_common(2):
                    print(f"               {n} samples: {stack}")
                for stack, n in collections.Counter(sampler.others.get(key, [])).most_common(2):
                    print(f"               other thread, {n} samples: {stack}")
    if not stalls:
        print("  none")
    stalls.sort(reverse=True)
    print()
    print(NOTES.format(lead=LEAD_S, tail=TAIL_S, redraws=args.redraws,
                       gl_note=" (not in this run: --no-gl-finish)" if args.no_gl_finish else ""))
    note = monitor.note()
    if note:
        print(note)
    print(json_line({
        "benchmark": "ui_latency", "size": list(args.size), "iterations": args.iterations,
        "patch": list(env["network"].get("patch", PATCH)), "base_filters": BASE_FILTERS,
        "preview": args.preview,
        "gl_finish": not args.no_gl_finish,
        "tick_ms": TICK_MS, "targets_ms": {"p99": TARGET_P99_MS, "max": TARGET_MAX_MS},
        "rows": rows, "first_region": first_region, "start_call_ms": start_ms,
        "handlers": per_phase, "stalls_ms": [round(s[0], 1) for s in stalls[:20]],
        "opengl": str(renderer), **env, "load": monitor.summary(), "total_s": total_s,
    }))
