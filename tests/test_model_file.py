"""The model file: round trip, safe loading of hostile or damaged files, atomic writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from conftest import run_to_end

from napari_seg3d.engine import (
    ModelFileError,
    SegmentationModel,
    TrainConfig,
    Trainer,
    default_model_config,
    describe,
    load_model,
    save_model,
)
from napari_seg3d.engine.model_file import FORMAT, FORMAT_VERSION

PATCH = (8, 16, 16)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(11, 24, 26)).astype(np.float32)


@pytest.fixture(scope="module")
def trained(image) -> SegmentationModel:
    """A tiny model after two training iterations, with its optimizer state (do not modify)."""
    labels = np.zeros(image.shape, np.uint8)
    labels[1:5, 2:10, 2:10], labels[6:10, 12:20, 12:20] = 1, 2
    config = TrainConfig(patch_size=PATCH, batch_size=2, iterations=2, validate_every=1,
                         device="cpu")
    trainer = Trainer(image, labels, config, voxel_size=(2.0, 0.5, 0.5), class_names=["bg", "ball"],
                      model_config=default_model_config(1, 2, PATCH, base_filters=4, levels=2))
    gen = trainer.run()
    return run_to_end(gen).last


def test_save_load_round_trip_predicts_identically(trained, image, tmp_path):
    path = save_model(trained, tmp_path / "sub" / "model.pt")
    assert path == tmp_path / "sub" / "model.pt" and path.is_file()
    loaded = load_model(path)
    np.testing.assert_array_equal(loaded.predict(image, device="cpu"),
                                  trained.predict(image, device="cpu"))
    np.testing.assert_array_equal(loaded.predict(image, device="cpu", probabilities=True),
                                  trained.predict(image, device="cpu", probabilities=True))
    for name in ("model_config", "train_config", "class_values", "class_names", "normalization",
                 "in_channels", "voxel_size", "iteration", "history"):
        assert getattr(loaded, name) == getattr(trained, name), name
    assert loaded.class_names == ("bg", "ball") and loaded.voxel_size == (2.0, 0.5, 0.5)
    assert loaded.optimizer_state["state"].keys() == trained.optimizer_state["state"].keys()
    assert list(tmp_path.glob("sub/*.part")) == []


def test_save_without_optimizer_state(trained, tmp_path):
    loaded = load_model(save_model(trained, tmp_path / "m.pt", include_optimizer=False))
    assert loaded.optimizer_state is None
    with_optimizer = save_model(trained, tmp_path / "o.pt")
    assert os.path.getsize(tmp_path / "m.pt") < os.path.getsize(with_optimizer)


class _Payload:
    """Pickles to ``open(marker, "w")``: loading this with plain pickle creates the marker file."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_file_holding_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "format_version": 1, "payload": _Payload(marker)}, path)
    with pytest.raises(ModelFileError, match="holds code or objects that are not allowed"):
        load_model(path)
    assert not marker.exists()
    unsafe = torch.load(path, weights_only=False)  # the payload is live: plain pickle runs it
    unsafe["payload"].close()
    assert marker.exists()


def _write_truncated(trained, path):
    save_model(trained, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _write_random(trained, path):
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())


def _write_empty(trained, path):
    path.write_bytes(b"")


def _write_foreign_dict(trained, path):
    torch.save({"state_dict": {"w": torch.zeros(3)}, "epoch": 3}, path)


def _write_tensor(trained, path):
    torch.save(torch.zeros(3), path)


def _write_newer(trained, path):
    torch.save(dict(trained.to_dict(), format_version=FORMAT_VERSION + 1), path)


def _write_wrong_weights(trained, path):
    data = trained.to_dict()
    data["state_dict"] = {k: torch.zeros(1) for k in data["state_dict"]}
    torch.save(data, path)


def _write_missing_entry(trained, path):
    data = trained.to_dict()
    del data["class_values"]
    torch.save(data, path)


@pytest.mark.parametrize(("write", "message"), [
    (_write_truncated, "truncated, corrupt or not a model file"),
    (_write_random, "truncated, corrupt or not a model file"),
    (_write_empty, "truncated, corrupt or not a model file"),
    (_write_foreign_dict, "model.pt is not a napari-seg3d model file"),
    (_write_tensor, "model.pt is not a napari-seg3d model file"),
    (_write_newer, "saved by a newer napari-seg3d"),
    (_write_wrong_weights, "model.pt is damaged or incomplete"),
    (_write_missing_entry, "model.pt is damaged or incomplete"),
])
def test_damaged_or_foreign_files_raise_model_file_error(trained, tmp_path, write, message):
    path = tmp_path / "model.pt"
    write(trained, path)
    with pytest.raises(ModelFileError, match=message):
        load_model(path)


