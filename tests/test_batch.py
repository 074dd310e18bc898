"""Prediction of many files: failures stay isolated, outputs in their folder, inputs untouched."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_seg3d.engine import SegmentationModel, TrainConfig, default_model_config
from napari_seg3d.engine.io import read_volume, write_volume
from napari_seg3d.engine.models import build_model
from napari_seg3d.engine.normalization import Normalization
from napari_seg3d.engine.prediction.batch import (
    FileProgress,
    FileResult,
    expand_inputs,
    iter_predict_files,
    predict_files,
)
from napari_seg3d.engine.prediction.output_names import MANIFEST

PATCH = (8, 16, 16)
SHAPE = (9, 20, 22)


@pytest.fixture
def model() -> SegmentationModel:
    """An untrained tiny model whose classes are painted as 3 and 7."""
    config = default_model_config(1, 2, PATCH, base_filters=4, levels=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        network = build_model(config.architecture, **config.kwargs)
    return SegmentationModel(network=network, model_config=config,
                             train_config=TrainConfig(patch_size=PATCH, device="cpu"),
                             class_values=(3, 7), normalization=Normalization((0.0,), (1.0,)))


def _image(seed: int, shape=SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def inputs(tmp_path):
    """A TIFF, an HDF5 dataset named by key (beside another one), a corrupt TIFF, and a volume
    with two channels that the one-channel model cannot take."""
    folder = tmp_path / "in"
    write_volume(folder / "a.tif", _image(0))
    write_volume(f"{folder / 'vol.h5'}:/raw/data", _image(1))
    write_volume(f"{folder / 'vol.h5'}:/other", _image(2))
    (folder / "broken.tif").write_bytes(b"II*\x00" + bytes(range(256)) * 4)
    np.save(folder / "two.npy", _image(3, (2,) + SHAPE))
    specs = [str(folder / "a.tif"), f"{folder / 'vol.h5'}:/raw/data", str(folder / "broken.tif"),
             str(folder / "two.npy")]
    images = [_image(0), _image(1), None, None]
    return specs, images


def _run(model, specs, out, **kwargs) -> tuple[list[FileProgress], list[FileResult], list]:
    gen = iter_predict_files(model, specs, out, device="cpu", **kwargs)
    progress, results = [], []
    while True:
        try:
            item = next(gen)
        except StopIteration as done:
            return progress, results, done.value
        (results if isinstance(item, FileResult) else progress).append(item)


@pytest.mark.parametrize("fmt", ["tif", "h5", "npy"])
def test_each_file_is_done_or_failed_on_its_own(model, inputs, tmp_path, fmt):
    specs, images = inputs
    before = _digests(tmp_path / "in")
    progress, results, returned = _run(model, specs, tmp_path / "out", fmt=fmt)
    assert returned == results
    assert [r.status for r in results] == ["done", "done", "failed", "failed"]
    assert [r.index for r in results] == [0, 1, 2, 3] and all(r.total == 4 for r in results)
    names = [r.output.name for r in results[:2]]
    assert names == [f"a_labels.{fmt}", f"vol_data_labels.{fmt}"]
    for result, image in zip(results[:2], images):
        labels = read_volume(result.output).data
        np.testing.assert_array_equal(labels, model.predict(image, device="cpu"))
        assert set(np.unique(labels)) <= {3, 7}
        assert result.seconds > 0 and result.reason == ""
    broken, two = results[2:]
    assert broken.output is None and "broken.tif" in broken.reason
    assert "1-channel" in two.reason
    assert all("\n" not in r.reason for r in results)
    assert {p.index for p in progress} == {0, 1}
    assert all(0 < p.windows_done <= p.windows_total for p in progress)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([*names, MANIFEST])
    assert _digests(tmp_path / "in") == before


def test_second_run_skips_and_overwrite_rewrites(model, inputs, tmp_path):
    specs, images = inputs
    out = tmp_path / "out"
    _run(model, specs, out)
    first = out / "a_labels.tif"
    write_volume(first, np.zeros(SHAPE, np.uint8))  # so a rewrite shows
    stamp = first.stat().st_mtime_ns

    _, again, _ = _run(model, specs, out)
    assert [r.status for r in again] == ["skipped", "skipped", "failed", "failed"]
    assert again[0].reason == "output exists" and again[0].output == first
    assert first.stat().st_mtime_ns == stamp and not read_volume(first).data.any()

    _, rewritten, _ = _run(model, specs, out, overwrite=True)
    assert [r.status for r in rewritten] == ["done", "done", "failed", "failed"]
    np.testing.assert_array_equal(read_volume(first).data, model.predict(images[0], device="cpu"))


@pytest.mark.parametrize(("name", "expected"), [
    ("..evil.tif", "evil_labels.tif"),
    ("..tif", "volume_labels.tif"),
    (".hidden.tif", "hidden_labels.tif"),
    ("a b;c.tif", "a_b_c_labels.tif"),
    ("...x...tif", "x_labels.tif"),
])
def test_output_names_never_escape_the_output_folder(model, tmp_path, name, expected):
    source = tmp_path / "deep" / "sub" / name
    write_volume(source, _image(0))
    out = tmp_path / "deep" / "sub" / "out"
    _, results, _ = _run(model, [str(source)], out)
    assert results[0].status == "done"
    assert results[0].output.resolve().parent == out.resolve()
    assert results[0].output.name == expected
    written = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert written == {f"deep/sub/{name}", f"deep/sub/out/{expected}", f"deep/sub/out/{MANIFEST}"}


def test_inputs_with_the_same_stem_keep_both_outputs(model, tmp_path):
    specs = []
    for i, folder in enumerate(("x", "y")):
        specs.append(str(write_volume(tmp_path / folder / "a.tif", _image(i))))
    results = predict_files(model, specs, tmp_path / "out", device="cpu")
    assert [r.output.name for r in results] == ["a_labels_x.tif", "a_labels_y.tif"]
    for result, seed in zip(results, (0, 1)):
        np.testing.assert_array_equal(read_volume(result.output).data,
                                      model.predict(_image(seed), device="cpu"))


def test_probabilities_are_written_beside_the_labels(model, tmp_path):
    source = write_volume(tmp_path / "a.npy", _image(0))
    results = predict_files(model, [str(source)], tmp_path / "out", fmt="npy", probabilities=True,
                            device="cpu")
    assert results[0].status == "done"
    probs = np.load(tmp_path / "out" / "a_probabilities.npy")
    assert probs.shape == (2,) + SHAPE and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(0), 1.0, rtol=1e-5)
    labels = np.load(tmp_path / "out" / "a_labels.npy")
    np.testing.assert_array_equal(labels, np.array([3, 7])[probs.argmax(0)])


def test_expand_inputs_lists_readable_files_of_folders(tmp_path):
    folder = tmp_path / "data"
    for name in ("b.h5", "a.tif", "c.npy", "D.TIF", "notes.txt", "sub/e.tif"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"")
    single = tmp_path / "single.tif"
    found = expand_inputs([folder, str(single), f"{tmp_path / 'x.h5'}:/raw"])
    assert found == [str(folder / n) for n in ("D.TIF", "a.tif", "b.h5", "c.npy")] + [
        str(single), f"{tmp_path / 'x.h5'}:/raw"]
    assert expand_inputs([folder], "*.tif") == [str(folder / "a.tif")]
    assert expand_inputs([folder], "*.txt") == []
