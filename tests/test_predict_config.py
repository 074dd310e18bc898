"""The frozen PredictConfig: validation with one sentence per bad setting, keyword overrides, and
a shared model that no prediction changes (planes, device, mode), so that two predictions of one
model with different settings, interleaved, each give their own result."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from napari_seg3d.engine import (
    DEVICES,
    PredictConfig,
    SegmentationModel,
    TrainConfig,
    build_model,
    default_model_config,
    predict_volume,
)
from napari_seg3d.engine.config import predict_config
from napari_seg3d.engine.normalization import Normalization

PATCH = (6, 16, 16)


def _model(dims: int) -> SegmentationModel:
    config = default_model_config(1, 2, PATCH, base_filters=4, levels=2, dims=dims)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        network = build_model(config.architecture, **config.kwargs)
    network.eval()
    return SegmentationModel(network=network, model_config=config,
                             train_config=TrainConfig(patch_size=PATCH, device="cpu",
                                                      planes="three"),
                             class_values=(1, 2), normalization=Normalization((0.0,), (1.0,)))


def _image(shape=(20, 24, 26)) -> np.ndarray:
    return np.random.default_rng(1).random(shape, dtype=np.float32)


@pytest.mark.parametrize("field, value, sentence", [
    ("overlap", 1.0, r"overlap must be a number in \[0, 1\), got 1.0\."),
    ("overlap", -0.1, r"overlap must be a number in \[0, 1\)"),
    ("overlap", "half", r"overlap must be a number"),
    ("blending", "median", r"Unknown blending 'median'; choose one of gaussian, constant\."),
    ("batch_size", 0, r"batch_size must be a positive integer, got 0\."),
    ("batch_size", 2.5, r"batch_size must be a positive integer, got 2.5\."),
    ("batch_size", True, r"batch_size must be a positive integer"),
    ("device", "tpu", r"Unknown device 'tpu'; choose one of auto, cpu, cuda, mps"),
    ("device", "auto:1", r"Unknown device 'auto:1'"),
    ("planes", "four", r"Unknown planes 'four'; choose one of fast, three, best\."),
    ("tta", "yes", r"tta must be True or False, got 'yes'\."),
    ("amp", "on", r"amp must be True or False"),
    ("probabilities", None, r"probabilities must be True or False"),
    ("block_shape", (8, 0, 8), r"block_shape must be three positive integers"),
    ("block_shape", (8, 8), r"block_shape must be three positive integers"),
    ("window", (8, 0, 8), r"window must be three positive integers \(z, y, x\) or None"),
    ("window", "big", r"window must be three positive integers"),
])
def test_a_bad_setting_is_one_sentence(field, value, sentence):
    with pytest.raises(ValueError, match=sentence):
        PredictConfig(**{field: value})


def test_two_bad_settings_are_two_sentences():
    with pytest.raises(ValueError) as info:
        PredictConfig(overlap=2, batch_size=-1)
    assert str(info.value).count(".") >= 2 and "overlap" in str(info.value) \
        and "batch_size" in str(info.value)


def test_values_are_made_plain_and_the_config_pickles():
    config = PredictConfig(overlap=np.float32(0.25), batch_size=np.int64(3),
                           device=torch.device("cpu"), block_shape=[np.int32(8), 16, 16],
                           tta=np.bool_(True), amp=False)
    assert config == PredictConfig(overlap=0.25, batch_size=3, device="cpu",
                                   block_shape=(8, 16, 16), tta=True, amp=False)
    assert type(config.batch_size) is int and type(config.tta) is bool
    assert pickle.loads(pickle.dumps(config)) == config
    assert PredictConfig(device="cuda:1").device == "cuda:1"
    assert set(DEVICES) == {"auto", "cpu", "cuda", "mps"}
    with pytest.raises(AttributeError):
        config.overlap = 0.5  # frozen


def test_overrides_replace_fields_and_unknown_names_are_refused():
    base = PredictConfig(overlap=0.25)
    assert predict_config(base) is base  # passed on unchanged
    assert predict_config(base, tta=True) == PredictConfig(overlap=0.25, tta=True)
    assert predict_config(None, batch_size=2) == PredictConfig(batch_size=2)
    with pytest.raises(TypeError, match="Unknown prediction setting.*overlapp.*PredictConfig has"):
        predict_config(base, overlapp=0.5)
    net = _model(3).network
    with pytest.raises(TypeError, match="stride"):
        predict_volume(net, _image(), patch_size=PATCH, stride=2)


def test_predict_volume_takes_a_config_or_its_fields():
    net, image = _model(3).network, _image()
    from_fields = predict_volume(net, image, patch_size=PATCH, overlap=0.25, batch_size=3,
                                 probabilities=True)
    from_config = predict_volume(net, image, patch_size=PATCH,
                                 config=PredictConfig(overlap=0.25, batch_size=3,
                                                      probabilities=True))
    np.testing.assert_array_equal(from_fields, from_config)
    assert from_config.shape == (2, *image.shape)


def test_two_interleaved_predictions_of_one_2d_model_keep_their_own_planes(one_thread):
    """The Predict and Batch widgets share one model: a "fast" and a "best" prediction of it,
    interleaved region by region, each give what they give alone."""
    model, image = _model(2), _image()
    alone = {p: model.predict(image, planes=p, device="cpu", block_shape=(6, 24, 26))
             for p in ("fast", "best")}
    assert not np.array_equal(alone["fast"], alone["best"])
    gens = {p: model.iter_predict(image, planes=p, device="cpu", block_shape=(6, 24, 26))
            for p in ("fast", "best")}
    got = {p: np.zeros(image.shape, np.uint8) for p in gens}
    for p in ("fast", "best"):  # both started: "best" second
        region = next(gens[p])
        got[p][region.slices] = region.labels
    counts = {p: 1 for p in gens}
    for p in ("fast", "best"):  # "fast" finishes after "best" started
        for region in gens[p]:
            got[p][region.slices] = region.labels
            counts[p] += 1
    assert counts["fast"] > 1 and counts["best"] > 1  # really interleaved
    for p in gens:
        np.testing.assert_array_equal(got[p], alone[p], err_msg=p)
    assert model.network.planes == "three"  # the shared network is as it was


def test_a_prediction_leaves_the_shared_network_as_it_was(one_thread):
    model, image = _model(2), _image((8, 20, 22))
    network = model.network
    before = {k: (v.device, v.data_ptr()) for k, v in network.state_dict().items()}
    network.train()
    for device in ("cpu", "auto", None):
        model.predict(image, planes="best", device=device)
    assert model.network is network and network.planes == "three" and network.training
    assert {k: (v.device, v.data_ptr()) for k, v in network.state_dict().items()} == before
    assert model.network_for(PredictConfig(device="cpu")) is network  # no copy on its device
    view = model.network_for(PredictConfig(device="cpu", planes="fast"))
    assert view is not network and view.planes == "fast" and view.net is network.net
    assert view.training == network.training


@pytest.mark.parametrize("amp, expected", [(None, "trained"), (True, True), (False, False)])
def test_amp_none_means_as_trained(amp, expected, one_thread):
    """None: the precision the model was trained in; for a bare network (trained_amp's
    default) mixed precision on."""
    model, image = _model(3), _image((8, 20, 22))
    for trained in (True, False):
        model.train_config = TrainConfig(patch_size=PATCH, device="cpu", amp=trained)
        want = trained if expected == "trained" else expected
        np.testing.assert_array_equal(
            model.predict(image, device="cpu", amp=amp, probabilities=True),
            predict_volume(model.network, model.prepare(image), patch_size=PATCH, amp=want,
                           device="cpu", probabilities=True))
    bare = predict_volume(model.network, image, patch_size=PATCH, probabilities=True)
    on = predict_volume(model.network, image, patch_size=PATCH, probabilities=True, amp=True)
    np.testing.assert_array_equal(bare, on)


def test_planes_are_refused_for_a_3d_network_at_every_level():
    model, image = _model(3), _image((8, 20, 22))
    with pytest.raises(ValueError, match="apply to 2D"):
        model.check_config(PredictConfig(planes="fast"))
    with pytest.raises(ValueError, match="apply to 2D"):
        predict_volume(model.network, image, patch_size=PATCH, planes="fast")
    model.check_config(PredictConfig())  # no planes: fine


def test_the_window_is_the_patch_unless_one_is_given(one_thread):
    model, image = _model(3), _image((20, 40, 44))
    for window in (None, (8, 24, 32)):
        config = PredictConfig(window=window, device="cpu", probabilities=True)
        used = model.prediction_window(image.shape, config)
        assert used == (window or PATCH)
        np.testing.assert_allclose(  # the model's softmax = the bare network's over that window
            model.predict(image, config),
            predict_volume(model.network, image, patch_size=used, probabilities=True), atol=1e-5)
    with pytest.raises(ValueError, match="A window applies to 3D models; this one is 2D"):
        _model(2).check_config(PredictConfig(window=(8, 16, 16)))


def test_a_wide_window_takes_as_many_patches_of_the_batch_as_it_holds():
    from napari_seg3d.engine.plan import windows_per_pass

    assert windows_per_pass(4, (48, 48, 48), (48, 48, 48)) == 4
    assert windows_per_pass(4, (48, 48, 48), (80, 80, 80)) == 1  # 0.86 of one: at least one
    assert windows_per_pass(16, (48, 48, 48), (96, 96, 96)) == 2


@pytest.mark.parametrize("option, sentence", [
    (["--overlap", "1"], "overlap must be a number in [0, 1), got 1.0."),
    (["--batch-size", "0"], "batch_size must be a positive integer, got 0."),
    (["--block-size", "0", "8", "8"], "block_shape must be three positive integers"),
    (["--window", "8", "-1", "8"], "window must be three positive integers"),
])
def test_the_command_line_refuses_a_bad_setting_before_any_file(option, sentence, tmp_path,
                                                                capsys):
    from napari_seg3d.cli import main
    from napari_seg3d.engine import save_model, write_volume

    model_file = save_model(_model(3), tmp_path / "m.pt")
    image = write_volume(tmp_path / "a.tif", _image((8, 20, 22)))
    code = main(["predict", str(image), "--model", str(model_file), "--out",
                 str(tmp_path / "out"), "--quiet", "--device", "cpu", *option])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and sentence in err[0], err
    assert not (tmp_path / "out").exists()
