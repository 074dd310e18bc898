"""CPU threads: the setting, the cores this process may use, the measurement of other jobs, and
the training and prediction loops following it (real busy-loop processes on pinned cores)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from napari_seg3d.cli import main
from napari_seg3d.engine import TrainConfig, Trainer, default_model_config, predict_volume
from napari_seg3d.engine import threads as T


@pytest.mark.parametrize(("value", "expected"), [
    (None, None), ("auto", None), (" AUTO ", None), ("", None), (0, None), ("0", None),
    (1, 1), ("3", 3), (" 2 ", 2),
])
def test_parse_threads(value, expected):
    assert T.parse_threads(value) == expected


@pytest.mark.parametrize("value", ["two", "-1", "1.5", "2x"])
def test_parse_threads_refuses_with_a_sentence(value):
    with pytest.raises(ValueError, match="CPU threads must be 'auto' or a positive whole number"):
        T.parse_threads(value)


def test_a_setting_wins_over_the_process_default_which_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv("NAPARI_SEG3D_THREADS", "3")
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    monkeypatch.setattr(T, "_default", None)
    assert T.fixed_threads() == 3
    monkeypatch.delenv("NAPARI_SEG3D_THREADS")
    assert T.fixed_threads() == 5
    monkeypatch.setenv("OMP_NUM_THREADS", "lots")  # ignored with a log line
    assert T.fixed_threads() is None
    T.set_default_threads("2")
    assert T.fixed_threads() == 2 and T.fixed_threads(4) == 4
    T.set_default_threads("auto")
    assert T.fixed_threads() is None


@pytest.mark.parametrize(("cpus", "others", "threads"), [
    (2, None, 2), (2, 0.0, 2), (2, 0.3, 2), (2, 0.5, 1), (2, 0.67, 1), (2, 1.0, 1), (2, 2.5, 1),
    (16, 0.94, 15), (16, 0.2, 16), (16, 7.6, 8), (1, 0.0, 1),
])
def test_free_cores(cpus, others, threads):
    assert T.free_cores(cpus, others) == threads


def test_usable_cpus_follow_affinity_and_a_cgroup_quota(tmp_path, monkeypatch):
    affinity = len(os.sched_getaffinity(0))
    (tmp_path / "cpu.stat").write_text("usage_usec 1\n")
    monkeypatch.setattr(T, "_cgroup_dir", lambda: tmp_path)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert T.usable_cpus() == affinity
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # docker --cpus=1.5
    assert T.usable_cpus() == min(affinity, 2)
    (tmp_path / "cpu.max").write_text("50000 100000\n")
    assert T.usable_cpus() == 1


@pytest.fixture
def two_cores():
    """This process pinned to (at most) two cores, and a way to start busy-loop jobs on them."""
    before = os.sched_getaffinity(0)
    cores = set(sorted(before)[:2])
    os.sched_setaffinity(0, cores)
    jobs: list[subprocess.Popen] = []

    def busy(n: int) -> None:
        for _ in range(n):
            job = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            os.sched_setaffinity(job.pid, cores)
            jobs.append(job)
        time.sleep(0.3)  # running before we measure

    yield len(cores), busy
    for job in jobs:
        job.kill()
        job.wait()
    os.sched_setaffinity(0, before)


def test_the_meter_sees_other_jobs_and_not_this_process(two_cores):
    cpus, busy = two_cores
    busy(cpus)
    meter = T.CpuMeter()
    time.sleep(1.0)
    loaded = meter.others()
    assert loaded is not None and loaded >= cpus - 0.5
    t0 = time.monotonic()  # now this process spins on one of the cores too: still not "others"
    while time.monotonic() - t0 < 1.0:
        pass
    others = meter.others()
    # the cores cannot be busier than all of them: our share is not counted twice
    assert meter.own > 0.01 and others + meter.own <= cpus + 0.15, (others, meter.own)


def test_training_drops_to_one_thread_beside_jobs_that_hold_the_cores(two_cores, blobs,
                                                                       monkeypatch):
    """With its cores taken by other jobs, a training (in a worker thread, as in napari) runs on
    one thread: torch's default, all cores, would wait on itself at every layer."""
    cpus, busy = two_cores
    monkeypatch.delenv("NAPARI_SEG3D_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(T, "_default", None)
    monkeypatch.setattr(T, "INTERVAL_S", 0.3)
    image, _, labels = blobs
    cfg = TrainConfig(patch_size=(8, 16, 16), iterations=400, validate_every=1000, device="cpu",
                      self_training=0)
    trainer = Trainer(image, labels, cfg, model_config=default_model_config(
        1, 2, cfg.patch_size, base_filters=4, levels=2))
    busy(cpus)
    seen, torch_seen = [], []

    def train():
        t0 = time.monotonic()
        for p in trainer.run():
            seen.append(p.threads)
            torch_seen.append(torch.get_num_threads())
            if time.monotonic() - t0 > 1.5:
                trainer.request_stop()

    worker = threading.Thread(target=train)
    worker.start()
    worker.join()
    assert seen and seen[-1] == 1 and torch_seen[-1] == 1


def test_a_fixed_count_is_kept_however_busy_the_machine(two_cores, blobs, monkeypatch):
    cpus, busy = two_cores
    monkeypatch.setattr(T, "INTERVAL_S", 0.1)
    monkeypatch.setenv("NAPARI_SEG3D_THREADS", str(cpus))
    busy(cpus)
    image = blobs[0]
    net = default_model_config(1, 2, (8, 16, 16), base_filters=4, levels=2)
    from napari_seg3d.engine import build_model

    network = build_model(net.architecture, **net.kwargs)
    seen = []

    def predict():
        predict_volume(network, image, patch_size=(8, 16, 16), batch_size=2, device="cpu")
        seen.append(torch.get_num_threads())

    worker = threading.Thread(target=predict)
    worker.start()
    worker.join()
    assert seen == [cpus]


def test_the_command_line_option_sets_the_count(blobs, tmp_path, monkeypatch):
    from napari_seg3d.engine.io import write_volume

    monkeypatch.setattr(T, "_default", None)
    image, _, labels = blobs
    write_volume(tmp_path / "image.tif", image)
    write_volume(tmp_path / "labels.tif", labels)
    code = main(["train", "--image", str(tmp_path / "image.tif"), "--labels",
                 str(tmp_path / "labels.tif"), "--out", str(tmp_path / "m.pt"), "--iterations",
                 "2", "--patch-size", "8", "16", "16", "--base-filters", "4", "--levels", "2",
                 "--no-report", "--quiet", "--threads", "1"])
    assert code == 0 and T.fixed_threads() == 1
    T.set_default_threads(None)
    assert main(["train", "--image", "x.tif", "--labels", "y.tif", "--out",
                 str(tmp_path / "n.pt"), "--threads", "many"]) == 2


def test_compute_threads_nests_in_one_thread(monkeypatch):
    monkeypatch.setenv("NAPARI_SEG3D_THREADS", "1")
    with T.compute_threads() as outer:
        with T.compute_threads() as inner:
            assert inner is outer
    with T.compute_threads() as again:
        assert again is not outer
    assert np.isfinite(again.threads)
