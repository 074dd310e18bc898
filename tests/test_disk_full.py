"""A full disk, for real: a small tmpfs is mounted (root only), filled, and ``napari-seg3d
predict`` (every format) and ``train`` write into it through the real command line. Every case
ends in one sentence and a non-zero exit, leaves no temporary and no empty folder it made, and
leaves the files that were there as they were. Without root (or where mounting is refused) the
tests are skipped with the reason; they run as root on Linux.

Two kinds of full disk: one that cannot hold the outputs from the start (refused before any
work, from the expected size) and one that fills during the write (the outputs compress worse
than the check assumes, or the disk fills while a run trains): the write fails, on any format.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_seg3d.cli import main
from napari_seg3d.engine import SegmentationModel, TrainConfig, default_model_config, save_model
from napari_seg3d.engine.errors import OutputError
from napari_seg3d.engine.io import write_volume
from napari_seg3d.engine.io._space import MARGIN_BYTES, MARGIN_FRACTION, expected_bytes
from napari_seg3d.engine.models import build_model
from napari_seg3d.engine.normalization import Normalization
from napari_seg3d.engine.prediction.output_space import output_volumes

PATCH = (8, 16, 16)
SHAPE = (32, 64, 64)  # labels 131 kB, probabilities 1 MB (raw)
FORMATS = ["npy", "h5", "tif", "zarr"]
TINY = ["--patch-size", "8", "16", "16", "--base-filters", "4", "--levels", "2",
        "--self-training", "0", "--device", "cpu", "--quiet"]


class Disk:
    """A mounted tmpfs and a file that fills it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.filler = root / "filler"

    def free(self) -> int:
        return shutil.disk_usage(self.root).free

    def fill(self, leave: int = 0) -> None:
        """Grow the filler until ``leave`` bytes (rounded down to pages) are free."""
        with open(self.filler, "ab") as fh:
            extra = self.free() - leave
            if extra > 0:
                fh.write(bytes(extra // 4096 * 4096))
        assert self.free() <= max(leave, 0) + 4096

    def empty(self) -> None:
        self.filler.unlink(missing_ok=True)

    def leftovers(self) -> list[str]:
        """Every entry on the disk but the filler."""
        return sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*")
                      if p != self.filler)


def _mount(folder: Path, size: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs to fill needs root (these tests fill a real file system)")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                             str(folder)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"mount -t tmpfs is not permitted here: {result.stderr.strip()}")


@pytest.fixture
def disk(tmp_path):
    """A 4 MiB tmpfs at ``tmp_path/disk``, unmounted after the test."""
    root = tmp_path / "disk"
    root.mkdir()
    _mount(root, "4m")
    try:
        yield Disk(root)
    finally:
        subprocess.run(["umount", str(root)], check=False)


def _model() -> SegmentationModel:
    config = default_model_config(1, 2, PATCH, base_filters=4, levels=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        network = build_model(config.architecture, **config.kwargs)
    return SegmentationModel(network=network, model_config=config,
                             train_config=TrainConfig(patch_size=PATCH, device="cpu"),
                             class_values=(1, 2), normalization=Normalization((0.0,), (1.0,)))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """``(folder, model file, image file)``: an untrained tiny model (its probabilities of a
    noise image are noise: they hardly compress) and a noise image."""
    folder = tmp_path_factory.mktemp("full")
    image = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    return folder, save_model(_model(), folder / "m.pt"), write_volume(folder / "x.tif", image)


def _digest(path: Path) -> str:
    if path.is_dir():
        return hashlib.sha1(b"".join(p.read_bytes() for p in sorted(path.rglob("*"))
                                     if p.is_file())).hexdigest()
    return hashlib.sha1(path.read_bytes()).hexdigest()


def _predict(files, out: Path, fmt: str, *extra) -> list[str]:
    _, model, image = files
    return ["predict", str(image), "--model", str(model), "--out", str(out), "--format", fmt,
            "--probabilities", "--device", "cpu", "--quiet", *extra]


def _failed_line(code: int, out: str, err: str) -> str:
    """The reason of the one failed file of a ``predict`` that must fail."""
    assert code == 3 and err.strip() == "1 of 1 file(s) failed.", (code, out, err)
    lines = out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("failed") and "Traceback" not in err, out
    return lines[0].partition(" -> ")[2]


# --- refused before any work: the disk cannot hold the outputs --------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_predict_into_a_full_disk_is_refused_before_predicting(files, disk, capsys, fmt):
    disk.fill(leave=100_000)
    out = disk.root / "out" / "deeper"
    code = main(_predict(files, out, fmt))
    o, e = capsys.readouterr()
    reason = _failed_line(code, o, e)
    assert reason.startswith(f"Cannot write the labels {out / ('x_labels.' + fmt)} and the "
                             "probabilities beside it: it needs about "), reason
    assert reason.endswith("Free some space or choose another folder; nothing was written.")
    assert disk.leftovers() == []  # no temporary, and the folders it made are gone


@pytest.mark.parametrize("fmt", FORMATS)
def test_earlier_outputs_stay_when_the_disk_is_full(files, disk, capsys, fmt):
    out = disk.root / "out"
    assert main(_predict(files, out, fmt)) == 0
    capsys.readouterr()
    before = {p.name: _digest(p) for p in out.iterdir()}
    disk.fill(leave=50_000)
    reason = _failed_line(main(_predict(files, out, fmt, "--overwrite")), *capsys.readouterr())
    assert "Cannot write the labels" in reason
    assert {p.name: _digest(p) for p in out.iterdir()} == before  # nothing hidden left either


def test_a_zarr_store_written_over_another_leaves_no_hidden_store(files, tmp_path, capsys):
    out = tmp_path / "out"
    for _ in range(2):
        assert main(_predict(files, out, "zarr", "--overwrite")) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        ".napari-seg3d-outputs.json", "x_labels.zarr", "x_probabilities.zarr"]


# --- the disk fills during the write ----------------------------------------------------------

_PREDICT = "import sys; from napari_seg3d.cli import main; sys.exit(main(sys.argv[1:]))"


def _run(args, timeout: float = 300) -> subprocess.CompletedProcess:
    """The command in a process of its own: a crash (SIGBUS, a segmentation fault) is its exit
    code, not the end of the test run."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", _PREDICT, *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env, check=False)


@pytest.mark.parametrize("fmt", ["h5", "tif", "zarr"])
def test_a_disk_that_fills_during_the_write_ends_in_one_sentence(files, disk, tmp_path, fmt):
    """Free space between what the check asks for (half the raw size of the probabilities) and
    what the noise takes once compressed: the check passes, the write fails. Before: h5
    crashed with a segmentation fault (exit -11) and HDF5 tracebacks."""
    volumes = output_volumes(_model(), Path(f"x_labels.{fmt}"), SHAPE, probabilities=True)
    asked = sum(expected_bytes(s, d, f".{fmt}") for _, _, s, d in volumes)
    asked = int(asked * (1 + MARGIN_FRACTION)) + MARGIN_BYTES
    assert _run(_predict(files, tmp_path / "big", fmt)).returncode == 0
    taken = sum(p.stat().st_size for p in (tmp_path / "big").rglob("*") if p.is_file())
    assert taken > asked + 200_000, (taken, asked)  # noise: the window exists
    disk.fill(leave=(asked + taken) // 2)
    result = _run(_predict(files, disk.root / "out", fmt))
    reason = _failed_line(result.returncode, result.stdout, result.stderr)
    assert reason.startswith("Cannot write the ") and ": the disk is full. Free some space" in reason
    assert disk.leftovers() == []


def test_an_npy_memory_map_is_allocated_before_it_is_written(disk):
    """Writing a memory map onto a full disk kills the process with SIGBUS (exit -7, before):
    the file is allocated whole first, so a full disk is an OSError from the allocation."""
    disk.fill(leave=200_000)
    code = ("import sys, numpy as np\n"
            "from napari_seg3d.engine.io._npy import open_allocated\n"
            "try:\n"
            "    m = open_allocated(__import__('pathlib').Path(sys.argv[1]), np.uint8, (1000, 1000))\n"
            "    m[:] = 1\n"
            "except OSError as e:\n"
            "    print('OSError', e.errno)\n")
    result = subprocess.run([sys.executable, "-c", code, str(disk.root / "a.npy")],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0 and result.stdout.strip() == "OSError 28", result


def test_hdf5_on_a_full_disk_never_crashes_the_process(disk):
    """The engine call that crashed (h5py on a full disk): an OutputError, no temporary. The
    free space (800 kB) passes the check (600 kB: half the raw 1 MB, and the margin) but cannot
    hold the compressed noise (about 970 kB)."""
    disk.fill(leave=800_000)
    code = ("import sys, numpy as np\n"
            "from napari_seg3d.engine.io import write_volume\n"
            "from napari_seg3d.engine.errors import OutputError\n"
            "data = np.random.default_rng(0).random((64, 64, 64), dtype=np.float32)\n"
            "try:\n"
            "    write_volume(sys.argv[1] + ':/raw', data, compression=True)\n"
            "except OutputError as e:\n"
            "    print(e)\n")
    target = disk.root / "v.h5"
    result = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result
    assert result.stdout.strip() == (f"Cannot write the volume {target}: the disk is full. Free "
                                     "some space or choose another folder; nothing was written.")
    assert disk.leftovers() == []


# --- model files and the report ---------------------------------------------------------------

def test_train_into_a_full_disk_is_refused_before_training(files, disk, capsys):
    folder, model_file, image = files
    labels = np.zeros(SHAPE, np.uint8)
    labels[4, 5:20, 5:20], labels[20, 30:50, 30:50] = 1, 2
    labels_file = write_volume(folder / "labels.tif", labels)
    args = ["train", "--image", str(image), "--labels", str(labels_file), "--out",
            str(disk.root / "m.pt"), "--iterations", "2", *TINY]
    assert main(args) == 0  # the earlier models, and the report
    before = {p.name: _digest(p) for p in disk.root.iterdir() if p != disk.filler}
    disk.fill(leave=100_000)
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"napari-seg3d train: error: Cannot save the models to {disk.root / 'm.pt'} and "
        f"{disk.root / 'm.last.pt'}: it needs about "), err
    assert {p.name: _digest(p) for p in disk.root.iterdir() if p != disk.filler} == before


def test_saving_the_models_on_a_full_disk_keeps_the_earlier_pair(disk):
    from napari_seg3d._report import save_report
    from napari_seg3d.engine.model_file import save_models

    model = _model()
    best, last = disk.root / "m.pt", disk.root / "m.last.pt"
    save_models([(model, best), (model, last)])
    before = {p: _digest(p) for p in (best, last)}
    model.iteration = 9
    disk.fill(leave=120_000)  # room for one file, not both
    with pytest.raises(OutputError) as error:
        save_models([(model, best), (model, last)])
    assert str(error.value).startswith(f"Cannot save the models to {best} and {last}: it needs")
    assert {p: _digest(p) for p in (best, last)} == before
    from matplotlib.figure import Figure

    figure = Figure(figsize=(20, 20))
    figure.add_subplot().imshow(np.random.default_rng(0).random((400, 400)))
    disk.fill(leave=0)
    with pytest.raises(OutputError, match="Cannot write the training report .*: it needs about"):
        save_report(figure, disk.root / "m.report.png")
    assert sorted(p.name for p in disk.root.iterdir() if p != disk.filler) == ["m.last.pt", "m.pt"]


def _train_process(files, out: Path, tensorboard: Path, iterations: int):
    folder, _, image = files
    labels = np.zeros(SHAPE, np.uint8)
    labels[4, 5:20, 5:20], labels[20, 30:50, 30:50] = 1, 2
    labels_file = write_volume(folder / "labels2.tif", labels)
    args = ["train", "--image", image, "--labels", labels_file, "--out", out, "--iterations",
            str(iterations), "--no-report", "--tensorboard", tensorboard, *TINY]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", _PREDICT, *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _paused_when_logging(proc, log_dir: Path, timeout: float = 120.0) -> None:
    """Wait until the run has written its first TensorBoard events (it trains), then SIGSTOP
    it: whatever the machine's speed, the disk is filled while the run is in training."""
    deadline = time.monotonic() + timeout
    while not any(p.stat().st_size > 200 for p in log_dir.glob("events.out.tfevents.*")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGSTOP)


def test_a_disk_that_fills_while_training_ends_in_cannot_save_the_models(files, disk, tmp_path):
    proc = _train_process(files, disk.root / "m.pt", tmp_path / "tb", iterations=300)
    try:
        _paused_when_logging(proc, tmp_path / "tb")
        disk.fill(leave=0)
    finally:
        proc.send_signal(signal.SIGCONT)
    out, err = proc.communicate(timeout=600)
    lines = err.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, (proc.returncode, err)
    assert lines[0].startswith(f"napari-seg3d train: error: Cannot save the models to "
                               f"{disk.root / 'm.pt'} and {disk.root / 'm.last.pt'}: it needs")
    assert disk.leftovers() == []


def test_a_tensorboard_log_on_a_full_disk_stops_logging_and_training_goes_on(files, disk,
                                                                              tmp_path):
    """Before: TensorBoard's writer thread printed a traceback, then a two-line warning."""
    proc = _train_process(files, tmp_path / "m.pt", disk.root / "tb", iterations=300)
    try:
        _paused_when_logging(proc, disk.root / "tb")
        disk.fill(leave=0)
    finally:
        proc.send_signal(signal.SIGCONT)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("napari-seg3d train: warning: TensorBoardLogger stopped logging: "
                               f"Cannot write the TensorBoard log {disk.root / 'tb'}: "), err
    assert lines[0].endswith("the log up to here is kept, and the training goes on.")
    assert (tmp_path / "m.pt").exists() and (tmp_path / "m.last.pt").exists()


# --- what each failure means (a full tmpfs gives ENOSPC only) ---------------------------------

@pytest.mark.parametrize("name, meaning", [
    ("ENOSPC", "the disk is full"),
    ("EDQUOT", "your disk quota is exceeded"),
    ("EIO", "the disk reported an input/output error (it may be failing or disconnected)"),
    ("EFBIG", "the file is larger than this file system allows"),
])
def test_each_write_failure_is_one_sentence(name, meaning):
    import errno

    from napari_seg3d.engine.io._space import write_error

    code = getattr(errno, name)
    as_raised = OSError(code, os.strerror(code))
    as_h5py = OSError(f"Unable to synchronously create file (file write failed: errno = {code}, "
                      f"error message = '{os.strerror(code)}')")  # no errno attribute
    for exc in (as_raised, as_h5py):
        assert str(write_error(exc, "Cannot write the labels x.h5")) == (
            f"Cannot write the labels x.h5: {meaning}. Free some space or choose another "
            "folder; nothing was written.")
