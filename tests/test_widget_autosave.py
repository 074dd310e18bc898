"""The Train widget's autosave with a real viewer: napari crashing in another process (after real
tiny training) leaves a session that the next Train widget offers, restores (strokes, class
names, model) or discards; a normal end leaves nothing; damaged sessions are told of."""

import os

import numpy as np
import pytest

from napari_seg3d._widgets import _autosave, _autosave_offer
from napari_seg3d._widgets._session import SESSION
from napari_seg3d.engine import load_model
from napari_seg3d.engine.autosave import find_sessions, restore
from _autosave_crash import crash, napari_session
from _train_widget import WAIT_MS, annotated, make_widget, train  # noqa: F401


@pytest.fixture
def root(tmp_path, monkeypatch):
    folder = tmp_path / "sessions"
    monkeypatch.setenv("NAPARI_SEG3D_AUTOSAVE_DIR", str(folder))
    return folder


@pytest.fixture
def told(monkeypatch):
    """What the offer and the restore tell the user, by kind."""
    out = {"warning": [], "info": []}
    for kind in out:
        monkeypatch.setattr(_autosave_offer, f"show_{kind}", out[kind].append)
    return out


@pytest.fixture
def viewer_of(make_napari_viewer):
    def make(image=None):
        viewer = make_napari_viewer()
        if image is not None:
            viewer.add_image(image, name="blobs", scale=(2.0, 1.0, 1.0),
                             translate=(4.0, 0.0, 1.0))
        return viewer
    return make


def test_a_crash_of_napari_is_offered_and_restored(root, tmp_path, blobs, viewer_of, told, qtbot):
    image, _, strokes = blobs
    assert napari_session(tmp_path, image, strokes, "crash").split() == ["1"]
    (crashed,), problems = find_sessions()
    assert problems == [] and (crashed.folder / "model.pt").is_file()
    viewer = viewer_of(image)
    widget = make_widget(viewer)
    offer = widget.session_offer
    assert not offer.isHidden() and offer.found == [crashed]
    assert "Autosaved session of 'blobs' [17, 24, 26]" in offer.label.text()
    assert told["info"] == ["napari-seg3d autosaved a training session that did not end "
                            "normally: Restore or Discard it at the top of the Train widget."]
    offer.restore_button.click()
    assert offer.isHidden()
    layer = viewer.layers["blobs annotations"]
    np.testing.assert_array_equal(layer.data, strokes)
    np.testing.assert_allclose(layer.scale, (2, 1, 1))
    np.testing.assert_allclose(layer.translate, (4, 0, 1))
    assert widget.image_combo.currentText() == "blobs"
    assert widget.annotation_combo.currentText() == "blobs annotations"
    assert widget.class_table.names[2] == "ball"
    assert widget.model is not None and widget.model.class_names == ("background", "ball")
    assert widget.last_model.iteration == 6 and widget.continue_button.isEnabled()
    assert SESSION.get("blobs model (restored)") is widget.model  # Predict can use it
    assert widget.model.predict(image, device="cpu").shape == image.shape
    assert told["info"][-1] == ("Restored the strokes as layer 'blobs annotations' and the "
                                f"model ({widget.model.iteration} iterations) as the current "
                                "model from the autosaved session of 'blobs'.")
    widget.autosave.writer.wait()  # handed over to a session of this process, the old one gone
    assert not crashed.folder.exists() and find_sessions() == ([], [])
    (session,) = widget.autosave.sessions.values()
    np.testing.assert_array_equal(restore(session.info).strokes, strokes)
    assert load_model(session.folder / "model.pt").iteration == widget.model.iteration
    assert widget.continue_training()  # goes on from the restored last state
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    assert widget.last_model.iteration == 12
    assert not told["warning"]


@pytest.mark.parametrize("how", ["close", "exit"])
def test_napari_ending_normally_leaves_no_session(root, tmp_path, blobs, how):
    image, _, strokes = blobs
    assert napari_session(tmp_path, image, strokes, how).split() == ["1"]  # saved while open
    assert list(root.iterdir()) == []


def test_discard_deletes_the_session(root, tmp_path, blobs, viewer_of, told):
    crash(tmp_path, blobs[2])
    (crashed,), _ = find_sessions()
    viewer = viewer_of(blobs[0])
    widget = make_widget(viewer)
    widget.session_offer.discard_button.click()
    assert widget.session_offer.isHidden() and not crashed.folder.exists()
    assert [layer.name for layer in viewer.layers] == ["blobs"]
    assert widget.model is None
    widget2 = make_widget(viewer)  # nothing offered any more
    assert widget2.session_offer.isHidden() and widget2.session_offer.found == []


