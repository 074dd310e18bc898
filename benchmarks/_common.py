"""Helpers shared by the benchmark scripts: argument parsing, timing, the machine, the output.

Each script prints a table for people and, as its last line, one JSON object for tools
(``python benchmarks/bench_predict.py | tail -n 1 | jq``).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

BUSY_CPU_PERCENT = 25.0  # CPU use by others before the run above which figures are flagged noisy


def triple(text: str) -> tuple[int, int, int]:
    """``"48"`` -> ``(48, 48, 48)``; ``"32,64,64"`` -> ``(32, 64, 64)`` (for argparse ``type=``)."""
    parts = [int(p) for p in str(text).replace("x", ",").split(",") if p.strip()]
    if len(parts) == 1:
        parts *= 3
    if len(parts) != 3 or min(parts) < 1:
        raise ValueError(f"expected one positive integer or three (z,y,x), got {text!r}")
    return tuple(parts)  # type: ignore[return-value]


def synthetic_volume(shape: Sequence[int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A float32 ``(Z, Y, X)`` image (smooth blobs plus noise, about zero mean) and its two-class
    truth (uint8: 1 inside the blobs, 0 outside)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.linspace(0, 6 * np.pi, n, dtype=np.float32) for n in shape),
                          indexing="ij")
    blobs = np.sin(z + 1.0) * np.sin(y * 1.3) * np.sin(x * 0.7 + 2.0)
    image = blobs + 0.3 * rng.standard_normal(tuple(shape), dtype=np.float32)
    return image.astype(np.float32), (blobs > 0).astype(np.uint8)


def resolve_device(name: str) -> torch.device:
    """The device asked for; a clear exit when CUDA is asked for but absent."""
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available (torch "
                         f"{torch.__version__}); run with --device cpu.")
    return torch.device(name)


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so that a timer measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, float, Any]:
    """Wall-clock seconds ``fn()`` takes (its queued device work included), the CPU seconds this
    process spent meanwhile (all threads), and what ``fn`` returned.

    On a machine shared with other work the CPU seconds are the steadier figure, with one torch
    thread (``--threads 1``): more threads also count the time they spin waiting for each other.
    """
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu, result


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """The engine's mixed precision when ``enabled`` (float16 on CUDA, bfloat16 on a CPU with
    native bfloat16, see ``napari_seg3d.engine.precision``); nothing otherwise."""
    from napari_seg3d.engine import precision

    return precision.autocast(device, enabled)


def precision_name(device: torch.device, amp: bool) -> str:
    """What ``autocast(device, amp)`` computes in: float16, bfloat16 or float32."""
    from napari_seg3d.engine import precision

    return precision.describe(device, amp)


class LoadMonitor:
    """CPU time that other processes took while a benchmark ran, as a share of all CPUs.

    A benchmark on a shared machine is only as good as the CPU it got; this says how much of
    it others took (system-wide busy time less this process's own). Needs psutil, else None.
    """

    def __init__(self) -> None:
        try:
            import psutil
        except ImportError:
            self._psutil = None
            return
        self._psutil = psutil
        self.busy_before = float(psutil.cpu_percent(interval=1.0))
        self._start = (time.perf_counter(), self._system_busy(), self._own())

    def _system_busy(self) -> float:
        t = self._psutil.cpu_times()
        return sum(t) - t.idle - getattr(t, "iowait", 0.0)

    def _own(self) -> float:
        t = self._psutil.Process().cpu_times()
        return t.user + t.system + t.children_user + t.children_system

    def others_share(self) -> float | None:
        """Share (0..1) of all CPUs used by other processes since the monitor started."""
        if self._psutil is None:
            return None
        wall0, busy0, own0 = self._start
        wall = time.perf_counter() - wall0
        others = (self._system_busy() - busy0) - (self._own() - own0)
        return max(0.0, others / (wall * (os.cpu_count() or 1)))

    def summary(self) -> dict[str, float | None]:
        share = self.others_share()
        return {"cpu_busy_before_pct": getattr(self, "busy_before", None),
                "cpu_taken_by_others_pct": None if share is None else 100.0 * share}

    def note(self) -> str | None:
        """A warning line when other processes used a noticeable share of the CPUs."""
        figures = self.summary()
        before, during = figures["cpu_busy_before_pct"], figures["cpu_taken_by_others_pct"]
        if before is None or during is None:
            return None
        if before < BUSY_CPU_PERCENT and during < BUSY_CPU_PERCENT:
            return f"Other processes used {during:.0f}% of the CPUs during the run."
        return (f"WARNING: other processes used {during:.0f}% of the CPUs during the run "
                f"({before:.0f}% busy just before it): the figures are noisy. Re-run on an idle "
                "machine to quote them.")


def machine(device: torch.device) -> dict[str, Any]:
    """What the figures were measured on."""
    info: dict[str, Any] = {
        "device": device.type,
        "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                        else platform.processor() or platform.machine()),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if hasattr(os, "getloadavg"):
        info["load_avg_1m"] = round(os.getloadavg()[0], 2)
    return info


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table; floats keep 3 significant decimals, None prints as ``-``."""
    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w)
                       for i, (h, w) in enumerate(zip(headers, widths)))]
    lines.append("  ".join("-" * w for w in widths))
    for r in cells:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(lines)


def json_line(record: dict[str, Any]) -> str:
    """One line of JSON; floats rounded to 6 significant digits."""
    def clean(v: Any) -> Any:
        if isinstance(v, float):
            return float(f"{v:.6g}")
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(record), separators=(",", ":"))
