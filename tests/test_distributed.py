"""Prediction on a Dask distributed cluster: many files, or the blocks of one large volume, on
worker processes give exactly the single-machine outputs."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import drain

from napari_seg3d.cli import main
from napari_seg3d.engine import (
    PredictConfig,
    SegmentationModel,
    TrainConfig,
    default_model_config,
    save_model,
)
from napari_seg3d.engine.errors import Seg3DError
from napari_seg3d.engine.io import read_volume, write_volume
from napari_seg3d.engine.models import build_model
from napari_seg3d.engine.normalization import Normalization
from napari_seg3d.engine.prediction import distributed as dist
from napari_seg3d.engine.prediction.batch import FileProgress, FileResult, predict_files
from napari_seg3d.engine.prediction.output_names import MANIFEST

distributed = pytest.importorskip("distributed")

PATCH = (8, 16, 16)
BIG, BLOCK = (24, 96, 96), (24, 32, 32)  # 9 blocks
OPTS = {"batch_size": 2, "device": "cpu"}


@pytest.fixture(scope="module")
def cluster():
    """Two worker processes of one thread each, shared by the tests of this file."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster, set_as_default=False) as client:
        client.run(torch.set_num_threads, 1)
        yield cluster, client


pytestmark = pytest.mark.usefixtures("one_thread")  # the workers' thread count too


