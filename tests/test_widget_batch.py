"""The Batch predict widget on real files with a tiny real model: a failing file never stops the
others, existing outputs are skipped unless overwriting, errors become notifications."""

import numpy as np
import pytest
from conftest import run_to_end

from napari_seg3d._widgets import batch as batch_module
from napari_seg3d._widgets._session import Session
from napari_seg3d._widgets.batch import BatchPredictWidget
from napari_seg3d.engine import TrainConfig, Trainer, default_model_config, save_model
from napari_seg3d.engine.io import read_volume, write_volume
from napari_seg3d.engine.prediction.output_names import MANIFEST

PATCH = (8, 16, 16)


def _train(image, scribbles):
    trainer = Trainer(image, scribbles,
                      TrainConfig(patch_size=PATCH, batch_size=2, iterations=3, validate_every=3),
                      model_config=default_model_config(1, 2, PATCH, base_filters=4, levels=2))
    run = trainer.run()
    return run_to_end(run).best


@pytest.fixture
def model(blobs):
    image, _, scribbles = blobs
    return _train(image, scribbles)


@pytest.fixture
def model_file(model, tmp_path):
    return save_model(model, tmp_path / "model.pt")


@pytest.fixture
def inputs(blobs, tmp_path):
    """Two readable volumes (one with a voxel size) and a corrupt ``.tif`` between them."""
    image = blobs[0]
    folder = tmp_path / "in"
    a = write_volume(folder / "a.tif", image, voxel_size=(2.0, 1.0, 1.0))
    bad = folder / "b_corrupt.tif"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    c = write_volume(folder / "c.tif", image[:, :19, :21])
    return [a, bad, c]


@pytest.fixture
def errors(monkeypatch):
    shown: list[str] = []
    monkeypatch.setattr(batch_module, "show_error", shown.append)
    return shown


@pytest.fixture
def widget(make_napari_viewer, monkeypatch):
    monkeypatch.setattr(batch_module, "SESSION", Session())
    viewer = make_napari_viewer()
    widget = BatchPredictWidget(viewer)
    viewer.window.add_dock_widget(widget)
    return widget


def _run(widget, qtbot, **options):
    widget.set_options(**options)
    widget.run()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=30_000)
    return [r.status for r in widget.results]


def _ready(widget) -> bool:
    return widget.worker is None and widget._run_button.isEnabled() and \
        not widget._cancel_button.isEnabled()


def test_batch_done_failed_skipped_overwritten(widget, qtbot, model_file, inputs, tmp_path,
                                               errors):
    out = tmp_path / "out"
    widget.set_inputs(inputs)
    widget.set_model_path(model_file)
    widget.set_output_dir(out)

    assert _run(widget, qtbot) == ["done", "failed", "done"]
    failed = widget.results[1]
    assert failed.output is None and "b_corrupt.tif" in failed.reason
    outputs = sorted(p for p in out.iterdir() if p.name != MANIFEST)
    assert [p.name for p in outputs] == ["a_labels.tif", "c_labels.tif"]
    first = read_volume(out / "a_labels.tif")
    assert first.data.shape == (17, 24, 26) and set(np.unique(first.data)) <= {1, 2}
    assert first.voxel_size == (2.0, 1.0, 1.0)
    assert read_volume(out / "c_labels.tif").data.shape == (17, 19, 21)
    assert widget._table.rowCount() == 3 and widget._table.item(1, 1).text() == "failed"
    assert errors == [] and _ready(widget)

    stamps = {p: p.stat().st_ino for p in outputs}
    assert _run(widget, qtbot) == ["skipped", "failed", "skipped"]
    assert {p: p.stat().st_ino for p in outputs} == stamps
    assert _run(widget, qtbot, overwrite=True) == ["done", "failed", "done"]
    assert all(p.stat().st_ino != stamps[p] for p in outputs)  # replaced atomically
    assert sorted(out.iterdir()) == [out / MANIFEST, *outputs]  # no temporary files left


def test_folder_input_with_pattern_and_h5_format(widget, qtbot, model_file, inputs, tmp_path):
    widget.set_inputs([inputs[0].parent])
    widget.set_options(pattern="[ac].tif", fmt="h5")
    widget.set_model_path(model_file)
    widget.set_output_dir(tmp_path / "out")
    assert _run(widget, qtbot) == ["done", "done"]
    assert read_volume(tmp_path / "out" / "a_labels.h5").voxel_size == (2.0, 1.0, 1.0)


def test_zarr_format_reads_an_hdf5_input_and_matches_the_model(widget, qtbot, model, model_file,
                                                              blobs, tmp_path):
    spec = f"{write_volume(tmp_path / 'in.h5:/raw', blobs[0], voxel_size=(2.0, 1.0, 1.0))}:/raw"
    widget.set_inputs([spec])
    widget.set_options(fmt="zarr")
    widget.set_model_path(model_file)
    widget.set_output_dir(tmp_path / "out")
    assert _run(widget, qtbot) == ["done"]
    out = read_volume(tmp_path / "out" / "in_raw_labels.zarr")
    assert out.voxel_size == (2.0, 1.0, 1.0)
    np.testing.assert_array_equal(out.data, model.predict(blobs[0]))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [MANIFEST,
                                                                    "in_raw_labels.zarr"]


