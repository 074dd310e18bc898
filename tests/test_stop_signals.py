"""Stopping ``napari-seg3d train`` with a signal at any moment leaves valid best/last models.

A real ``napari-seg3d train`` process (tiny data and network, one torch thread) gets SIGINT or
SIGKILL at different moments: right after start, during training, while it writes the best or
the last model file. Whatever the moment, every model file under its final name loads and
predicts; after one SIGINT during training the command saves both models and exits 0.

To land a signal inside a save for sure, those runs go through ``_SLOW_SAVE``: the same CLI
writing half of each model file, pausing 0.5 s, then the rest, so the ``.part`` temporary is
visible (and half written) for half a second. The best and the last model are published together
(:func:`napari_seg3d.engine.model_file.save_models`): both new, or neither. The engine's side
(the training generator stopped inside a step) is in test_stop_anytime.py.
"""
from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ball_volume

from napari_seg3d.engine import load_model
from napari_seg3d.engine.io import write_volume
from napari_seg3d.engine.training.scribbles import simulate_scribbles

TINY = ["--patch-size", "8", "16", "16", "--base-filters", "4", "--levels", "2", "--device", "cpu",
        "--no-report", "--self-training", "0"]
CLASSES = {3, 7}

_SLOW_SAVE = """
import builtins, sys, time
import napari_seg3d.engine.io._publish as publish
class SlowFile:  # writes half of a file, pauses 0.5 s, then writes the rest
    def __init__(self, fh):
        self.fh = fh
    def write(self, data):
        self.fh.write(data[: len(data) // 2])
        self.fh.flush()
        time.sleep(0.5)
        return self.fh.write(data[len(data) // 2:])
    def __getattr__(self, name):
        return getattr(self.fh, name)
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        return self.fh.__exit__(*exc)
publish.open = lambda *args, **kwargs: SlowFile(builtins.open(*args, **kwargs))
from napari_seg3d.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """``(folder, image)``: image.tif and labels.tif (strokes painted 3 and 7) in ``folder``."""
    folder = tmp_path_factory.mktemp("stop")
    image, balls = ball_volume()
    strokes = simulate_scribbles(balls, slices_per_axis=2, strokes_per_class=2, length=8)
    write_volume(folder / "image.tif", image)
    write_volume(folder / "labels.tif", np.array([0, 3, 7], np.uint8)[strokes])
    return folder, image


class Run:
    """One ``napari-seg3d train`` process writing ``out/m.pt`` and ``out/m.last.pt``."""

    def __init__(self, data, out: Path, iterations: int, *, slow_save: bool = False) -> None:
        folder, self.image = data
        self.out = out
        out.mkdir()
        self.best, self.last = out / "m.pt", out / "m.last.pt"
        head = ["-c", _SLOW_SAVE] if slow_save else ["-m", "napari_seg3d.cli"]
        args = ["train", "--image", str(folder / "image.tif"), "--labels",
                str(folder / "labels.tif"), "--out", str(self.best), "--iterations",
                str(iterations), *TINY]
        self.stdout, self.stderr = out / "stdout.txt", out / "stderr.txt"
        # SIGINT as in a terminal, even when the test runner was started with it ignored (an
        # ignored signal stays ignored across exec; a handled one is reset to the default)
        ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        if ignored:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            with open(self.stdout, "wb") as so, open(self.stderr, "wb") as se:
                self.proc = subprocess.Popen(
                    [sys.executable, *head, *args], stdout=so, stderr=se,
                    stdin=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
        finally:
            if ignored:
                signal.signal(signal.SIGINT, signal.SIG_IGN)

    def iteration(self) -> int:
        """The last iteration the progress bar showed (0 before the first)."""
        found = re.findall(rb"\| *(\d+)/\d+ \[", self.stderr.read_bytes())
        return int(found[-1]) if found else 0

    def wait_for(self, condition, what: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.proc.poll() is not None:
                pytest.fail(f"the run ended (code {self.proc.returncode}) before {what}:\n"
                            f"{self.stderr.read_text(errors='replace')[-2000:]}")
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.002)

    def writing(self, target: Path) -> bool:
        return any(self.out.glob(f".{target.name}.*.part"))

    def signal(self, sig: int) -> int:
        self.proc.send_signal(sig)
        return self.finish()

    def finish(self) -> int:
        """The exit code, once the process has ended (killed after 60 s)."""
        try:
            return self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()

    def check_models(self) -> dict[str, object]:
        """Every model file under its final name loads and predicts; returns them by name."""
        models = {}
        for path in (self.best, self.last):
            if path.exists():
                model = load_model(path)
                labels = model.predict(self.image, device="cpu")
                assert labels.shape == self.image.shape and set(np.unique(labels)) <= CLASSES
                models[path.name] = model
        names = {p.name for p in self.out.iterdir()} - {"stdout.txt", "stderr.txt"}
        # nothing else, except the hidden temporary of a write that was cut short
        assert all(n in models or (n.startswith(".m.") and n.endswith(".part")) for n in names), names
        return models

    def text(self) -> tuple[str, str]:
        return self.stdout.read_text(), self.stderr.read_text(errors="replace")


def _assert_saved_after_stop(run: Run, code: int, iterations: int) -> None:
    out, err = run.text()
    assert code == 0, err[-2000:]
    models = run.check_models()
    assert set(models) == {"m.pt", "m.last.pt"} and "Saved the best model" in out
    last, best = models["m.last.pt"], models["m.pt"]
    assert 1 <= last.iteration < iterations and best.iteration <= last.iteration
    assert last.optimizer_state is not None  # it can resume
    assert not list(run.out.glob(".*.part")) and "Traceback" not in err


@pytest.mark.parametrize("delay", [0.0, 0.6])
def test_sigint_right_after_start_exits_with_no_partial_files(data, tmp_path, delay):
    run = Run(data, tmp_path / "run", iterations=400)
    time.sleep(delay)  # during start-up: imports, reading the volumes, building the trainer
    code = run.signal(signal.SIGINT)
    assert code in (130, -signal.SIGINT, 0), run.text()[1][-2000:]
    models = run.check_models()
    if code == 0:  # the signal arrived once training had started: stopped and saved
        assert set(models) == {"m.pt", "m.last.pt"}


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])  # SIGTERM: a job's time limit
def test_a_stop_signal_during_training_saves_best_and_last_and_exits_0(data, tmp_path, signum):
    run = Run(data, tmp_path / "run", iterations=400)
    run.wait_for(lambda: run.iteration() >= 5, "iteration 5")
    code = run.signal(signum)
    _assert_saved_after_stop(run, code, 400)
    assert "Stopping now" in run.text()[1]


def _signal_when(plan: list[tuple[Run, object, int]], timeout: float = 90.0) -> list[int]:
    """Run the processes of ``plan`` side by side; send each its signal as soon as its condition
    holds; return their exit codes (in order)."""
    pending, deadline = list(range(len(plan))), time.monotonic() + timeout
    while pending:
        for i in list(pending):
            run, condition, sig = plan[i]
            if condition():
                run.proc.send_signal(sig)
                pending.remove(i)
            elif run.proc.poll() is not None:
                pytest.fail(f"run {i} ended (code {run.proc.returncode}) before its moment:\n"
                            f"{run.text()[1][-2000:]}")
        assert time.monotonic() < deadline, "timed out waiting for the moments"
        time.sleep(0.002)
    return [run.finish() for run, _, _ in plan]


def test_sigint_while_a_model_is_written_still_saves_both(data, tmp_path):
    """Training ran to its end; the user presses Ctrl-C while the best model is written, or
    while the last one is (two runs side by side)."""
    runs = [Run(data, tmp_path / which, iterations=12, slow_save=True) for which in ("b", "l")]
    codes = _signal_when([(runs[0], lambda: runs[0].writing(runs[0].best), signal.SIGINT),
                          (runs[1], lambda: runs[1].writing(runs[1].last), signal.SIGINT)])
    for run, code in zip(runs, codes):
        models = run.check_models()  # whatever the outcome, what exists is whole
        assert set(models) == {"m.pt", "m.last.pt"}, run.text()[1][-2000:]
        assert code in (0, 130) and "Traceback" not in run.text()[1]
        assert models["m.last.pt"].iteration == 12


def test_sigkill_at_random_moments_leaves_only_whole_model_files(data, tmp_path):
    """Three runs side by side, killed: during start-up, at a random iteration, and while the
    last model is written (the best one is then whole, but only as a temporary: the two are
    published together, so neither is under its final name)."""
    rng = random.Random(4)
    pause, iteration = rng.uniform(0.2, 1.5), rng.randint(1, 25)
    runs = [Run(data, tmp_path / "start", iterations=200),
            Run(data, tmp_path / "train", iterations=200),
            Run(data, tmp_path / "save", iterations=30, slow_save=True)]
    t0 = time.monotonic()
    codes = _signal_when([
        (runs[0], lambda: time.monotonic() - t0 >= pause, signal.SIGKILL),
        (runs[1], lambda: runs[1].iteration() >= iteration, signal.SIGKILL),
        (runs[2], lambda: runs[2].writing(runs[2].last), signal.SIGKILL)])
    assert codes == [-signal.SIGKILL] * 3
    assert [set(run.check_models()) for run in runs] == [set(), set(), set()]
    parts = sorted(p.name.split(".")[2] for p in runs[2].out.glob(".*.part"))
    assert parts == ["last", "pt"]  # .m.pt.<...>.part (whole) and .m.last.pt.<...>.part
