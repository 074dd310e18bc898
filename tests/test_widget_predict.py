"""The Predict widget with a real viewer and a tiny model trained on the CPU."""

import copy
import threading

import numpy as np
import pytest
from conftest import catch_notifications, run_to_end
from napari.utils._proxies import PublicOnlyProxy

from napari_seg3d._widgets import predict as predict_module
from napari_seg3d._widgets._session import SESSION
from napari_seg3d._widgets.predict import FROM_FILE, PredictWidget
from napari_seg3d.engine import (
    TrainConfig,
    Trainer,
    default_model_config,
    save_model,
    uncertainty_map,
)

WAIT_MS = 30_000
SCALE = (2.0, 1.0, 1.0)
_CACHE = {}


@pytest.fixture
def model(blobs):
    """A tiny two-class model trained on the blobs scribbles (once per test session)."""
    if "model" not in _CACHE:
        image, _, scribbles = blobs
        cfg = TrainConfig(patch_size=(8, 16, 16), batch_size=2, iterations=40, device="cpu",
                          validate_every=10)
        mc = default_model_config(1, 2, cfg.patch_size, SCALE, base_filters=4, levels=2)
        gen = Trainer(image, scribbles, cfg, model_config=mc, voxel_size=SCALE).run()
        _CACHE["model"] = run_to_end(gen).best
    return _CACHE["model"]


@pytest.fixture
def shown(monkeypatch):
    return catch_notifications(monkeypatch, predict_module)


@pytest.fixture
def viewer(make_napari_viewer, blobs):
    viewer = make_napari_viewer()
    viewer.add_image(blobs[0], name="blobs", scale=SCALE, translate=(4.0, 0.0, 1.0))
    return viewer


def make_widget(viewer, model=None):
    widget = PredictWidget(PublicOnlyProxy(viewer))  # what napari hands a plugin widget
    viewer.window.add_dock_widget(widget)
    widget.device_combo.setCurrentText("cpu")
    if model is not None:
        widget.set_model(model)
    return widget


def predict(qtbot, widget):
    assert widget.start_prediction()
    assert not widget.predict_button.isEnabled() and widget.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)


@pytest.mark.parametrize(("ndisplay", "tta", "forest"), [(2, False, True), (3, True, False)])
def test_prediction_fills_the_layer(qtbot, viewer, blobs, model, shown, ndisplay, tta, forest):
    viewer.dims.ndisplay = ndisplay
    widget = make_widget(viewer, model)
    assert model.forest is not None and widget.forest_check.isChecked()
    widget.tta_check.setChecked(tta)
    widget.forest_check.setChecked(forest)
    predict(qtbot, widget)
    assert not shown["error"] and not shown["warning"], shown
    layer = viewer.layers["blobs prediction"]
    assert widget.layer is layer and layer.data.dtype == np.uint8
    np.testing.assert_allclose(layer.scale, SCALE)
    np.testing.assert_allclose(layer.translate, (4, 0, 1))
    expected = model.predict(blobs[0], tta=tta, device="cpu", forest=forest)
    np.testing.assert_array_equal(layer.data, expected)
    assert set(np.unique(layer.data)) == {1, 2}  # the painted classes
    assert not layer.metadata["partial"] and "Done" in widget.status.text()
    # what is on screen is what is in the layer (the partial refreshes added up)
    on_screen = layer._slice.image.view
    np.testing.assert_array_equal(on_screen,
                                  layer.colormap._data_to_texture(layer._slice.image.raw))
    assert viewer.layers.selection.active.name == "blobs"  # the selection stays where it was
    assert widget.predict_button.isEnabled() and not widget.cancel_button.isEnabled()