def test_the_forest_box_picks_the_blend_or_the_network_alone(widget, qtbot, model, model_file,
                                                               blobs, tmp_path):
    assert model.forest is not None and widget._forest.isChecked()
    image = blobs[0]
    widget.set_inputs([write_volume(tmp_path / "in.tif", image)])
    widget.set_model_path(model_file)
    for forest in (True, False):
        widget.set_output_dir(tmp_path / str(forest))
        assert _run(widget, qtbot, forest=forest) == ["done"]
        np.testing.assert_array_equal(read_volume(tmp_path / str(forest) / "in_labels.tif").data,
                                      model.predict(image, device="cpu", forest=forest))
    assert not np.array_equal(model.predict(image, device="cpu", probabilities=True),
                              model.predict(image, device="cpu", probabilities=True,
                                            forest=False))


def test_session_model(widget, qtbot, model, inputs, tmp_path):
    batch_module.SESSION.put("blobs model", model)
    widget.set_session_model("blobs model")
    widget.set_inputs(inputs[:1])
    widget.set_output_dir(tmp_path / "out")
    assert _run(widget, qtbot) == ["done"]


def test_results_open_in_viewer(widget, qtbot, model_file, inputs, tmp_path):
    widget.set_inputs(inputs)
    widget.set_model_path(model_file)
    widget.set_output_dir(tmp_path / "out")
    _run(widget, qtbot)
    widget._table.selectRow(2)
    layers = widget.open_results()
    assert [layer.name for layer in layers] == ["c_labels"]
    widget._table.clearSelection()
    layers = widget.open_results()  # nothing selected: every result with a file
    assert [type(layer).__name__ for layer in layers] == ["Labels", "Labels"]
    assert tuple(widget.viewer.layers["a_labels"].scale) == (2.0, 1.0, 1.0)


def test_bad_model_file_is_reported(widget, qtbot, inputs, tmp_path, errors):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"definitely not a model")
    widget.set_inputs(inputs)
    widget.set_model_path(bad)
    widget.set_output_dir(tmp_path / "out")
    assert _run(widget, qtbot) == []
    assert len(errors) == 1 and errors[0].startswith("Cannot load bad.pt")
    assert _ready(widget)
    assert not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("problem", ["no model", "no inputs", "no output", "output is a file"])
def test_form_errors_are_reported(widget, model_file, inputs, tmp_path, errors, problem):
    widget.set_inputs([] if problem == "no inputs" else inputs)
    widget.set_model_path("" if problem == "no model" else model_file)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    output = {"no output": "", "output is a file": blocker / "out"}.get(problem, tmp_path / "out")
    widget.set_output_dir(output)
    widget.run()
    assert len(errors) == 1 and errors[0].endswith(".")
    assert _ready(widget)


def test_cancel_keeps_only_complete_outputs(widget, qtbot, model_file, blobs, tmp_path):
    paths = [write_volume(tmp_path / "in" / f"v{i}.tif", np.tile(blobs[0], (2, 2, 2)))
             for i in range(6)]
    widget.set_inputs(paths)
    widget.set_model_path(model_file)
    widget.set_output_dir(tmp_path / "out")
    widget.run()
    qtbot.waitUntil(lambda: len(widget.results) >= 1, timeout=30_000)
    widget.cancel()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=30_000)
    assert 1 <= len(widget.results) < 6 and _ready(widget)
    assert widget._status.text().startswith("Cancelled")
    written = sorted((tmp_path / "out").iterdir())  # complete files only, no temporary ones
    assert [p.name for p in written] == [MANIFEST] + [f"v{i}_labels.tif"
                                                      for i in range(len(widget.results))]
    for path in written[1:]:
        assert read_volume(path).data.shape == (34, 48, 52)


def test_an_output_that_would_replace_an_input_refuses_the_run(widget, qtbot, model_file, blobs,
                                                               tmp_path, errors):
    """``h/x.tif`` and the user's ``h/x_labels.tif`` into ``h``: refused before any file, with
    the sentence; a folder that is also the output folder is never fed its own outputs."""
    h = tmp_path / "h"
    image = write_volume(h / "x.tif", blobs[0])
    annotations = write_volume(h / "x_labels.tif", blobs[2])
    before = {p: p.read_bytes() for p in (image, annotations)}
    widget.set_inputs([image, annotations])
    widget.set_model_path(model_file)
    widget.set_output_dir(h)
    widget.set_options(overwrite=True)
    widget.run()
    assert widget.worker is None and widget.results == [] and _ready(widget)
    assert errors == [(f"The output x_labels.tif of {image} would be written over the input "
                       f"{annotations}: choose another output folder; nothing was written.")]
    assert {p: p.read_bytes() for p in before} == before and sorted(h.iterdir()) == sorted(before)

    annotations.unlink()
    widget.set_inputs([h])
    widget.set_options(overwrite=False, pattern="*.tif")
    assert _run(widget, qtbot) == ["done"]
    assert _run(widget, qtbot) == ["skipped"]  # x_labels.tif is an output, not an input
    assert len(errors) == 1
