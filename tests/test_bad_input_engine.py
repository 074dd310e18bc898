"""Bad input through the engine: every case of :mod:`_bad_input_cases` raises a Seg3DError (or
ValueError) with a sentence, and properties (hypothesis) of labels, model files and volumes."""

from __future__ import annotations

import pickle
from pathlib import Path

import _bad_input_cases as cases
import numpy as np
import pytest
from _bad_input_cases import (
    BAD_MODELS,
    CHANNELS,
    REFUSED,
    UNREADABLE,
    WORKS,
    _Payload,
    painted,
    train,
)
from conftest import run_to_end
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from napari_seg3d.engine import (
    AnnotationError,
    ModelFileError,
    TrainConfig,
    Trainer,
    default_model_config,
    load_model,
    save_model,
)
from napari_seg3d.engine.errors import OutputError, VolumeError, writable_folder
from napari_seg3d.engine.io import read_volume, write_volume

# the shared fixtures (see _bad_input_cases), in this module
one_torch_thread = cases.one_torch_thread  # autouse
model = cases.model
two_channel_model = cases.two_channel_model
blocked = cases.blocked
FEW = settings(max_examples=25, deadline=None)


# --- arrays that must work ------------------------------------------------------------------------

@pytest.mark.parametrize("case", WORKS)
def test_works_in_the_engine(blobs, case):
    image, labels = WORKS[case](*blobs)
    model = train(image, labels)
    assert model.class_values == tuple(sorted(painted(labels)))
    pred = model.predict(image, device="cpu")
    probs = model.predict(image, device="cpu", probabilities=True)
    assert pred.shape == labels.shape and probs.shape[1:] == labels.shape
    assert painted(pred) <= painted(labels)
    lut = np.asarray(model.class_values)  # class k comes back as the k-th painted value
    assert np.mean(pred == lut[probs.argmax(0)]) > 0.999


# --- arrays that cannot work: one sentence on every surface ---------------------------------------

@pytest.mark.parametrize("case", REFUSED)
def test_refused_by_the_engine(blobs, case):
    make, message, _ = REFUSED[case]
    image, labels = make(*blobs)
    with pytest.raises(AnnotationError) as error:
        train(image, labels)
    assert message in str(error.value)


# --- files that cannot be read --------------------------------------------------------------------

@pytest.mark.parametrize("case", UNREADABLE)
def test_unreadable_files_in_the_engine(blobs, tmp_path, case):
    path, message = UNREADABLE[case](tmp_path, blobs[0], blobs[2])
    for lazy in (False, True):
        with pytest.raises(VolumeError) as error:
            read_volume(path, lazy=lazy)
        assert message.format(path=path) in str(error.value)


# --- model files that cannot be loaded ------------------------------------------------------------

def test_the_payload_is_live(tmp_path):
    """Plain pickle runs the payload: so a missing marker below proves nothing ran."""
    pickle.loads(pickle.dumps(_Payload(tmp_path / "pwned")))
    assert (tmp_path / "pwned").exists()


@pytest.mark.parametrize("case", BAD_MODELS)
def test_bad_model_files_in_the_engine(model, tmp_path, case):
    path, message = BAD_MODELS[case](tmp_path, model)
    with pytest.raises(ModelFileError) as error:
        load_model(path)
    assert str(error.value).startswith(message)
    assert not (tmp_path / "pwned").exists()


# --- a model for 2 channels, an image with 1 ------------------------------------------------------

def test_two_channel_model_on_a_one_channel_image_in_the_engine(blobs, two_channel_model):
    with pytest.raises(ValueError, match="This model was trained on 2-channel images; the image "
                                         r"has 1 channel\(s\)."):
        two_channel_model.predict(blobs[0], device="cpu")
    with pytest.raises(AnnotationError, match=f"{CHANNELS}; this image has 1."):
        train(blobs[0], blobs[2], init=two_channel_model)


# --- an output folder that cannot be written ------------------------------------------------------

def test_unwritable_output_in_the_engine(model, blocked):
    with pytest.raises(OutputError) as error:
        save_model(model, blocked / "m.pt")
    assert str(error.value) == (f"Cannot save the model to {blocked / 'm.pt'} (Not a directory). "
                                "Choose a folder you can write to.")
    assert isinstance(error.value, OSError)  # what callers that catch OSError expect
    with pytest.raises(OutputError) as error:
        writable_folder(blocked)
    assert str(error.value) == (f"Cannot write to the output folder {blocked} (Not a directory). "
                                "Choose a folder you can write to.")
    with pytest.raises(OutputError, match="it is a file"):
        writable_folder(blocked.parent)