def test_prediction_reuses_its_layer_and_writes_probabilities(qtbot, viewer, blobs, model, shown):
    widget = make_widget(viewer, model)
    predict(qtbot, widget)
    layer = widget.layer
    layer.data[:] = 0
    widget.probabilities_check.setChecked(True)
    predict(qtbot, widget)
    assert widget.layer is layer and layer.data.any()
    assert [lay.name for lay in viewer.layers].count("blobs prediction") == 1
    probs = viewer.layers["blobs probabilities"]
    assert probs.data.shape == (2, 17, 24, 26) and probs.data.dtype == np.float32
    np.testing.assert_allclose(probs.scale, (1,) + SCALE)
    np.testing.assert_allclose(probs.data.sum(axis=0), 1.0, atol=1e-4)
    lut = np.array(model.class_values)
    np.testing.assert_array_equal(lut[probs.data.argmax(axis=0)], layer.data)


def test_uncertainty_layer_shows_where_the_model_is_unsure(qtbot, viewer, blobs, model, shown):
    widget = make_widget(viewer, model)
    assert "least sure" in widget.uncertainty_check.toolTip()
    widget.uncertainty_check.setChecked(True)
    predict(qtbot, widget)
    assert not shown["error"] and not shown["warning"], shown
    assert "blobs probabilities" not in viewer.layers  # not asked for
    layer = viewer.layers["blobs uncertainty"]
    assert widget.uncertainty_layer is layer and not layer.metadata["partial"]
    assert layer.data.shape == (17, 24, 26) and layer.data.dtype == np.float32
    np.testing.assert_allclose(layer.scale, SCALE)
    np.testing.assert_allclose(layer.translate, (4, 0, 1))
    assert layer.colormap.name == "magma" and tuple(layer.contrast_limits) == (0, 1)
    assert 0 <= layer.data.min() and layer.data.max() <= 1
    probs = model.predict(blobs[0], device="cpu", probabilities=True)
    np.testing.assert_allclose(layer.data, uncertainty_map(probs), atol=1e-5)
    gap = np.abs(probs[1] - probs[0])  # the two class probabilities close: the model hesitates
    close, clear = gap < 0.3, gap > 0.8
    assert close.any() and clear.any()
    assert layer.data[close].min() > 0.9 and layer.data[clear].max() < 0.5
    assert viewer.layers.selection.active.name == "blobs"


def test_cancel_keeps_a_partial_layer(qtbot, viewer, model, shown):
    slow = copy.deepcopy(model)
    gate, calls = threading.Event(), []
    forward = slow.network.forward

    def gated_forward(x):
        calls.append(1)
        if len(calls) > 2:  # the slice on screen (z 0) comes first, within two batches
            gate.wait(WAIT_MS / 1000)
        return forward(x)

    slow.network.forward = gated_forward
    widget = make_widget(viewer, slow)
    widget.uncertainty_check.setChecked(True)
    viewer.dims.set_current_step(0, 0)  # the slice on screen, predicted first: z 0
    try:
        assert widget.start_prediction()
        qtbot.waitUntil(lambda: widget.layer.data[0].all(), timeout=WAIT_MS)
        widget.cancel()
    finally:
        gate.set()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    layer = widget.layer
    assert layer.name == "blobs prediction (partial)" and layer.metadata["partial"]
    assert layer.data[0].all() and not layer.data[9:].any()
    assert shown["info"] and "partial" in shown["info"][0]
    assert widget.predict_button.isEnabled()
    uncertainty = widget.uncertainty_layer  # the uncertainty layer is cut short alike
    assert uncertainty.name == "blobs uncertainty (partial)" and uncertainty.metadata["partial"]
    assert uncertainty.data[0].all() and not uncertainty.data[9:].any()
    slow.network.forward = forward
    widget.set_model(slow)
    predict(qtbot, widget)  # a new prediction takes the partial layer back
    assert widget.layer is layer and layer.name == "blobs prediction" and layer.data[9:].all()
    names = [lay.name for lay in viewer.layers]
    assert "blobs uncertainty" in names and not any("uncertainty (partial)" in n for n in names)
    assert not widget.uncertainty_layer.metadata["partial"]


