"""The Train widget's errors: user mistakes and worker failures are notified, nothing is lost."""

import numpy as np
import pytest

from napari_seg3d._widgets import train as train_module
from napari_seg3d.engine import default_model_config
from _train_widget import annotated, make_widget, shown, train, viewer  # noqa: F401 (fixtures)


def test_the_model_is_never_saved_over_a_file_open_in_the_viewer(viewer, blobs, shown, tmp_path):
    """Save model onto the file the image and annotations were read from: refused, file kept."""
    from napari_seg3d.engine import SegmentationModel, TrainConfig, build_model, save_model
    from napari_seg3d.engine.io import write_volume
    from napari_seg3d.engine.normalization import Normalization

    config = default_model_config(1, 2, (8, 16, 16), base_filters=4, levels=2)
    model = SegmentationModel(network=build_model(config.architecture, **config.kwargs),
                              model_config=config, train_config=TrainConfig(patch_size=(8, 16, 16)),
                              class_values=(1, 2), normalization=Normalization((0.0,), (1.0,)))
    write_volume(f"{tmp_path / 'vol.h5'}:/raw", blobs[0])
    write_volume(f"{tmp_path / 'vol.h5'}:/annotations", blobs[2])
    viewer.open(tmp_path / "vol.h5", plugin="napari-seg3d")
    (tmp_path / "link.pt").symlink_to(tmp_path / "vol.h5")
    before = (tmp_path / "vol.h5").read_bytes()
    widget = make_widget(viewer)
    assert widget.load_model_from(save_model(model, tmp_path / "m.pt")) is not None
    for target in ("vol.h5", "link.pt"):
        assert widget.save_model_to(tmp_path / target) is None
        assert shown["error"][-1].startswith(f"Not saved: the model ({tmp_path / target}) would "
                                             "be written over the file of the layer ")
        assert shown["error"][-1].endswith("which would be lost. Choose another file name.")
    assert (tmp_path / "vol.h5").read_bytes() == before and (tmp_path / "link.pt").is_symlink()
    assert widget.save_model_to(tmp_path / "other.pt") == tmp_path / "other.pt"


def _no_image(viewer, widget, scribbles):
    viewer.layers.remove("blobs")


def _other_shape(viewer, widget, scribbles):
    viewer.add_labels(np.ones((5, 6, 7), np.uint8), name="other")
    widget.annotation_combo.setCurrentText("other")


def _empty(viewer, widget, scribbles):
    widget.new_annotation_layer()


def _one_class(viewer, widget, scribbles):
    widget.new_annotation_layer().data = (scribbles > 0).astype(np.uint8)


@pytest.mark.parametrize(("setup", "message"), [
    (_no_image, "no 3D image layer"),
    (_other_shape, "has shape (5, 6, 7)"),
    (_empty, "no annotations"),
    (_one_class, "Only one class"),
])
def test_user_errors_are_notified(viewer, blobs, shown, setup, message):
    widget = make_widget(viewer)
    setup(viewer, widget, blobs[2])
    layer = widget.annotation_layer()
    before = None if layer is None else layer.data.copy()
    assert not widget.start_training()
    assert len(shown["error"]) == 1 and message in shown["error"][0], shown["error"]
    assert widget.worker is None and widget.train_button.isEnabled()
    if layer is not None:
        np.testing.assert_array_equal(layer.data, before)


def test_error_in_the_worker_is_notified(qtbot, viewer, blobs, shown, monkeypatch):
    def broken_run(self):
        yield from ()
        raise RuntimeError("out of memory, say")

    monkeypatch.setattr(train_module.Trainer, "run", broken_run)
    widget = make_widget(viewer)
    widget.quick_check.setChecked(False)  # the error of the run itself, nothing before it
    layer = annotated(widget, blobs[2])
    train(qtbot, widget)
    assert len(shown["error"]) == 1 and "out of memory, say" in shown["error"][0]
    assert widget.train_button.isEnabled() and widget.model is None
    np.testing.assert_array_equal(layer.data, blobs[2])


def test_large_volumes_build_the_trainer_in_the_worker(qtbot, viewer, blobs, shown, monkeypatch):
    monkeypatch.setattr(train_module, "GUI_INIT_VOXELS", 0)
    widget = make_widget(viewer)
    layer = widget.new_annotation_layer()
    layer.data = (blobs[2] > 0).astype(np.uint8)
    assert not widget.start_training()  # the strokes are checked at once, whatever the size
    assert len(shown["error"]) == 1 and "Only one class" in shown["error"][0]
    assert widget.train_button.isEnabled() and widget.model is None
    layer.data = blobs[2].copy()
    train(qtbot, widget)
    assert len(shown["error"]) == 1 and widget.last_model.iteration == 6