@pytest.mark.parametrize("name", ["missing.pt", "."])
def test_missing_file_is_a_model_file_error(tmp_path, name):
    with pytest.raises(ModelFileError, match="No model file at"):
        load_model(tmp_path / name)


def test_a_failed_save_keeps_the_previous_file_and_leaves_no_part(trained, tmp_path, monkeypatch):
    path = save_model(trained, tmp_path / "model.pt")
    before = path.read_bytes()

    def fail_midway(obj, f, *args, **kwargs):
        f.write(b"half a model")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        save_model(trained, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


_SAVER = textwrap.dedent("""
    import sys, torch
    from napari_seg3d.engine import SegmentationModel, TrainConfig, default_model_config, save_model
    from napari_seg3d.engine.models import build_model
    from napari_seg3d.engine.normalization import Normalization
    config = default_model_config(1, 2, (16, 32, 32), base_filters=32, levels=3)
    network = build_model(config.architecture, **config.kwargs)
    optimizer = torch.optim.AdamW(network.parameters())  # a real state: the file is checked
    network(torch.zeros(1, 1, 8, 8, 8)).sum().backward()
    optimizer.step()
    model = SegmentationModel(
        network=network, model_config=config,
        train_config=TrainConfig(patch_size=(16, 32, 32)), class_values=(1, 2),
        normalization=Normalization((0.0,), (1.0,)), optimizer_state=optimizer.state_dict())
    for i in range(1, 10_000):
        model.iteration = i
        save_model(model, sys.argv[1])
        print(i, flush=True)
""")


def _kill_while_saving(folder) -> bool:
    """Start the saver, SIGKILL it while it writes a later save; True if a ``.part`` was left."""
    path = folder / "model.pt"
    proc = subprocess.Popen([sys.executable, "-c", _SAVER, str(path)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "1"  # one complete file exists
        deadline = time.monotonic() + 30
        while not list(folder.glob(".model.pt.*.part")):
            assert time.monotonic() < deadline and proc.poll() is None
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    return bool(list(folder.glob(".model.pt.*.part")))


def test_killing_a_save_midway_leaves_the_previous_file_whole(tmp_path):
    """A process saving a ~25 MB model over and over is SIGKILLed in the middle of a save."""
    for attempt in range(3):  # the kill can land between two saves; then it proves nothing
        folder = tmp_path / str(attempt)
        folder.mkdir()
        if _kill_while_saving(folder):
            break
    else:
        pytest.fail("the saver was never killed in the middle of a save")
    loaded = load_model(folder / "model.pt")
    assert loaded.iteration >= 1 and loaded.class_values == (1, 2)
    first = next(loaded.network.parameters())
    assert loaded.optimizer_state["state"][0]["exp_avg"].shape == first.shape
    assert [p.name for p in folder.iterdir() if not p.name.endswith(".part")] == ["model.pt"]


def test_describe_reports_what_the_file_holds(trained, tmp_path):
    info = describe(load_model(save_model(trained, tmp_path / "m.pt")))
    assert info["architecture"] == "unet"
    assert info["parameters"] == sum(p.numel() for p in trained.network.parameters()) > 0
    assert info["classes"] == {1: "bg", 2: "ball"}
    assert info["in_channels"] == 1 and info["patch_size"] == list(PATCH)
    assert info["voxel_size"] == (2.0, 0.5, 0.5)
    assert info["iterations_trained"] == 2 and info["optimizer_state"] is True
    assert info["best_validation_dice"] is None or len(info["best_validation_dice"]) == 2
    assert info["training"]["iterations"] == 2 and info["network"]["base_filters"] == 4
    assert set(info["normalization"]) == {"low", "high"}
    json.dumps(info)  # plain values only


@pytest.mark.parametrize(("shape", "message"), [
    ((2, 4, 5, 6), "trained on 1-channel images; the image has 2 channel"),
    ((5, 6), r"Expected a 3D image \(Z, Y, X\) or \(C, Z, Y, X\), got 2 dimensions"),
    ((1, 1, 4, 5, 6), "got 5 dimensions"),
])
def test_prepare_rejects_images_of_the_wrong_shape(trained, shape, message):
    with pytest.raises(ValueError, match=message):
        trained.prepare(np.zeros(shape, np.float32))


def test_prepare_normalises_to_float32_channels_first(trained):
    image = np.arange(60, dtype=np.uint16).reshape(3, 4, 5)
    out = trained.prepare(image)
    assert out.shape == (1, 3, 4, 5) and out.dtype == np.float32
    np.testing.assert_allclose(out, trained.normalization.apply(image[None]))