def test_the_strokes_come_back_even_without_their_image(root, tmp_path, blobs, viewer_of, told):
    crash(tmp_path, blobs[2])  # of "image 0", from /data/image.tif; no model yet
    widget = make_widget(viewer_of())
    layer = widget.session_offer.restore(widget.session_offer.found[0])
    assert layer.name == "image 0 annotations" and layer.data.shape == (17, 24, 26)
    np.testing.assert_array_equal(layer.data, blobs[2])
    np.testing.assert_allclose(layer.scale, (2, 1, 1))
    assert widget.model is None
    assert told["info"][-1] == (
        "Restored the strokes as layer 'image 0 annotations' from the autosaved session of "
        "'image 0'. The image 'image 0' [17, 24, 26] is not open: open it from /data/image.tif "
        "to go on training.")


def test_a_damaged_session_is_told_of_and_not_offered(root, tmp_path, blobs, viewer_of, told):
    crash(tmp_path, blobs[2], count=2)
    damaged = sorted(root.iterdir())[0]
    (damaged / "session.json").write_text("{")
    widget = make_widget(viewer_of(blobs[0]))
    assert len(widget.session_offer.found) == 1
    assert told["warning"] == [f"The autosaved training session in {damaged} is damaged "
                               "(Expecting property name enclosed in double quotes: line 1 "
                               "column 2 (char 1)) and was skipped; delete that folder."]
    kept = widget.session_offer.found[0].folder
    (kept / "strokes.npz").write_bytes(b"not a zip")
    widget.session_offer.restore_button.click()
    assert told["warning"][-1].startswith(f"The autosaved strokes in {kept / 'strokes.npz'} "
                                          "are damaged (")
    assert told["warning"][-1].endswith(f"The session was not restored; its folder is {kept}.")
    assert kept.is_dir()  # left for the user to look at
    assert widget.session_offer.isHidden() and widget.model is None


def test_painting_and_training_are_autosaved_and_off_turns_it_off(root, blobs, viewer_of,
                                                                  monkeypatch, qtbot):
    viewer = viewer_of(blobs[0])
    widget = make_widget(viewer)
    layer = annotated(widget, blobs[2])
    qtbot.waitUntil(lambda: bool(widget.autosave.sessions), timeout=WAIT_MS)  # ~3 s after
    (session,) = widget.autosave.sessions.values()
    qtbot.waitUntil(lambda: (session.folder / "strokes.npz").is_file(), timeout=WAIT_MS)
    train(qtbot, widget)
    widget.autosave.writer.wait()
    assert load_model(session.folder / "model.pt").iteration == widget.model.iteration
    np.testing.assert_array_equal(restore(session.info).strokes, layer.data)
    viewer.close()  # the main window's Close ends the session
    qtbot.waitUntil(lambda: not widget.autosave.sessions, timeout=WAIT_MS)
    widget.autosave.writer.wait()
    assert not session.folder.exists()
    monkeypatch.setenv("NAPARI_SEG3D_AUTOSAVE", "0")
    viewer = viewer_of(blobs[0])
    widget = make_widget(viewer)
    annotated(widget, blobs[2])
    assert widget.autosave.save_strokes() is None and not widget.autosave.sessions
    assert widget.session_offer.look() == [] and list(root.iterdir()) == []
    assert os.environ["NAPARI_SEG3D_AUTOSAVE"] == "0"


def test_large_strokes_are_saved_at_train_not_while_painting(root, blobs, viewer_of, monkeypatch,
                                                              qtbot):
    monkeypatch.setattr(_autosave, "LIVE_MAX_VOXELS", blobs[2].size - 1)  # "large"
    viewer = viewer_of(blobs[0])
    widget = make_widget(viewer)
    layer = annotated(widget, blobs[2])
    widget.autosave.strokes_changed()  # what painting calls: no copy of a large layer
    assert not widget.autosave._timer.isActive() and not widget.autosave.sessions
    train(qtbot, widget)  # Train copies it
    widget.autosave.writer.wait()
    (session,) = widget.autosave.sessions.values()
    np.testing.assert_array_equal(restore(session.info).strokes, layer.data)
