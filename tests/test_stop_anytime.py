"""Stopping training at any moment leaves valid best/last models.

A real ``napari-seg3d train`` process (tiny data and network, one torch thread) gets SIGINT or
SIGKILL at different moments: right after start, during training, while it writes the best or
the last model file. Whatever the moment, every model file under its final name loads and
predicts; after one SIGINT during training the command saves both models and exits 0. In the
engine, a training generator stopped or closed at any iteration leaves a loadable model.

To land a signal inside a save for sure, those runs go through ``_SLOW_SAVE``: the same CLI
writing half of each model file, pausing 0.5 s, then the rest, so the ``.part`` temporary is
visible (and half written) for half a second. The best and the last model are published together
(:func:`napari_seg3d.engine.model_file.save_models`): both new, or neither.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ball_volume

from napari_seg3d.engine import TrainConfig, Trainer, default_model_config, load_model, save_model
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


# --- the engine: the training generator stopped or closed at any iteration ------------------

@pytest.fixture(scope="module")
def strokes():
    image, balls = ball_volume()
    return image, np.array([0, 3, 7], np.uint8)[
        simulate_scribbles(balls, slices_per_axis=2, strokes_per_class=2, length=8)]


def _trainer(strokes, iterations=12) -> Trainer:
    image, labels = strokes
    cfg = TrainConfig(patch_size=(8, 16, 16), iterations=iterations, validate_every=5,
                      device="cpu", self_training=0, seed=1)
    return Trainer(image, labels, cfg, model_config=default_model_config(
        1, 2, cfg.patch_size, base_filters=4, levels=2))


def _prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "seg3d-prefetch" and t.is_alive()]


def _loads_and_predicts(model, image, path: Path):
    loaded = load_model(save_model(model, path))
    labels = loaded.predict(image, device="cpu")
    assert labels.shape == image.shape and set(np.unique(labels)) <= CLASSES
    return loaded


@pytest.mark.parametrize("after", [0, 1, 5, 11])
def test_stopping_the_trainer_at_any_iteration_gives_best_and_last(strokes, tmp_path, after,
                                                                   one_thread):
    """``request_stop`` after ``after`` iterations (5: right after a validation snapshot)."""
    trainer = _trainer(strokes)
    gen = trainer.run()
    for _ in range(after):
        next(gen)
    trainer.request_stop()
    with pytest.raises(StopIteration) as done:
        next(gen)
    result = done.value.value
    assert result.stopped and result.last.iteration == after
    assert result.best.iteration <= after and not _prefetch_threads()
    last = _loads_and_predicts(result.last, strokes[0], tmp_path / "last.pt")
    _loads_and_predicts(result.best, strokes[0], tmp_path / "best.pt")
    assert last.iteration == after and last.optimizer_state is not None


@pytest.mark.parametrize("after", [1, 11])
def test_closing_the_training_generator_leaves_a_loadable_model(strokes, tmp_path, after,
                                                                one_thread):
    """``generator.close()`` (what a cancelled worker does) between two iterations: the
    prefetch thread ends and the trainer's model, as trained so far, saves and loads."""
    trainer = _trainer(strokes)
    gen = trainer.run()
    for _ in range(after):
        next(gen)
    gen.close()
    assert not _prefetch_threads()
    loaded = _loads_and_predicts(trainer.model, strokes[0], tmp_path / "closed.pt")
    assert len(loaded.history["loss"]) == after


# --- a stop inside a step or a self-training round: it takes effect between two layers ---------

def _stop_inside(trainer: Trainer, *, step: int, where: str) -> list[str]:
    """Press Stop (``request_stop``) from inside step ``step`` (1-based): before the 3rd layer of
    its forward pass, or as the 3rd gradient of its backward pass arrives, as a user's click
    lands in the middle of a long step. Returns the layers that ran after the press."""
    import torch

    calls, after, pressed = {"n": 0, "step": 0}, [], []
    convs = [m for m in trainer.model.network.modules() if isinstance(m, torch.nn.Conv3d)]

    def count_step(module, args):  # the first layer starts a step
        if module is convs[0] and module.training:
            calls["step"] += 1
            calls["n"] = 0

    def forward(module, args):
        if pressed:
            after.append(f"forward {type(module).__name__}")
        elif where == "forward" and calls["step"] == step and module.training:
            calls["n"] += 1
            if calls["n"] == 3:
                trainer.request_stop()
                pressed.append(True)

    def backward(grad):
        if pressed:
            after.append("backward")
        elif calls["step"] == step:
            calls["n"] += 1
            if calls["n"] == 3:
                trainer.request_stop()
                pressed.append(True)
        return grad

    def watch_gradient(module, args, output):
        if where == "backward" and module.training and output.requires_grad:
            output.register_hook(backward)

    convs[0].register_forward_pre_hook(count_step)
    for m in convs:
        m.register_forward_pre_hook(forward)
        m.register_forward_hook(watch_gradient)
    return after


@pytest.mark.parametrize("where", ["forward", "backward"])
def test_a_stop_inside_a_step_takes_effect_at_the_next_layer(strokes, tmp_path, where, one_thread):
    """The step being computed is dropped, the models are those of the steps before it, and the
    run resumes from its last model exactly like a run stopped between the same two steps."""
    trainer = _trainer(strokes)
    ran_after = _stop_inside(trainer, step=4, where=where)
    records, result = [], None
    gen = trainer.run()
    with pytest.raises(StopIteration) as done:
        while True:
            records.append(next(gen))
    result = done.value.value
    assert ran_after == [] and [r.iteration for r in records] == [1, 2, 3]
    assert result.stopped and result.last.iteration == 3 and len(result.last.history["loss"]) == 3
    assert not _prefetch_threads()

    between = _trainer(strokes)  # the same run stopped between steps 3 and 4
    gen = between.run()
    for _ in range(3):
        next(gen)
    between.request_stop()
    with pytest.raises(StopIteration) as done:
        next(gen)
    reference = done.value.value.last
    for a, b in zip(result.last.network.state_dict().values(),
                    reference.network.state_dict().values()):
        assert torch_equal(a, b)
    loaded = _loads_and_predicts(result.last, strokes[0], tmp_path / "last.pt")
    assert loaded.iteration == 3 and loaded.optimizer_state is not None


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def test_a_stop_during_a_self_training_round_ends_the_round_at_once(strokes, one_thread):
    """A self-training round predicts the whole volume; Stop lands inside its first window."""
    import torch

    image, labels = strokes
    cfg = TrainConfig(patch_size=(8, 16, 16), iterations=8, validate_every=5, device="cpu",
                      self_training=1, seed=1)
    trainer = Trainer(image, labels, cfg, model_config=default_model_config(
        1, 2, cfg.patch_size, base_filters=4, levels=2))
    inference_layers = []

    def press(module, args):
        if not torch.is_grad_enabled():  # the round's prediction (no gradients)
            inference_layers.append(module)
            trainer.request_stop()

    for m in trainer.model.network.modules():
        if isinstance(m, torch.nn.Conv3d):
            m.register_forward_pre_hook(press)
    gen = trainer.run()
    records = []
    with pytest.raises(StopIteration) as done:
        while True:
            records.append(next(gen))
    result = done.value.value
    # the round starts at iteration 4 (half the run); only its first layer ran
    assert len(inference_layers) == 1 and [r.iteration for r in records] == [1, 2, 3, 4]
    assert result.stopped and result.last.iteration == 4