@pytest.fixture
def model_file(tmp_path) -> tuple[SegmentationModel, Path]:
    config = default_model_config(1, 2, PATCH, base_filters=4, levels=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        network = build_model(config.architecture, **config.kwargs)
    model = SegmentationModel(network=network, model_config=config,
                              train_config=TrainConfig(patch_size=PATCH, device="cpu"),
                              class_values=(3, 7), normalization=Normalization((0.0,), (1.0,)))
    return model, save_model(model, tmp_path / "model.pt")


def _image(seed: int, shape=(9, 20, 22)) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _run(model_path, specs, out, address, **kwargs):
    return drain(dist.iter_predict_files_distributed(model_path, specs, out, address, **OPTS,
                                                     **kwargs))


def _files(folder: Path) -> dict[str, Path]:
    """The outputs in ``folder``, beside the record of them, which must be there."""
    assert (folder / MANIFEST).is_file()
    return {p.name: p for p in folder.iterdir() if p.name != MANIFEST}


def _assert_same_outputs(local: Path, remote: Path) -> None:
    assert sorted(_files(local)) == sorted(_files(remote))
    for name, path in _files(local).items():
        a, b = read_volume(path), read_volume(remote / name)
        assert a.data.dtype == b.data.dtype and a.voxel_size == b.voxel_size
        np.testing.assert_array_equal(a.data, b.data)


def _many_inputs(folder: Path) -> list[str]:
    """A TIFF, an HDF5 dataset, a .npy, a TIFF with the same stem in another folder, and a
    corrupt TIFF."""
    write_volume(folder / "a.tif", _image(0), voxel_size=(2.0, 0.5, 0.5))
    write_volume(f"{folder / 'vol.h5'}:/raw/data", _image(1))
    np.save(folder / "c.npy", _image(2))
    write_volume(folder / "other" / "a.tif", _image(3))
    (folder / "broken.tif").write_bytes(b"II*\x00" + bytes(range(256)) * 4)
    return [str(folder / "a.tif"), f"{folder / 'vol.h5'}:/raw/data", str(folder / "c.npy"),
            str(folder / "other" / "a.tif"), str(folder / "broken.tif")]


def test_many_files_give_the_local_outputs(cluster, model_file, tmp_path):
    model, path = model_file
    specs = _many_inputs(tmp_path / "in")
    kwargs = {"fmt": "h5", "probabilities": True, "uncertainty": True, "block_shape": BLOCK}
    local = predict_files(model, specs, tmp_path / "local", **OPTS, **kwargs)
    items, results = _run(path, specs, tmp_path / "remote", cluster[0].scheduler_address,
                          **kwargs)
    assert all(isinstance(i, FileResult) for i in items)
    assert sorted(items, key=lambda r: r.index) == results
    assert [r.status for r in results] == ["done"] * 4 + ["failed"]
    assert [(r.index, r.total, r.input) for r in results] == [(i, 5, s) for i, s in
                                                              enumerate(specs)]
    assert [r.output for r in results] == [
        r.output if r.output is None else tmp_path / "remote" / r.output.name for r in local]
    assert results[-1].reason == local[-1].reason and "broken.tif" in results[-1].reason
    assert results[3].output.name == "a_labels_other.h5"  # the same-name rule of the local run
    _assert_same_outputs(tmp_path / "local", tmp_path / "remote")

    again, _ = _run(path, specs, tmp_path / "remote", cluster[0].scheduler_address, **kwargs)
    assert [r.status for r in sorted(again, key=lambda r: r.index)] == ["skipped"] * 4 + [
        "failed"]


@pytest.mark.parametrize("source, fmt", [("big.h5:/raw", "h5"), ("big.zarr", "zarr")])
def test_blocks_of_one_volume_give_the_local_and_the_whole_volume_result(
        cluster, model_file, tmp_path, source, fmt):
    model, path = model_file
    image = _image(5, BIG)
    spec = str(tmp_path / source)
    write_volume(spec, image, voxel_size=(1.0, 0.25, 0.25))
    kwargs = {"fmt": fmt, "probabilities": True, "block_shape": BLOCK}
    local = predict_files(model, [spec], tmp_path / "local", **OPTS, **kwargs)
    items, results = _run(path, [spec], tmp_path / "remote", cluster[0].scheduler_address,
                          **kwargs)
    assert local[0].status == results[0].status == "done"
    assert results[0].output == tmp_path / "remote" / local[0].output.name
    progress = [i for i in items if isinstance(i, FileProgress)]
    assert [p.windows_done for p in progress] == list(range(1, 10))
    assert all(p.windows_total == 9 for p in progress) and items[-1] == results[0]
    _assert_same_outputs(tmp_path / "local", tmp_path / "remote")

    whole = model.predict(image, probabilities=True, **OPTS)  # in one piece, without blocks
    labels = read_volume(results[0].output).data
    np.testing.assert_array_equal(labels, np.array([3, 7], np.uint8)[whole.argmax(0)])
    probs = read_volume(str(results[0].output).replace("_labels", "_probabilities")).data
    np.testing.assert_allclose(probs, whole, rtol=1e-5, atol=1e-6)
    loads = [n.get(str(path), 0) for n in cluster[1].run(dist._loads).values()]
    assert max(loads) == 1 and sum(loads) >= 1  # each worker loads the model file once


def test_a_block_that_fails_fails_the_file_and_writes_nothing(cluster, model_file, tmp_path):
    _, path = model_file
    spec = f"{tmp_path / 'big.h5'}:/raw"
    write_volume(spec, _image(5, BIG))
    raw = bytearray((tmp_path / "big.h5").read_bytes())  # damage the compressed chunks
    raw[len(raw) // 3:] = bytes(len(raw) - len(raw) // 3)
    (tmp_path / "big.h5").write_bytes(bytes(raw))
    _, results = _run(path, [spec], tmp_path / "out", cluster[0].scheduler_address,
                      fmt="h5", block_shape=BLOCK)
    assert results[0].status == "failed" and results[0].output is None
    assert results[0].reason and "\n" not in results[0].reason
    assert list((tmp_path / "out").iterdir()) == []


def test_the_command_line_runs_on_the_cluster(cluster, model_file, tmp_path, capsys):
    model, path = model_file
    specs = _many_inputs(tmp_path / "in")
    args = ["predict", *specs[:3], "--model", str(path), "--out", str(tmp_path / "out"),
            "--scheduler", cluster[0].scheduler_address, "--format", "h5", "--quiet",
            "--batch-size", "2", "--device", "cpu"]
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sorted(line.split()[0] for line in lines) == ["done"] * 3
    np.testing.assert_array_equal(read_volume(tmp_path / "out" / "a_labels.h5").data,
                                  model.predict(_image(0), **OPTS))

    assert main(args[:1] + specs + args[4:] + ["--overwrite"]) == 3
    captured = capsys.readouterr()
    assert sum(line.startswith("failed") for line in captured.out.splitlines()) == 1
    assert "1 of 5 file(s) failed." in captured.err


def test_an_unreachable_scheduler_is_one_line_and_exit_2(model_file, tmp_path, capsys,
                                                         monkeypatch):
    _, path = model_file
    write_volume(tmp_path / "a.tif", _image(0))
    monkeypatch.setattr(dist, "CONNECT_TIMEOUT_S", 1.0)
    code = main(["predict", str(tmp_path / "a.tif"), "--model", str(path), "--out",
                 str(tmp_path / "out"), "--scheduler", "tcp://127.0.0.1:9", "--quiet"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Cannot reach the Dask scheduler at 'tcp://127.0.0.1:9'" in err[0]


def test_without_distributed_the_message_says_what_to_install(model_file, tmp_path,
                                                              monkeypatch):
    _, path = model_file
    monkeypatch.setitem(sys.modules, "distributed", None)  # import fails
    with pytest.raises(Seg3DError, match=r"napari-seg3d\[cluster\]"):
        dist.predict_files_distributed(path, [str(tmp_path / "a.tif")], tmp_path / "out",
                                       "tcp://127.0.0.1:9")


def test_a_worker_without_the_shared_files_says_so(model_file, tmp_path):
    """What a task reports on a worker that does not see the model file or the output folder."""
    _, path = model_file
    spec = str(write_volume(tmp_path / "a.tif", _image(0)))
    with pytest.raises(Seg3DError, match="cannot find the model file"):
        dist._predict_file_task(str(tmp_path / "elsewhere.pt"), spec,
                                str(tmp_path / "a_labels.tif"), 0, 1, False, PredictConfig())
    with pytest.raises(Seg3DError, match="cannot find the output folder"):
        dist._predict_file_task(str(path), spec, str(tmp_path / "nowhere" / "a_labels.tif"), 0, 1,
                                False, PredictConfig())
    result = dist._predict_file_task(str(path), spec, str(tmp_path / "a_labels.tif"), 0, 1, False,
                                     PredictConfig(**OPTS))
    assert result.status == "done" and dist._loads()[str(path)] == 1
    dist._predict_file_task(str(path), spec, str(tmp_path / "a_labels.tif"), 0, 1, True,
                            PredictConfig(**OPTS))
    assert dist._loads()[str(path)] == 1  # cached


def test_lost_work_is_reported_in_words():
    from concurrent.futures import CancelledError

    lost = dist._failed(2, 3, "a.tif", CancelledError(
        "napari-seg3d-file-2-0f0f cancelled for reason: scheduler-connection-lost."))
    assert (lost.index, lost.status, lost.output) == (2, "failed", None)
    assert lost.reason == ("the Dask scheduler dropped the work (scheduler-connection-lost); is "
                           "the scheduler still running?")
    killed = type("KilledWorker", (Exception,), {})("task failed on workers a, b")
    assert "died (out of memory?)" in dist._failed(0, 1, "a.tif", killed).reason
