"""Batch predict's *Instances* option: ``<name>_instances.<format>`` beside each labels output
(real files, a tiny real model, a real viewer)."""

import numpy as np
import pytest
from conftest import run_to_end

from napari_seg3d._widgets import batch as batch_module
from napari_seg3d._widgets._session import Session
from napari_seg3d._widgets.batch import BatchPredictWidget
from napari_seg3d.engine import TrainConfig, Trainer, default_model_config, save_model
from napari_seg3d.engine.io import read_volume, write_volume
from napari_seg3d.engine.prediction.instances import instances

PATCH = (8, 16, 16)
VOXEL = (2.0, 1.0, 1.0)


@pytest.fixture
def model_file(blobs, tmp_path):
    image, _, scribbles = blobs
    trainer = Trainer(image, scribbles,
                      TrainConfig(patch_size=PATCH, batch_size=2, iterations=20, validate_every=10),
                      model_config=default_model_config(1, 2, PATCH, base_filters=4, levels=2))
    return save_model(run_to_end(trainer.run()).best, tmp_path / "model.pt")


@pytest.fixture
def errors(monkeypatch):
    shown: list[str] = []
    monkeypatch.setattr(batch_module, "show_error", shown.append)
    return shown


@pytest.fixture
def widget(make_napari_viewer, monkeypatch, blobs, model_file, tmp_path):
    monkeypatch.setattr(batch_module, "SESSION", Session())
    viewer = make_napari_viewer()
    widget = BatchPredictWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.set_inputs([write_volume(tmp_path / "in" / "a.tif", blobs[0], voxel_size=VOXEL)])
    widget.set_model_path(model_file)
    widget.set_output_dir(tmp_path / "out")
    return widget


def _run(widget, qtbot):
    widget.run()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=30_000)
    return [r.status for r in widget.results]


@pytest.mark.parametrize(("method", "keywords"), [
    ("watershed (auto)", {}), ("watershed (distance)", {"seeds": "distance"}),
    ("connected components", {"method": "components"})])
def test_instances_are_written_beside_the_labels(widget, qtbot, tmp_path, errors, method,
                                                 keywords):
    option = widget._instances
    option.check.setChecked(True)
    option.class_edit.setText("class 2")
    option.method_combo.setCurrentText(method)
    assert _run(widget, qtbot) == ["done"] and not errors
    out = tmp_path / "out"
    labels = np.asarray(read_volume(out / "a_labels.tif").data)
    written = read_volume(out / "a_instances.tif")
    np.testing.assert_array_equal(written.data,
                                  instances(labels, class_value=2, voxel_size=VOXEL, **keywords))
    np.testing.assert_allclose(written.voxel_size, VOXEL)


def test_no_instances_unless_asked_for(widget, qtbot, tmp_path):
    assert _run(widget, qtbot) == ["done"]
    assert not (tmp_path / "out" / "a_instances.tif").exists()


@pytest.mark.parametrize(("text", "words"), [
    ("", "name the class whose objects to separate"),
    ("nucleus", "The model has no class 'nucleus'"),
])
def test_a_wrong_class_is_refused_with_a_sentence(widget, qtbot, tmp_path, errors, text, words):
    widget._instances.check.setChecked(True)
    widget._instances.class_edit.setText(text)
    _run(widget, qtbot)
    assert len(errors) == 1 and words in errors[0]
    assert not widget.results and not (tmp_path / "out" / "a_labels.tif").exists()
