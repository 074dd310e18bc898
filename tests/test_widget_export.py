"""The Export... buttons (issue 15) in a real napari viewer: the Train widget's writes a package
that passes bioimageio.core's test; the Predict widget loads packages, predicts with them, and
refuses to export another tool's model with a sentence; Batch predict runs a package on files."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import yaml
from _zoo_packages import build_package, train_on_sample
from napari.utils._proxies import PublicOnlyProxy

from napari_seg3d._sample_data import load_nuclei
from napari_seg3d._widgets import _export
from napari_seg3d._widgets.predict import PredictWidget
from napari_seg3d._widgets.train import TrainWidget
from napari_seg3d.engine import load_model

pytestmark = pytest.mark.filterwarnings(
    r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning")
WAIT_MS = 120_000


@pytest.fixture(autouse=True)
def _collect_open_files():
    from napari_seg3d.engine.zoo import collecting_open_files

    with collecting_open_files():
        yield


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return train_on_sample(tmp_path_factory.mktemp("export-widget"))


@pytest.fixture
def viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(load_nuclei()[0], name="nuclei")
    return viewer


@pytest.fixture
def errors(monkeypatch):
    shown: list[str] = []
    monkeypatch.setattr(_export, "show_error", shown.append)
    return shown


def test_the_train_widgets_export_button_writes_a_package_that_passes(qtbot, viewer, model_file,
                                                                      tmp_path, errors):
    from bioimageio.core import test_model

    widget = TrainWidget(PublicOnlyProxy(viewer))
    viewer.window.add_dock_widget(widget)
    assert not widget.export_button.isEnabled()  # no model yet, like Save model...
    widget.load_model_from(model_file)
    assert widget.export_button.isEnabled() and widget.save_button.isEnabled()
    widget.export_button.click()
    dialog = widget.export_dialog
    labels = [label.text() for label in dialog.findChildren(_export.QLabel)]
    assert dialog.isVisible() and "Test input: a crop of 'nuclei'." in labels
    dialog.path_edit.setText(str(tmp_path / "nuclei.zip"))
    dialog.authors_edit.setText("A. Tester, B. Tester")
    assert dialog.export()
    qtbot.waitUntil(lambda: dialog.written is not None or bool(errors), timeout=WAIT_MS)
    assert not errors and (tmp_path / "nuclei.zip").is_file() and not dialog.isVisible()
    with zipfile.ZipFile(tmp_path / "nuclei.zip") as z:
        rdf = yaml.safe_load(z.read("rdf.yaml"))
        assert "LICENSE-stardist.txt" in z.namelist()  # the test input is a crop of the sample
    assert [a["name"] for a in rdf["authors"]] == ["A. Tester", "B. Tester"]
    summary = test_model(str(tmp_path / "nuclei.zip"))
    assert summary.status == "passed", [d.name for d in summary.details if d.status != "passed"]


def test_the_predict_widget_predicts_with_packages_and_exports_only_ours(qtbot, viewer, model_file,
                                                                        tmp_path, errors):
    widget = PredictWidget(PublicOnlyProxy(viewer))
    viewer.window.add_dock_widget(widget)
    widget.device_combo.setCurrentText("cpu")
    ours = tmp_path / "ours.zip"
    from napari_seg3d.engine.zoo.export import export_package

    export_package(load_model(model_file), ours)
    foreign = build_package(tmp_path / "foreign")
    image = load_nuclei()[0]
    for package, labels in ((ours, {1, 2}), (foreign, {1, 2, 3})):
        model = widget.load_model_from(package)
        assert widget.current_model() is model
        assert widget.start_prediction()
        qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
        predicted = np.asarray(viewer.layers["nuclei prediction"].data)
        np.testing.assert_array_equal(predicted, model.predict(image, device="cpu"))
        assert set(np.unique(predicted)) <= labels
    assert widget.export_button.isEnabled()
    widget.export_button.click()  # the foreign model is selected
    assert errors and "share that package itself" in errors[-1]


def test_batch_predict_runs_a_package_on_files(qtbot, make_napari_viewer, tmp_path, monkeypatch):
    from napari_seg3d._widgets import batch as batch_module
    from napari_seg3d._widgets._session import Session
    from napari_seg3d._widgets.batch import BatchPredictWidget
    from napari_seg3d.engine.io import read_volume, write_volume

    monkeypatch.setattr(batch_module, "SESSION", Session())
    viewer = make_napari_viewer()
    widget = BatchPredictWidget(viewer)
    viewer.window.add_dock_widget(widget)
    package = build_package(tmp_path / "foreign")
    image = load_nuclei()[0]
    volumes = [write_volume(tmp_path / "in" / name, data) for name, data in
               (("a.tif", image), ("b.tif", image[:20, :40, :30]))]
    widget.set_inputs(volumes)
    widget.set_model_path(package)
    widget.set_output_dir(tmp_path / "out")
    widget.run()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    assert [r.status for r in widget.results] == ["done", "done"]
    model = load_model(package)
    for volume in volumes:
        labels = np.asarray(read_volume(tmp_path / "out" / f"{volume.stem}_labels.tif").data)
        np.testing.assert_array_equal(labels, model.predict(read_volume(volume).data,
                                                            device="cpu"))
