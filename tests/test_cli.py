"""The ``napari-seg3d`` command: train, resume, predict and info."""

from __future__ import annotations


import numpy as np
import pytest

from napari_seg3d.cli import main
from napari_seg3d.engine import load_model, uncertainty_map
from napari_seg3d.engine.io import read_volume, write_volume
from napari_seg3d.engine.prediction.output_names import MANIFEST
from _cli_workspace import make_workspace, model_info


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("cli"))


def test_train_writes_the_best_and_the_last_model_and_reports_dice(workspace, capsys):
    printed = (workspace / "train.out").read_text()
    assert f"Saved the best model to {workspace / 'model.pt'}" in printed
    assert "Dice against the ground truth: class 3 " in printed and "; mean " in printed
    last = model_info(capsys, workspace / "model.last.pt")
    assert last["iterations_trained"] == 4 and last["optimizer_state"] is True
    assert last["classes"] == {"3": "class 3", "7": "class 7"}
    assert last["network"]["base_filters"] == 4 and last["patch_size"] == [8, 16, 16]
    best = model_info(capsys, workspace / "model.pt")
    assert 1 <= best["iterations_trained"] <= 4
    report = workspace / "model.report.png"
    assert f"Training report: {report}" in printed
    assert report.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and report.stat().st_size > 10_000
    assert not list(workspace.glob("*.part"))


@pytest.mark.parametrize(("option", "more", "total"), [("--resume", 2, 6), ("--fine-tune", 3, 3)])
def test_resume_continues_and_fine_tune_restarts_the_count(workspace, tmp_path, capsys, option,
                                                           more, total):
    code = main(["train", "--image", str(workspace / "image.tif"), "--labels",
                 str(workspace / "labels.tif"), "--out", str(tmp_path / "more.pt"),
                 option, str(workspace / "model.last.pt"), "--iterations", str(more), "--quiet",
                 "--device", "cpu"])
    assert code == 0
    info = model_info(capsys, tmp_path / "more.last.pt")
    assert info["iterations_trained"] == total and info["patch_size"] == [8, 16, 16]
    history = load_model(tmp_path / "more.last.pt").history["loss"]
    assert len(history) == total
    first = load_model(workspace / "model.last.pt").history["loss"]
    assert (history[:4] == first) == (option == "--resume")


def _predict(workspace, out, *extra) -> int:
    return main(["predict", str(workspace / "image.tif"), "--model", str(workspace / "model.pt"),
                 "--out", str(out), "--quiet", "--device", "cpu", *extra])


def test_predict_writes_painted_labels_then_skips_unless_overwrite(workspace, tmp_path, capsys):
    expected = load_model(workspace / "model.pt").predict(read_volume(workspace / "image.tif").data,
                                                          device="cpu")
    assert set(np.unique(expected)) <= {3, 7}
    out = tmp_path / "out"
    assert _predict(workspace, out) == 0
    assert capsys.readouterr().out.startswith("done")
    written = out / "image_labels.tif"
    np.testing.assert_array_equal(read_volume(written).data, expected)
    write_volume(written, np.zeros_like(expected))  # so that a rewrite shows

    assert _predict(workspace, out) == 0
    assert capsys.readouterr().out.startswith("skipped")
    assert not read_volume(written).data.any()

    assert _predict(workspace, out, "--overwrite") == 0
    assert capsys.readouterr().out.startswith("done")
    np.testing.assert_array_equal(read_volume(written).data, expected)
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "image_labels.tif"]


def test_predict_h5_format_and_probabilities(workspace, tmp_path):
    out = tmp_path / "out"
    assert _predict(workspace, out, "--format", "h5", "--probabilities") == 0
    labels = read_volume(out / "image_labels.h5").data
    probs = read_volume(out / "image_probabilities.h5").data
    assert labels.shape == (13, 24, 26) and set(np.unique(labels)) <= {3, 7}
    assert probs.shape == (2, 13, 24, 26) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(0), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(labels, np.array([3, 7])[probs.argmax(0)])


@pytest.mark.parametrize("fmt", ["h5", "zarr"])
def test_predict_block_by_block_from_hdf5_and_zarr_inputs(workspace, tmp_path, fmt):
    """Small blocks (many halos) from a chunked on-disk input give the whole-volume result."""
    model = load_model(workspace / "model.pt")
    image = read_volume(workspace / "image.tif").data
    expected = model.predict(image, device="cpu", probabilities=True)
    source = write_volume(tmp_path / f"in.{fmt}", image)
    out = tmp_path / "out"
    assert main(["predict", str(source), "--model", str(workspace / "model.pt"), "--out", str(out),
                 "--quiet", "--device", "cpu", "--format", fmt, "--probabilities",
                 "--block-size", "5", "9", "11"]) == 0
    np.testing.assert_array_equal(read_volume(out / f"in_labels.{fmt}").data,
                                  np.array([3, 7])[expected.argmax(0)])
    np.testing.assert_allclose(read_volume(out / f"in_probabilities.{fmt}").data, expected,
                               rtol=1e-5, atol=1e-6)
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, f"in_labels.{fmt}",
                                                     f"in_probabilities.{fmt}"]


@pytest.mark.parametrize("fmt", ["tif", "h5"])
def test_predict_uncertainty_is_written_beside_the_labels(workspace, tmp_path, fmt):
    out = tmp_path / "out"
    assert _predict(workspace, out, "--format", fmt, "--uncertainty") == 0
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, f"image_labels.{fmt}",
                                                     f"image_uncertainty.{fmt}"]
    written = read_volume(out / f"image_uncertainty.{fmt}")
    assert written.key == ("/uncertainty" if fmt == "h5" else None)
    unc = written.data
    assert unc.shape == (13, 24, 26) and unc.dtype == np.float32
    assert 0 <= unc.min() and unc.max() <= 1 and unc.max() > unc.min()
    probs = load_model(workspace / "model.pt").predict(
        read_volume(workspace / "image.tif").data, device="cpu", probabilities=True)
    np.testing.assert_allclose(unc, uncertainty_map(probs), atol=1e-5)


def test_predict_reports_failed_files_with_exit_code_3(workspace, tmp_path, capsys):
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"not a tiff at all")
    code = main(["predict", str(workspace / "image.tif"), str(bad), "--model",
                 str(workspace / "model.pt"), "--out", str(tmp_path / "out"), "--quiet",
                 "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 3
    assert [line.split()[0] for line in captured.out.splitlines()] == ["done", "failed"]
    assert captured.err.strip() == "1 of 2 file(s) failed."
