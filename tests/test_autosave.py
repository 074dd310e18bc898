"""Autosave of a training session (engine): written atomically, found after a real crash of the
process that wrote it (``os._exit``), restored, discarded, damaged folders skipped, pruned."""

import json
import os
import re
import time

import numpy as np
import pytest

from napari_seg3d.engine import load_model, save_model, train
from napari_seg3d.engine import autosave as autosave_module
from napari_seg3d.engine.autosave import (
    MAX_KEPT,
    PaintedVoxels,
    autosave_enabled,
    discard,
    find_sessions,
    flat_nonzero,
    prune,
    read_info,
    restore,
    sessions_root,
    start_session,
)
from _autosave_crash import crash

@pytest.fixture
def root(tmp_path, monkeypatch):
    folder = tmp_path / "sessions"
    monkeypatch.setenv("NAPARI_SEG3D_AUTOSAVE_DIR", str(folder))
    return folder


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, blobs_module):
    image, _, scribbles = blobs_module
    result = train(image, scribbles, settings={
        "iterations": 3, "batch_size": 2, "patch_size": (8, 16, 16), "device": "cpu",
        "base_filters": 4, "levels": 2})
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_model(result.best, path)
    return path


@pytest.fixture(scope="module")
def blobs_module():
    from napari_seg3d.engine.training.scribbles import simulate_scribbles

    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[:17, :24, :26]
    truth = np.zeros((17, 24, 26), np.uint8)
    for cz, cy, cx in [(5, 6, 7), (11, 16, 18), (8, 17, 6)]:
        truth[(z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 < 16] = 1
    image = (truth * 1.0 + rng.normal(0, 0.2, truth.shape)).astype(np.float32)
    return image, truth + 1, simulate_scribbles(truth, slices_per_axis=2, strokes_per_class=2,
                                                length=8, seed=0)


def test_sessions_live_where_the_environment_says(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_SEG3D_AUTOSAVE_DIR", str(tmp_path / "a"))
    assert sessions_root() == tmp_path / "a"
    monkeypatch.delenv("NAPARI_SEG3D_AUTOSAVE_DIR")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert sessions_root() == tmp_path / "state" / "napari-seg3d" / "sessions"
    for value, enabled in [("", True), ("1", True), ("0", False), ("off", False), ("False", False)]:
        monkeypatch.setenv("NAPARI_SEG3D_AUTOSAVE", value)
        assert autosave_enabled() is enabled


def test_a_crash_leaves_a_session_that_is_found_restored_and_discarded(root, tmp_path,
                                                                       blobs_module, tiny_model):
    strokes = blobs_module[2]
    crash(tmp_path, strokes, tiny_model)
    found, problems = find_sessions()
    assert problems == [] and len(found) == 1
    info = found[0]
    assert (info.image_name, info.shape, info.annotation_name) == \
        ("image 0", strokes.shape, "image 0 annotations")
    assert info.class_names == {1: "background", 2: "ball"}
    assert info.scale == (2.0, 1.0, 1.0) and info.translate == (4.0, 0.0, 1.0)
    assert info.source == "/data/image.tif" and info.pid != os.getpid()
    assert "'image 0' [17, 24, 26], last saved" in info.describe()
    assert not list(info.folder.glob(".*.part"))  # every write was complete and renamed
    restored = restore(info)
    np.testing.assert_array_equal(restored.strokes, strokes)
    assert restored.strokes.dtype == strokes.dtype
    assert restored.last_path is None  # only the kept model was saved
    model = load_model(restored.model_path)  # weights_only, like every model file
    original = load_model(tiny_model)
    assert model.class_values == original.class_values and model.iteration == 3
    image = blobs_module[0]
    np.testing.assert_array_equal(model.predict(image, device="cpu"),
                                  original.predict(image, device="cpu"))
    discard(info)
    assert find_sessions() == ([], []) and not info.folder.exists()


def test_a_session_of_a_running_process_is_not_offered_and_closing_deletes_it(root):
    session = start_session("img", (3, 4, 5), "img annotations")
    labels = np.zeros((3, 4, 5), np.uint8)
    labels[1, 2, 3] = 2
    session.save_strokes(labels)
    assert find_sessions() == ([], [])  # this process is alive: its session is not left behind
    np.testing.assert_array_equal(restore(session.folder).strokes, labels)
    with pytest.raises(ValueError, match=r"have shape \(4, 5\), not the session's"):
        session.save_strokes(labels[0])
    session.close()
    assert not session.folder.exists() and session.save_strokes(labels) is None
    with pytest.raises(ValueError, match="is gone"):
        restore(session.info)


@pytest.mark.parametrize("damage, reason", [
    (lambda f: (f / "session.json").write_text("{not json"), "Expecting property name"),
    (lambda f: (f / "session.json").write_text(json.dumps({"image_name": "x"})), "'shape'"),
    (lambda f: (f / "session.json").write_text("[1, 2]"), "session.json is not an object"),
    (lambda f: (f / "session.json").unlink(), "it has no session.json"),
])
def test_a_damaged_session_is_skipped_with_a_sentence(root, tmp_path, damage, reason):
    crash(tmp_path, np.ones((3, 4, 5), np.uint8), count=2)
    folder = sorted(root.iterdir())[0]
    damage(folder)
    old = time.time() - 3600
    os.utime(folder, (old, old))
    found, problems = find_sessions()
    assert len(found) == 1 and found[0].folder != folder
    assert len(problems) == 1
    assert re.fullmatch(rf"The autosaved training session in {re.escape(str(folder))} is damaged "
                        rf"\({re.escape(reason)}.*\) and was skipped; delete that folder\.",
                        problems[0]), problems


def test_a_folder_being_created_is_not_called_damaged(root):
    (root / "20260101-000000-1-abcdef").mkdir(parents=True)  # just now: no session.json yet
    assert find_sessions() == ([], [])


def test_damaged_strokes_refuse_the_restore_with_a_sentence(root, tmp_path):
    crash(tmp_path, np.ones((3, 4, 5), np.uint8))
    info = find_sessions()[0][0]
    (info.folder / "strokes.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match=r"The autosaved strokes in .*strokes.npz are damaged"):
        restore(info)
    np.savez_compressed(info.folder / "strokes.npz", labels=np.ones((3, 4, 6), np.uint8))
    with pytest.raises(ValueError, match=r"not integers of the image's \(3, 4, 5\)"):
        restore(info)
    np.savez_compressed(info.folder / "strokes.npz", shape=np.array([3, 4, 5]),
                        index=np.array([3, 60]), values=np.array([1, 2], np.uint8))
    with pytest.raises(ValueError, match=r"damaged \(its painted voxels do not fit its shape\)"):
        restore(info)  # index 60 lies outside 3x4x5
    np.savez_compressed(info.folder / "strokes.npz", shape=np.array([3, 4, 6]),
                        index=np.array([3]), values=np.array([1], np.uint8))
    with pytest.raises(ValueError, match=r"uint8 of shape \(3, 4, 6\), not integers of the"):
        restore(info)
    np.savez_compressed(info.folder / "strokes.npz", shape=np.array([3, 4, 5]),
                        index=np.array([3]), values=np.array([1.5]))
    with pytest.raises(ValueError, match=r"float64 of shape \(3, 4, 5\), not integers"):
        restore(info)


def test_the_strokes_are_kept_as_their_painted_voxels_and_old_dense_sessions_restore(root):
    labels = np.zeros((6, 40, 50), np.uint16)
    labels[2, 5:9, 10:30] = 3
    labels[:, 20, 7] = 300  # a stroke across every z slice
    painted = PaintedVoxels.of(labels)
    assert painted.shape == labels.shape and len(painted.index) == np.count_nonzero(labels)
    assert painted.values.dtype == np.uint16
    np.testing.assert_array_equal(painted.dense(), labels)
    session = start_session("img", labels.shape, "img annotations")
    path = session.save_strokes(labels)
    with np.load(path) as data:  # the strokes, not the volume
        assert sorted(data.files) == ["index", "shape", "values"]
        assert data["index"].size == np.count_nonzero(labels)
    restored = restore(session.folder).strokes
    np.testing.assert_array_equal(restored, labels)
    assert restored.dtype == np.uint16
    session.save_strokes(painted)  # what the widget hands its writer
    np.testing.assert_array_equal(restore(session.folder).strokes, labels)
    np.savez_compressed(path, labels=labels)  # a session of an earlier version
    np.testing.assert_array_equal(restore(session.folder).strokes, labels)
    empty = np.zeros((2, 3, 4), np.uint8)
    other = start_session("e", empty.shape, "e annotations")
    other.save_strokes(empty)
    np.testing.assert_array_equal(restore(other.folder).strokes, empty)
    session.close()
    other.close()


def test_old_sessions_are_pruned_when_a_new_one_starts(root, tmp_path, tiny_model):
    crash(tmp_path, np.ones((3, 4, 5), np.uint8), tiny_model, count=MAX_KEPT + 2)
    found, _ = find_sessions()
    assert [s.image_name for s in found] == [f"image {i}" for i in range(MAX_KEPT + 1, -1, -1)]
    assert (found[0].folder / "last.pt").is_file() != (found[1].folder / "last.pt").is_file()
    session = start_session("new", (3, 4, 5), "new annotations")  # room for it: MAX_KEPT in all
    left, _ = find_sessions()
    assert [s.image_name for s in left] == [s.image_name for s in found[:MAX_KEPT - 1]]
    assert sorted(root.iterdir()) == sorted([*(s.folder for s in left), session.folder])
    assert prune(keep=MAX_KEPT) == []  # nothing more to delete
    session.close()


def test_a_kept_model_alone_replaces_an_older_runs_last_state(root, tiny_model):
    session = start_session("img", (3, 4, 5), "img annotations")
    model = load_model(tiny_model)
    session.save_model(model, load_model(tiny_model))
    assert (session.folder / "last.pt").is_file()
    session.save_model(model)
    assert not (session.folder / "last.pt").exists()
    assert read_info(session.folder).saved >= session.info.started
    assert autosave_module.MODEL == "model.pt"
    session.close()


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int32, np.uint32, np.int64,
                                   bool, np.float32])
@pytest.mark.parametrize("size", [0, 1, 7, 8, 9, 1001])
def test_flat_nonzero_is_numpys_for_every_dtype_and_length(dtype, size):
    rng = np.random.default_rng(size)
    flat = np.where(rng.random(size) < 0.05, rng.integers(1, 100, size), 0).astype(dtype)
    if size > 8 and dtype == np.float32:
        flat[3] = -0.0  # a zero with a bit set
    np.testing.assert_array_equal(flat_nonzero(flat), np.flatnonzero(flat))
    assert flat_nonzero(flat).dtype == np.int64
    np.testing.assert_array_equal(flat_nonzero(flat[::3]), np.flatnonzero(flat[::3]))