# --- properties (hypothesis) ----------------------------------------------------------------------

INTEGER_DTYPES = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
                  np.uint64]
SMALL = (4, 8, 8)
SMALL_IMAGE = np.random.default_rng(0).normal(size=SMALL).astype(np.float32)


@st.composite
def label_arrays(draw):
    """Sparse ``SMALL`` label arrays of any integer dtype and any values it holds."""
    dtype = np.dtype(draw(st.sampled_from(INTEGER_DTYPES)))
    info = np.iinfo(dtype)
    values = st.one_of(st.integers(0, 3), st.integers(int(info.min), int(info.max)))
    return draw(arrays(dtype, SMALL, elements=values, fill=st.just(0)))


@FEW
@given(labels=label_arrays())
def test_any_integer_labels_train_or_give_an_annotation_error(labels):
    """Any integer labels: trained on (and predicted as the painted values), or refused with an
    AnnotationError, never anything else."""
    cfg = TrainConfig(patch_size=SMALL, batch_size=2, iterations=1, device="cpu", self_training=0,
                      validate_every=1)
    values = sorted({int(v) for v in np.unique(labels)} - {0})
    try:
        mc = default_model_config(1, max(len(values), 1), SMALL, base_filters=2, levels=2)
        run = Trainer(SMALL_IMAGE, labels, cfg, model_config=mc).run()
    except AnnotationError as e:
        assert len(values) < 2 or min(values) < 0, e
        return
    assert len(values) >= 2 and min(values) > 0
    trained = run_to_end(run).best
    assert list(trained.class_values) == values
    assert {int(v) for v in np.unique(trained.predict(SMALL_IMAGE, device="cpu"))} <= set(values)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Valid files to damage: a tiny model file, TIFF (compressed and not) and HDF5 volumes."""
    folder = tmp_path_factory.mktemp("valid")
    labels = np.zeros(SMALL, np.uint8)
    labels[1, 2, :4], labels[2, 5, 4:] = 1, 2
    mc = default_model_config(1, 2, SMALL, base_filters=2, levels=2)
    tiny = Trainer(SMALL_IMAGE, labels, TrainConfig(patch_size=SMALL, device="cpu"),
                   model_config=mc).model
    out = {"model": save_model(tiny, folder / "model.pt").read_bytes()}
    for name, compression in (("tif", True), ("raw.tif", False), ("h5", True)):
        path = write_volume(folder / f"volume.{name}", SMALL_IMAGE, compression=compression)
        out[name] = path.read_bytes()
    return folder, out


def _damaged(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


@FEW
@given(data=st.one_of(st.binary(max_size=3000),
                      st.binary(max_size=3000).map(lambda b: b"PK\x03\x04" + b),  # a zip start
                      st.binary(max_size=3000).map(lambda b: b"\x80\x02" + b)))  # a pickle
def test_random_bytes_are_never_a_model(files, data):
    with pytest.raises(ModelFileError, match="Cannot load model.pt: it "):
        load_model(_damaged(files[0], "model.pt", data))


@FEW
@given(cut=st.floats(0.0, 1.0, exclude_max=True))
def test_a_truncated_model_file_is_a_model_file_error(files, cut):
    data = files[1]["model"]
    with pytest.raises(ModelFileError, match="Cannot load model.pt: it is truncated, corrupt"):
        load_model(_damaged(files[0], "model.pt", data[: int(cut * len(data))]))


@settings(max_examples=30, deadline=None)
@given(name=st.sampled_from(["tif", "raw.tif", "h5"]), cut=st.floats(0.0, 1.0, exclude_max=True),
       lazy=st.booleans())
def test_a_truncated_volume_is_a_volume_error_or_reads_whole(files, name, cut, lazy):
    """Cut anywhere, a TIFF or HDF5 volume is refused with a VolumeError, or (when only bytes
    that hold no image data went) reads exactly as before."""
    data = files[1][name]
    path = _damaged(files[0], f"cut.{name}", data[: int(cut * len(data))])
    try:
        volume = read_volume(path, lazy=lazy)
    except VolumeError:
        return
    with volume:
        np.testing.assert_array_equal(np.asarray(volume.data[()]), SMALL_IMAGE)


@FEW
@given(suffix=st.sampled_from([".tif", ".h5", ".npy"]), data=st.binary(max_size=3000))
def test_random_bytes_are_never_a_volume(files, suffix, data):
    with pytest.raises(VolumeError):
        read_volume(_damaged(files[0], f"random{suffix}", data))
