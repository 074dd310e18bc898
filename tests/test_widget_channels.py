"""Several Image layers as the channels of one input (issue 15.5): a tiny 2-channel volume
added with ``channel_axis=0`` (two layers) trains from the Train widget and predicts from the
Predict widget; the model records its channels; mismatches are refused in a sentence."""

import numpy as np
import pytest
from _train_widget import WAIT_MS, annotated, make_widget, train
from napari.utils._proxies import PublicOnlyProxy

from napari_seg3d._widgets import predict as predict_module
from napari_seg3d._widgets import train as train_module
from napari_seg3d._widgets._channels import image_input
from napari_seg3d._widgets.predict import PredictWidget
from napari_seg3d.engine import load_model, save_model

SCALE = (2.0, 1.0, 1.0)
NAMES = ["nuclei", "membrane"]


@pytest.fixture
def shown(monkeypatch):
    """Notifications of both widgets, by kind."""
    out = {"error": [], "warning": [], "info": []}
    for module in (train_module, predict_module):
        for kind in out:
            monkeypatch.setattr(module, f"show_{kind}", out[kind].append)
    return out


@pytest.fixture
def two_channels(blobs):
    """``(C=2, Z, Y, X)``: the blobs, and their inverse with other noise (both informative)."""
    image, truth, _ = blobs
    rng = np.random.default_rng(1)
    second = (1.0 - (truth == 2) + rng.normal(0, 0.2, image.shape)).astype(np.float32)
    return np.stack([image, second])


@pytest.fixture
def viewer(make_napari_viewer, two_channels):
    viewer = make_napari_viewer()
    viewer.add_image(two_channels, channel_axis=0, name=NAMES, scale=SCALE)
    return viewer


def predict_widget(viewer):
    widget = PredictWidget(PublicOnlyProxy(viewer))
    viewer.window.add_dock_widget(widget)
    widget.device_combo.setCurrentText("cpu")
    return widget


def predict(qtbot, widget):
    assert widget.start_prediction()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)


def trained_on_both(qtbot, viewer, blobs):
    widget = make_widget(viewer)  # with the instant random-forest preview (the default)
    assert widget.quick_check.isChecked()
    widget.image_combo.setCurrentText("nuclei")
    assert [widget.channel_picker.item(i).text() for i in range(widget.channel_picker.count())] \
        == ["membrane"]
    widget.channel_picker.set_ticked(["membrane"])
    annotated(widget, blobs[2])
    train(qtbot, widget)
    return widget


def test_two_channel_layers_train_and_predict(qtbot, viewer, blobs, two_channels, shown,
                                             tmp_path):
    train_widget = trained_on_both(qtbot, viewer, blobs)
    model = train_widget.model
    assert not shown["error"], shown
    assert model.in_channels == 2 and model.channel_names == tuple(NAMES)
    assert len(model.normalization.low) == 2
    assert viewer.layers["nuclei preview"].data.any()  # the instant preview read both too
    saved = load_model(save_model(model, tmp_path / "two.pt"))  # recorded in the file
    assert saved.in_channels == 2 and saved.channel_names == tuple(NAMES)

    widget = predict_widget(viewer)
    widget.image_combo.setCurrentText("membrane")  # a wrong choice: the model's names fix it
    widget.set_model(saved, "two.pt")
    assert widget.image_combo.currentText() == "nuclei"
    assert widget.channel_picker.ticked_names() == ["membrane"]
    predict(qtbot, widget)
    assert not shown["error"], shown
    labels = viewer.layers["nuclei prediction"].data
    assert labels.shape == blobs[0].shape
    np.testing.assert_allclose(viewer.layers["nuclei prediction"].scale, SCALE)
    # what the engine predicts on the two channels stacked (a wrong order would differ)
    np.testing.assert_array_equal(labels, saved.predict(two_channels, device="cpu"))
    assert not np.array_equal(labels, saved.predict(two_channels[::-1], device="cpu"))


def test_the_stack_is_lazy(viewer):
    source = image_input(viewer.layers["nuclei"], [viewer.layers["membrane"]])
    assert type(source.data).__module__.startswith("dask")
    assert source.data.shape == (2, *viewer.layers["nuclei"].data.shape)
    assert source.channels == 2 and source.channel_names == tuple(NAMES)
    np.testing.assert_array_equal(np.asarray(source.data[1, 3]), viewer.layers["membrane"].data[3])
    assert isinstance(source.probe, np.ndarray)  # in memory: predicted in memory


def test_a_channel_count_mismatch_is_one_sentence(qtbot, viewer, blobs, shown):
    model = trained_on_both(qtbot, viewer, blobs).model
    model.channel_names = ()  # e.g. a model trained by the command line: nothing to follow
    widget = predict_widget(viewer)
    widget.image_combo.setCurrentText("nuclei")
    widget.set_model(model, "two")
    widget.channel_picker.set_ticked([])
    assert not widget.start_prediction()
    assert shown["error"][-1] == (
        "The model was trained on 2-channel images but 'nuclei' has 1 channel(s); tick 1 more "
        "layer(s) under More channels, in the order trained, or choose another image or model.")
    assert widget.status.text() == shown["error"][-1]
    viewer.add_image(blobs[0], name="third", scale=SCALE)
    widget.channel_picker.set_ticked(["membrane", "third"])
    assert not widget.start_prediction()
    assert shown["error"][-1] == (
        "The model was trained on 2-channel images but 'nuclei' and the 2 layer(s) ticked under "
        "More channels give 3; untick layers under More channels, or choose another image or "
        "model.")


@pytest.mark.parametrize(("change", "sentence"), [
    ("shape", "The channel layer 'other' is (17, 24, 20) voxels but the image 'nuclei' is "
              "(17, 24, 26); channels must have the same size: untick it under More channels."),
    ("scale", "The channel layer 'other' has voxels of (1.0, 1.0, 1.0) but the image 'nuclei' "
              "has (2.0, 1.0, 1.0); channels must have the same voxel size (layer scale): "
              "untick it, or give both the same scale."),
])
def test_channels_of_another_grid_are_refused(qtbot, viewer, blobs, shown, change, sentence):
    data = blobs[0][..., :20] if change == "shape" else blobs[0]
    viewer.add_image(data, name="other", scale=SCALE if change == "shape" else (1, 1, 1))
    widget = make_widget(viewer)
    widget.image_combo.setCurrentText("nuclei")
    widget.channel_picker.set_ticked(["other"])
    annotated(widget, blobs[2])
    assert not widget.start_training()
    assert shown["error"] == [sentence]


def test_one_layer_of_channels_still_works(qtbot, make_napari_viewer, two_channels, blobs, shown):
    viewer = make_napari_viewer()
    viewer.add_image(two_channels, name="both", scale=SCALE)  # one (C, Z, Y, X) layer
    widget = make_widget(viewer)
    widget.quick_check.setChecked(False)
    assert widget.channel_picker.count() == 0 and not widget.channel_picker.isVisible()
    annotated(widget, blobs[2])
    train(qtbot, widget)
    assert not shown["error"], shown
    assert widget.model.in_channels == 2
    assert widget.model.channel_names == ("both [0]", "both [1]")
    predictor = predict_widget(viewer)
    predictor.set_model(widget.model, "both")
    predict(qtbot, predictor)
    assert not shown["error"], shown
    assert viewer.layers["both prediction"].data.shape == blobs[0].shape
