"""How many CPU threads the compute uses: the cores this process may run on, less those that
other processes keep busy, measured again while the work runs.

torch starts as many threads as the machine has cores. When other jobs hold some of those cores
its threads wait on each other at every parallel step, and on a 2-core machine with other work a
training ran 40x slower than with one thread. So every compute loop (training, prediction, the
random forest) calls :meth:`ThreadPolicy.update` between steps: every few seconds it reads how
much CPU time other processes took on our cores (``/proc/stat`` or the cgroup's ``cpu.stat``,
less our own CPU time) and sets torch's thread count to the cores left, at least one.

A fixed count wins over the measurement: :func:`set_default_threads` (``--threads N`` on the
command line, *CPU threads* in the Train widget), else the ``NAPARI_SEG3D_THREADS`` or
``OMP_NUM_THREADS`` environment variable.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import torch

log = logging.getLogger(__name__)

ENV = "NAPARI_SEG3D_THREADS"
AUTO = "auto"
INTERVAL_S = 3.0  # how often a running loop measures the other processes again
# A core counts as taken once other processes use half of it: background work (a desktop, a
# browser) leaves the thread, a job takes it. Half, not more: while we still run one thread too
# many, a one-thread job gets only cpus / (threads + 1) of a core (2/3 on two cores).
_TAKEN_FROM = 0.5
_default: int | None = None
_local = threading.local()
_CGROUP = Path("/sys/fs/cgroup")


def parse_threads(value) -> int | None:
    """``"auto"``/None/0 -> None (measure); a positive integer -> that count.

    Raises:
        ValueError: anything else, with a sentence for the user.
    """
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", AUTO)):
        return None
    try:
        n = int(str(value).strip())
    except ValueError:
        raise ValueError(f"CPU threads must be 'auto' or a positive whole number, got {value!r}.") \
            from None
    if n < 0:
        raise ValueError(f"CPU threads must be 'auto' or a positive whole number, got {value!r}.")
    return n or None


def set_default_threads(setting) -> int | None:
    """Fix the thread count of this process's compute (``"auto"``/None: measure); returns it."""
    global _default
    _default = parse_threads(setting)
    return _default


def fixed_threads(setting=None) -> int | None:
    """The thread count fixed by ``setting``, else by :func:`set_default_threads`, else by the
    environment; None to measure."""
    n = parse_threads(setting)
    if n is not None or _default is not None:
        return n or _default
    for var in (ENV, "OMP_NUM_THREADS"):
        value = os.environ.get(var, "").strip()
        if value:
            try:
                return parse_threads(value.split(",")[0])
            except ValueError:
                log.warning("Ignoring %s=%r: not a positive whole number.", var, value)
    return None


def usable_cpus() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup CPU quota (containers)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota - 0.05)))
    return max(1, cpus)


def _cgroup_dir() -> Path | None:
    """This process's cgroup v2 folder, if the unified hierarchy is mounted."""
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                folder = _CGROUP / line[3:].lstrip("/")
                return folder if (folder / "cpu.stat").exists() else None
    except OSError:
        pass
    return None


def _cgroup_quota() -> float | None:
    """The CPU quota in cores (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), None if none."""
    try:
        folder = _cgroup_dir()
        if folder is not None and (folder / "cpu.max").exists():
            quota, period = (folder / "cpu.max").read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        v1 = _CGROUP / "cpu"
        if (v1 / "cpu.cfs_quota_us").exists():
            quota = int((v1 / "cpu.cfs_quota_us").read_text())
            period = int((v1 / "cpu.cfs_period_us").read_text())
            return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        pass
    return None