def test_models_from_the_session_and_from_files(viewer, model, shown, tmp_path):
    widget = make_widget(viewer)
    SESSION.put("blobs model", model)
    assert widget.model_combo.currentText() == "blobs model"
    assert widget.current_model() is model
    assert widget.model_combo.itemText(widget.model_combo.count() - 1) == FROM_FILE
    path = save_model(model, tmp_path / "saved.pt")
    loaded = widget.load_model_from(path)
    assert widget.model_combo.currentText() == "saved.pt" and widget.current_model() is loaded
    (tmp_path / "bad.pt").write_bytes(b"\x00" * 10)
    assert widget.load_model_from(tmp_path / "bad.pt") is None
    assert len(shown["error"]) == 1 and "bad.pt" in shown["error"][0]
    assert widget.current_model() is loaded


def test_user_errors_are_notified(viewer, blobs, model, shown):
    widget = make_widget(viewer)
    widget.model_combo.setCurrentText(FROM_FILE)
    assert widget.current_model() is None
    assert not widget.start_prediction()
    assert "no model" in shown["error"][-1]
    widget.set_model(model)
    viewer.layers.remove("blobs")
    assert not widget.start_prediction()
    assert "no 3D image layer" in shown["error"][-1]
    viewer.add_image(np.stack([blobs[0]] * 2), name="two channels")
    assert not widget.start_prediction()
    assert "1-channel images" in shown["error"][-1] and "2 channel(s)" in shown["error"][-1]
    assert len(shown["error"]) == 3 and widget.worker is None and widget.predict_button.isEnabled()
    assert "two channels prediction" not in viewer.layers


def test_error_in_the_worker_is_notified(qtbot, viewer, model, shown):
    broken = copy.deepcopy(model)

    def fail(x):
        raise RuntimeError("CUDA error, say")

    broken.network.forward = fail
    widget = make_widget(viewer, broken)
    predict(qtbot, widget)
    assert len(shown["error"]) == 1 and "CUDA error, say" in shown["error"][0]
    assert widget.layer.metadata["partial"] and widget.layer.name.endswith("(partial)")
    assert widget.predict_button.isEnabled()


def test_the_displayed_slice_is_filled_first(qtbot, viewer, blobs, model, shown):
    """Predict on slice z = 11 of 17: the first region written is the whole slice (a slab of
    its own, predicted first); the layer ends equal to a prediction in plain order."""
    viewer.dims.set_point(0, SCALE[0] * 11 + 4.0)  # z = 11 in data coordinates
    widget = make_widget(viewer, model)
    regions = []
    on_region = widget._on_region
    widget._on_region = lambda r: (regions.append(r.slices), on_region(r))
    predict(qtbot, widget)
    assert not shown["error"], shown["error"]
    assert regions[0] == (slice(11, 12), slice(0, 24), slice(0, 26))
    assert all(not r[0].start <= 11 < r[0].stop for r in regions[1:])
    np.testing.assert_array_equal(viewer.layers["blobs prediction"].data,
                                  model.predict(blobs[0], device="cpu"))


def test_the_background_class_is_transparent_and_the_others_keep_their_colours(qtbot, viewer,
                                                                                model, shown):
    """A class named "background" lets the image show through; the other classes have the
    colours the annotation layer gives their values, in the viewer and in the report."""
    from napari.layers import Labels

    from napari_seg3d._report import class_colors

    named = copy.deepcopy(model)
    named.class_names = ("background", "blob")
    widget = make_widget(viewer, named)
    predict(qtbot, widget)
    layer = viewer.layers["blobs prediction"]
    bg, blob = named.class_values
    def alpha(value):  # napari gives None for its own background value
        color = layer.get_color(value)
        return 0.0 if color is None else float(color[3])

    assert alpha(bg) == 0 and alpha(0) == 0
    annotations = Labels(np.zeros((2, 2, 2), np.uint8))  # a new layer's default colours
    np.testing.assert_allclose(layer.get_color(blob), annotations.get_color(blob), atol=1e-6)
    np.testing.assert_allclose(class_colors([blob])[0], annotations.get_color(blob), atol=1e-6)
    widget.set_model(model)  # default names: every class drawn
    predict(qtbot, widget)
    assert alpha(bg) == 1 and alpha(blob) == 1
