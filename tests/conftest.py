"""Test set-up: napari's config, caches and autosaved sessions in a temporary folder, Qt
through Xvfb (pytest-xvfb)."""

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

_tmp = Path(tempfile.mkdtemp(prefix="seg3d-tests-"))
for var in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_RUNTIME_DIR",
            "XDG_STATE_HOME"):  # state: the Train widget's autosaved sessions
    os.environ.setdefault(var, str(_tmp / var.lower()))
    Path(os.environ[var]).mkdir(parents=True, exist_ok=True, mode=0o700)
os.environ.setdefault("NAPARI_CONFIG", str(_tmp / "napari-settings.yaml"))
# One compute thread unless a test asks for more: results do not depend on how busy the machine
# is (napari-seg3d otherwise measures the free cores; tests/test_threads.py tests that).
os.environ.setdefault("NAPARI_SEG3D_THREADS", "1")


@pytest.fixture
def blobs():
    """A tiny two-class volume ``(image float32 (17, 24, 26), truth uint8 in {1, 2})`` with bright
    balls on a dark noisy background, and sparse scribbles drawn from it."""
    from napari_seg3d.engine.training.scribbles import simulate_scribbles

    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[:17, :24, :26]
    truth = np.zeros((17, 24, 26), np.uint8)
    for cz, cy, cx in [(5, 6, 7), (11, 16, 18), (8, 17, 6)]:
        truth[(z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 < 16] = 1
    image = (truth * 1.0 + rng.normal(0, 0.2, truth.shape)).astype(np.float32)
    scribbles = simulate_scribbles(truth, slices_per_axis=2, strokes_per_class=2, length=8, seed=0)
    return image, truth + 1, scribbles


@pytest.fixture
def one_thread():
    """One torch thread for the test (bit-for-bit comparisons, no oversubscription)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def ball_volume(shape=(13, 24, 26)) -> tuple[np.ndarray, np.ndarray]:
    """A noisy float32 image of three bright balls, and the balls' mask (bool)."""
    z, y, x = np.indices(shape)
    balls = np.zeros(shape, bool)
    for cz, cy, cx in [(4, 6, 7), (8, 16, 18), (6, 17, 6)]:
        balls |= (z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 < 14
    image = balls + np.random.default_rng(0).normal(0, 0.2, shape)
    return image.astype(np.float32), balls


def drain(gen) -> tuple[list, object]:
    """Drive a generator (a training run, a batch) to its end: what it yielded, and its return
    value."""
    from napari_seg3d.engine import run_to_end as engine_run_to_end

    items: list = []
    value = engine_run_to_end(gen, items.append)
    return items, value


def run_to_end(gen):
    """Drive a generator to its end; its return value."""
    return drain(gen)[1]


def catch_notifications(monkeypatch, module, kinds=("error", "warning", "info")) -> dict:
    """The notifications a widget module shows, by kind: its ``show_<kind>`` functions replaced
    by lists that collect the messages."""
    out = {kind: [] for kind in kinds}
    for kind, messages in out.items():
        monkeypatch.setattr(module, f"show_{kind}", messages.append)
    return out
