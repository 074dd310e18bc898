"""The Train widget's live and instant previews, and strokes painted while it trains."""

import numpy as np

from _train_widget import (  # noqa: F401 (shown and viewer are fixtures)
    WAIT_MS, annotated, annotated_voxels, first_progress, make_widget, shown, train, viewer)


def test_strokes_painted_while_training_reach_the_trainer(qtbot, viewer, blobs, shown):
    widget = make_widget(viewer, iterations=100_000)
    layer = annotated(widget, blobs[2])
    assert widget.start_training()
    first_progress(qtbot, widget)
    sent = []
    send = widget.worker.send
    widget.worker.send = lambda value: (sent.append(value), send(value))
    before = annotated_voxels(widget.trainer)
    assert before == np.count_nonzero(blobs[2])
    free = np.argwhere(layer.data[8] == 0)[0]
    layer.paint((8, *free), 2)  # one stroke: emits layer.events.paint
    painted = np.count_nonzero(layer.data)
    qtbot.waitUntil(lambda: annotated_voxels(widget.trainer) == painted, timeout=WAIT_MS)
    assert sent and sent[-1].labels is not None and np.count_nonzero(sent[-1].labels) == painted
    layer.paint((12, 20, 20), 3)  # a value the model has no class for: ignored, with a warning
    qtbot.waitUntil(lambda: bool(shown["warning"]), timeout=WAIT_MS)
    assert "Label 3" in shown["warning"][0]
    widget.stop_training()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    assert not shown["error"], shown["error"]
    assert (layer.data == 3).any()  # the layer itself is never changed


def test_a_stroke_brings_a_live_preview_soon(qtbot, viewer, blobs, shown):
    widget = make_widget(viewer, iterations=100_000)
    layer = annotated(widget, blobs[2])
    widget.quick_check.setChecked(False)
    widget.preview_check.setChecked(True)
    widget.preview_interval_s = 3600  # no periodic preview: only the stroke asks for one
    assert widget.start_training()
    first_progress(qtbot, widget)
    previews = []
    show = widget._show_preview
    widget._show_preview = lambda p: (previews.append(p), show(p))
    free = np.argwhere(layer.data[8] == 0)[0]
    layer.paint((8, *free), 2)  # sent at once, or after SEND_INTERVAL_S; a preview follows
    qtbot.waitUntil(lambda: bool(previews), timeout=WAIT_MS)
    widget.stop_training()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    assert not shown["error"], shown["error"]
    assert viewer.layers["blobs preview"].data.any()


def test_live_preview_writes_the_preview_layer(qtbot, viewer, blobs, shown):
    widget = make_widget(viewer, iterations=100_000)
    annotated(widget, blobs[2])
    widget.quick_check.setChecked(False)
    widget.preview_check.setChecked(True)
    widget.preview_interval_s = 0.2
    viewer.dims.set_point(0, 2.0 * 9 + 4.0)  # z = 9 in data coordinates
    assert widget.start_training()
    qtbot.waitUntil(lambda: "blobs preview" in viewer.layers
                    and viewer.layers["blobs preview"].data.any(), timeout=WAIT_MS)
    widget.stop_training()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    preview = viewer.layers["blobs preview"]
    np.testing.assert_allclose(preview.scale, (2, 1, 1))
    np.testing.assert_allclose(preview.translate, (4, 0, 1))
    z = np.flatnonzero(preview.data.any(axis=(1, 2)))
    assert z.min() <= 9 <= z.max() and len(z) <= 8  # the patch around the displayed slice
    assert set(np.unique(preview.data)) <= {0, 1, 2}
    assert widget.annotation_combo.currentText() == "blobs annotations"
    assert viewer.layers.selection.active.name == "blobs annotations"


def test_instant_forest_preview_shows_the_displayed_slice_first(qtbot, viewer, blobs, shown):
    """Train: the random forest's first record is the slice on screen (over the view), shown
    before the network's first iteration; then the view region and the rest of the volume."""
    widget = make_widget(viewer, iterations=100_000)
    annotated(widget, blobs[2])
    assert widget.quick_check.isChecked()  # on by default
    viewer.dims.set_point(0, 2.0 * 9 + 4.0)  # z = 9 in data coordinates
    events = []
    show = widget._display.show_forest
    widget._display.show_forest = lambda image, records: (
        events.extend(("forest", r) for r in records), show(image, records))
    assert widget.start_training()
    widget.worker.yielded.connect(lambda p: events.append(("network", p)))
    job = widget._job
    qtbot.waitUntil(lambda: not job.forest.running, timeout=WAIT_MS)  # every pass done
    first_progress(qtbot, widget)
    widget.stop_training()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    assert not shown["error"], shown["error"]
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "forest" and "network" in kinds
    first = events[0][1]
    assert first.stage == "slice" and first.slices == (slice(9, 10), slice(0, 24), slice(0, 26))
    preview = viewer.layers["blobs preview"].data
    assert preview.shape == blobs[1].shape and preview.all()  # the whole (small) volume
    dice = [2 * np.sum((preview == v) & (blobs[1] == v)) / (np.sum(preview == v) + np.sum(blobs[1] == v))
            for v in (1, 2)]
    assert min(dice) > 0.8, dice


def test_a_failing_instant_preview_does_not_stop_training(qtbot, viewer, blobs, shown,
                                                         monkeypatch):
    from napari_seg3d._widgets import _forest_job

    def broken_preview(*args, **kwargs):
        raise RuntimeError("forest exploded")
        yield  # a generator, as the real one

    monkeypatch.setattr(_forest_job, "instant_preview", broken_preview)
    widget = make_widget(viewer, iterations=3)
    annotated(widget, blobs[2])
    train(qtbot, widget)
    assert not shown["error"], shown["error"]
    assert widget.model is not None and widget.model.iteration >= 1