def _busy_seconds(cpus: set[int] | None) -> float | None:
    """CPU seconds spent busy so far on ``cpus`` (all when None), from ``/proc/stat``."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total = 0
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        if cpus is not None and int(name[3:]) not in cpus:
            continue
        values = [int(v) for v in fields[:8]]
        total += sum(values) - values[3] - values[4]  # everything but idle and iowait
    return total / tick


def _cgroup_busy_seconds(folder: Path) -> float | None:
    try:
        for line in (folder / "cpu.stat").read_text().splitlines():
            if line.startswith("usage_usec"):
                return int(line.split()[1]) / 1e6
    except (OSError, ValueError):
        pass
    return None


class CpuMeter:
    """CPU time taken by other processes on the cores we may use, since the last reading."""

    def __init__(self) -> None:
        try:
            self._cpus: set[int] | None = set(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            self._cpus = None
        # in a container with a quota, the cgroup's own account is what competes with us
        folder = _cgroup_dir() if _cgroup_quota() is not None else None
        self._read = (lambda: _cgroup_busy_seconds(folder)) if folder is not None else \
            (lambda: _busy_seconds(self._cpus))
        self._last = self._snapshot()
        self.own = 0.0  # cores this process used on average over the last interval

    def _snapshot(self) -> tuple[float, float | None, float]:
        return time.monotonic(), self._read(), time.process_time()

    def others(self) -> float | None:
        """Cores other processes kept busy on average since the last call (None: unknown)."""
        now = self._snapshot()
        (t0, busy0, own0), (t1, busy1, own1) = self._last, now
        self._last = now
        if busy0 is None or busy1 is None or t1 - t0 < 0.02:
            return None
        self.own = (own1 - own0) / (t1 - t0)
        return max(0.0, (busy1 - busy0) / (t1 - t0) - self.own)


def free_cores(cpus: int, others: float | None) -> int:
    """Threads to use on ``cpus`` cores when other processes keep ``others`` cores busy."""
    if others is None:
        return cpus
    return max(1, min(cpus, cpus - math.floor(others + 1 - _TAKEN_FROM)))


def runnable_others(samples: int = 5, pause: float = 0.004) -> float | None:
    """Other threads ready to run right now (``procs_running`` of ``/proc/stat``, less this
    one), averaged over a few samples: the first estimate, before any CPU time is measured."""
    counts = []
    for i in range(samples):
        try:
            for line in Path("/proc/stat").read_text().splitlines():
                if line.startswith("procs_running"):
                    counts.append(int(line.split()[1]) - 1)
        except (OSError, ValueError):
            return None
        if i + 1 < samples:
            time.sleep(pause)
    return sum(counts) / len(counts) if counts else None


class ThreadPolicy:
    """Sets torch's thread count for the calling (compute) thread and keeps it right.

    Args:
        setting: None or ``"auto"`` to measure; a positive integer fixes the count.
        interval: seconds between measurements while a loop runs.
    """

    def __init__(self, setting=None, interval: float = INTERVAL_S) -> None:
        self.fixed = fixed_threads(setting)
        self.cpus = usable_cpus()
        self.interval = interval
        self._meter: CpuMeter | None = None
        self._next = 0.0
        self.threads = self.fixed or self.cpus

    def start(self) -> int:
        """Set the thread count from a first quick look at the machine; call in the thread
        that computes."""
        if self.fixed is None and self.cpus > 1:
            self._meter = CpuMeter()
            self._next = time.monotonic() + self.interval
            self._apply(free_cores(self.cpus, runnable_others()))
        else:
            self._apply(self.fixed or 1)
        return self.threads

    def update(self) -> int:
        """Measure again if ``interval`` has passed (cheap otherwise); returns the count."""
        if self._meter is None:
            return self.threads
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self.interval
            self._apply(free_cores(self.cpus, self._meter.others()))
        return self.threads

    def _apply(self, n: int) -> None:
        if n != self.threads or torch.get_num_threads() != n:
            log.info("Using %d CPU thread(s) of %d.", n, self.cpus)
            torch.set_num_threads(n)
        self.threads = n


@contextlib.contextmanager
def compute_threads(setting=None) -> Iterator[ThreadPolicy]:
    """Within the block, torch's thread count in this thread follows a :class:`ThreadPolicy`
    (call its ``update()`` between steps). A block inside another in the same thread (a preview
    or a self-training round inside a training run) uses the outer one."""
    outer = getattr(_local, "policy", None)
    if outer is not None:
        yield outer
        return
    policy = ThreadPolicy(setting)
    policy.start()
    _local.policy = policy
    try:
        yield policy
    finally:
        _local.policy = None


def free_threads(setting=None) -> int:
    """Threads for work beside torch's (the random forest): the fixed count (see
    :func:`fixed_threads`), else the cores not busy right now. Unlike :class:`ThreadPolicy` it
    leaves torch's own count alone."""
    fixed = fixed_threads(setting)
    if fixed is not None:
        return fixed
    cpus = usable_cpus()
    return free_cores(cpus, runnable_others()) if cpus > 1 else 1

