"""Everything read from a model file or a config file is checked before use, with one sentence
naming the field: tampered model files (real files, loaded by the engine and by ``napari-seg3d
info`` / ``train --resume``), bad YAML config files, the configs' constructors, and the Python
API's prediction functions given the wrong things."""

from __future__ import annotations

import copy
import tracemalloc

import numpy as np
import pytest
import torch

from napari_seg3d.cli import main
from napari_seg3d.engine import (
    SegmentationModel,
    TrainConfig,
    default_model_config,
    load_model,
    predict_volume,
    save_model,
)
from napari_seg3d.engine.errors import ModelFileError, SettingError
from napari_seg3d.engine.io import write_volume
from napari_seg3d.engine.models import build_model
from napari_seg3d.engine.normalization import Normalization
from napari_seg3d.engine.schema import MAX_SHOWN, shown

PATCH = (8, 16, 16)


def _model() -> SegmentationModel:
    config = default_model_config(1, 2, PATCH, base_filters=4, levels=2)
    network = build_model(config.architecture, **config.kwargs)
    optimizer = torch.optim.AdamW(network.parameters())
    network(torch.zeros(1, 1, *PATCH)).sum().backward()
    optimizer.step()
    return SegmentationModel(network=network, model_config=config,
                             train_config=TrainConfig(patch_size=PATCH, device="cpu",
                                                      iterations=2, self_training=0),
                             class_values=(1, 2), normalization=Normalization((0.0,), (1.0,)),
                             iteration=2, optimizer_state=optimizer.state_dict(),
                             history={"loss": [0.5, 0.4], "val_dice": [], "val_iteration": [],
                                      "best_val_dice": None})


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The dictionary a valid model file holds."""
    path = save_model(_model(), tmp_path_factory.mktemp("schema") / "m.pt")
    return torch.load(path, weights_only=True)


def _kwargs(name, value):
    return lambda d: d["model_config"]["kwargs"].__setitem__(name, value)


def _set(name, value):
    return lambda d: d.__setitem__(name, value)


def _train(name, value):
    return lambda d: d["train_config"].__setitem__(name, value)


TAMPERED = {  # case: (change the dictionary, the sentence after "m.pt is damaged or incomplete: ")
    "format_version 'abc'": (_set("format_version", "abc"),
                             "format_version must be a whole number of at least 1, got 'abc'."),
    "format_version None": (_set("format_version", None),
                            "format_version must be a whole number of at least 1, got None."),
    "no class values": (_set("class_values", []),
                        "class_values must list 2 to 64 classes, got []."),
    "5 class values, 2 outputs": (
        _set("class_values", [1, 2, 3, 4, 5]),
        "class_values lists 5 classes but the network has 2 outputs (model_config.kwargs."
        "out_channels), which are 2 classes."),
    "a class value of 2**70": (_set("class_values", [1, 2**70]),
                               "class_values must fit 64-bit integers, got 1180591620717411303424."),
    "class value -1": (_set("class_values", [-1, 2]),
                       "class_values must be a whole number of at least 1, got -1."),
    "class values repeated": (_set("class_values", [2, 2]),
                              "class_values must be different from each other, got [2, 2]."),
    "class value 'a'": (_set("class_values", ["a", 2]),
                        "class_values must be a whole number of at least 1, got 'a'."),
    "normalisation of 2 channels": (
        lambda d: d["normalization"].__setitem__("low", [0.0, 1.0]),
        "normalization.low must hold 1 number(s), one per channel (in_channels), got [0.0, 1.0]."),
    "a patch of 10^9 voxels": (
        _train("patch_size", [1000, 1000, 1000]),
        "train_config: patch_size (1000, 1000, 1000) holds 1,000,000,000 voxels; at most "
        "16,777,216 (256 x 256 x 256) fit a patch: choose a smaller one."),
    "out_channels 3": (_kwargs("out_channels", 3),
                       "class_values lists 2 classes but the network has 3 outputs "
                       "(model_config.kwargs.out_channels), which are 3 classes."),
    "levels 300": (_kwargs("levels", 300),
                   "model_config.kwargs.levels must be a whole number from 1 to 8, got 300."),
    "base_filters 10^9": (_kwargs("base_filters", 10**9),
                          "model_config.kwargs.base_filters must be a whole number from 1 to "
                          "320, got 1000000000."),
    "levels 3, weights of 2": (
        _kwargs("levels", 3),
        "model_config.kwargs.pooling must be 2 lists (levels - 1) of 3 factors of 1 or 2, got "
        "[[2, 2, 2]]."),
    "base_filters 8, weights of 4": (
        _kwargs("base_filters", 8),
        "the weights (state_dict) do not fit the network (model_config): encoder.0.conv1.weight "
        "is (4, 1, 3, 3, 3) in the file but (8, 1, 3, 3, 3) in the network; check "
        "model_config.kwargs (out_channels, levels, base_filters)."),
    "an unknown network argument": (_kwargs("evil", 1), "model_config.kwargs holds 'evil', not "
                                    "an argument of the unet network"),
    "junk optimizer state": (_set("optimizer_state", {"state": "x", "param_groups": 3}),
                             "optimizer_state.param_groups must be a list, got 3."),
    "optimizer state of another network": (
        lambda d: d["optimizer_state"]["param_groups"][0].__setitem__("params", [0, 1]),
        "optimizer_state holds the state of 2 parameters but the network has"),
    "learning_rate 'fast'": (_train("learning_rate", "fast"),
                             "train_config: learning_rate must be a number above 0 and at most 1, "
                             "got 'fast'."),
    "amp 'false'": (_train("amp", "false"), "train_config: amp must be true or false, got "
                    "'false'."),
    "model_config a list": (_set("model_config", [1]),
                            "model_config must be a mapping of names to values, got [1]."),
    "a weight missing": (lambda d: d["state_dict"].pop("head.bias"),
                         "the weights (state_dict) do not fit the network (model_config): they "
                         "lack head.bias."),
    "NaN weights": (lambda d: d["state_dict"]["head.bias"].fill_(float("nan")),
                    "the weights (state_dict) hold NaN or infinite values (head.bias)."),
    "voxel size 0": (_set("voxel_size", [0, 1, 1]),
                     "voxel_size must be a number above 0, got 0.0."),
    "history of strings": (_set("history", {"loss": ["a"]}),
                           "history.loss must hold numbers, got 'a'."),
}


@pytest.mark.parametrize("case", TAMPERED)
def test_a_tampered_model_file_is_refused_naming_the_field(saved, tmp_path, capsys, case):
    change, sentence = TAMPERED[case]
    data = copy.deepcopy(saved)
    change(data)
    path = tmp_path / "m.pt"
    torch.save(data, path)
    with pytest.raises(ModelFileError) as error:
        load_model(path)
    assert str(error.value).startswith(f"m.pt is damaged or incomplete: {sentence}"), error.value
    assert str(error.value).endswith("Save the model again, or copy the file again.")
    capsys.readouterr()
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0] == f"napari-seg3d info: error: {error.value}"


def test_a_huge_network_is_refused_before_any_memory_is_taken(saved, tmp_path):
    """levels 8 and 320 filters would be hundreds of MB of weights: refused from the meta
    network, whose shapes take no memory, before a real one is built."""
    data = copy.deepcopy(saved)
    data["model_config"]["kwargs"].update(levels=8, base_filters=320,
                                          pooling=[[2, 2, 2]] * 7)
    torch.save(data, tmp_path / "m.pt")
    tracemalloc.start()
    with pytest.raises(ModelFileError, match="weights .state_dict. do not fit the network"):
        load_model(tmp_path / "m.pt")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 50_000_000, peak  # the network itself: 3e8 bytes of float32 weights


def test_a_valid_file_still_loads_and_resumes(saved, tmp_path, capsys):
    path = tmp_path / "m.pt"
    torch.save(saved, path)
    model = load_model(path)
    assert model.class_values == (1, 2) and model.optimizer_state is not None


def test_resume_with_a_junk_optimizer_state_is_one_line(saved, tmp_path, capsys):
    data = copy.deepcopy(saved)
    data["optimizer_state"] = {"state": {0: {"exp_avg": torch.zeros(3)}},
                               "param_groups": data["optimizer_state"]["param_groups"]}
    torch.save(data, tmp_path / "m.pt")
    image = np.random.default_rng(0).normal(size=(8, 16, 18)).astype(np.float32)
    labels = np.zeros(image.shape, np.uint8)
    labels[2, 2:6, 2:6], labels[5, 9:14, 9:14] = 1, 2
    args = ["train", "--image", write_volume(tmp_path / "i.tif", image), "--labels",
            write_volume(tmp_path / "l.tif", labels), "--out", tmp_path / "r.pt", "--resume",
            tmp_path / "m.pt", "--iterations", "1", "--quiet", "--no-report"]
    capsys.readouterr()
    assert main([str(a) for a in args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "optimizer_state.state.0.exp_avg does not fit parameter 0" in err[0]
    assert not (tmp_path / "r.pt").exists()


# --- config files ------------------------------------------------------------------------------

# nine levels of nine aliases: 9**9 items once expanded; YAML builds them as shared lists
LAUGHS = "loss: [&a [lol, lol, lol, lol, lol, lol, lol, lol, lol], " + ", ".join(
    f"&{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 9) + "]" for i in range(8)) + "]\n"

CONFIGS = {  # case: (the file's text, the sentence after "Invalid setting in FILE: ")
    "learning_rate 'fast'": ('learning_rate: "fast"\n', "learning_rate must be a number above 0 "
                             "and at most 1, got 'fast'."),
    "levels 'x'": ('levels: "x"\n', "levels must be a whole number from 1 to 8, got 'x'."),
    "validate_every 0": ("validate_every: 0\n", "validate_every must be a whole number of at "
                         "least 1, got 0."),
    "batch_size 'two'": ("batch_size: two\n", "batch_size must be a whole number from 1 to "
                         "1,024, got 'two'."),
    "architecture [unet]": ("architecture: [unet]\n", "Unknown architecture ['unet']; choose "
                            "one of unet, unetpp, resenc_unet."),
    "seed 'abc'": ("seed: abc\n", "seed must be a whole number from 0 to 4,294,967,295, got "
                   "'abc'."),
    "amp 'false' (a string)": ('amp: "false"\n', "amp must be true or false, got 'false'."),
    "augment 'no' (a string)": ('augment: "no"\n', "augment must be true or false, got 'no'."),
    "validation_fraction 5": ("validation_fraction: 5\n", "validation_fraction must be a number "
                              "from 0 to 0.5, got 5.0."),
    "dims 4": ("dims: 4\n", "Unknown dims 4; choose one of 2, 3."),
    "patch_size of two": ("patch_size: [8, 16]\n", "patch_size must be three positive integers "
                          "(Z, Y, X), got [8, 16]."),
    "a billion laughs": (LAUGHS, "Unknown loss [['lol', 'lol', 'lol', 'lol', 'lol', 'lol', "
                         "...], [['lol'...; choose one of ce_dice"),
}


@pytest.mark.parametrize("case", CONFIGS)
def test_a_bad_config_file_is_one_line_naming_the_setting(tmp_path, capsys, case):
    text, sentence = CONFIGS[case]
    config = tmp_path / "run.yaml"
    config.write_text(text)
    args = ["train", "--image", str(tmp_path / "i.tif"), "--labels", str(tmp_path / "l.tif"),
            "--out", str(tmp_path / "m.pt"), "--config", str(config), "--quiet"]
    capsys.readouterr()
    assert main(args) == 2  # before the (missing) image is read
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"napari-seg3d train: error: Invalid setting in {config}: {sentence}"), err
    assert len(err[0]) < 400  # a value is shown at most MAX_SHOWN characters long


def test_a_config_file_that_is_not_utf8_is_named(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_bytes("iterations: 2\n# caf\u00e9\n".encode("latin-1"))
    capsys.readouterr()
    assert main(["train", "--image", "i.tif", "--labels", "l.tif", "--out",
                 str(tmp_path / "m.pt"), "--config", str(config)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"napari-seg3d train: error: The config file {config} is not UTF-8 text (byte 0xe9 at "
        "position 19); save it as UTF-8.")


def test_an_exponent_without_a_dot_is_a_number(tmp_path):
    """YAML 1.1 reads ``1e-3`` as text; a decimal setting takes it as the number it means."""
    from napari_seg3d._config_file import read_config

    config = tmp_path / "run.yaml"
    config.write_text("learning_rate: 1e-3\nsmoothness: 2E0\n")
    assert read_config(config) == {"learning_rate": 0.001, "smoothness": 2.0}


def test_shown_values_are_short_however_large():
    nested: list = ["lol"] * 9
    for _ in range(30):  # 9**30 items if expanded
        nested = [nested] * 9
    assert len(shown(nested)) <= MAX_SHOWN and len(shown("x" * 10**6)) <= MAX_SHOWN


# --- the configs' constructors and the Python API ----------------------------------------------

@pytest.mark.parametrize("kwargs, sentence", [
    ({"learning_rate": -1}, "learning_rate must be a number above 0 and at most 1, got -1.0."),
    ({"validate_every": 0}, "validate_every must be a whole number of at least 1, got 0."),
    ({"validation_fraction": 2}, "validation_fraction must be a number from 0 to 0.5, got 2.0."),
    ({"batch_size": 2.5}, "batch_size must be a whole number from 1 to 1,024, got 2.5."),
    ({"amp": "no"}, "amp must be true or false, got 'no'."),
    ({"seed": -1}, "seed must be a whole number from 0 to 4,294,967,295, got -1."),
    ({"patch_size": (8, 16)}, "patch_size must be three positive integers (Z, Y, X), got (8, 16)."),
    ({"loss": "lovasz"}, "Unknown loss 'lovasz'; choose one of ce_dice"),
])
def test_train_config_refuses_wrong_values(kwargs, sentence):
    with pytest.raises(SettingError) as error:
        TrainConfig(**kwargs)
    assert str(error.value).startswith(sentence) and isinstance(error.value, ValueError)


@pytest.fixture(scope="module")
def model() -> SegmentationModel:
    return _model()


def _unavailable_device() -> str:
    mps = getattr(torch.backends, "mps", None)
    return "cuda" if not torch.cuda.is_available() else (
        "mps" if not (mps and mps.is_available()) else "cuda:99")


@pytest.mark.parametrize("case", ["a SegmentationModel", "a path", "an unavailable device",
                                  "batch_size 2.5", "an unknown device"])
def test_predict_volume_given_the_wrong_thing_says_what_to_pass(model, case):
    volume = np.zeros((8, 16, 16), np.float32)
    net, kwargs = model.network, {"patch_size": PATCH}
    expected = {
        "a SegmentationModel": "predict_volume takes a network (torch.nn.Module), got a "
                               "SegmentationModel: use its own method instead, "
                               "model.predict(volume)",
        "a path": "The volume 'image.tif' is a file name, not an array: read it first",
        "an unavailable device": "was asked for, but",
        "batch_size 2.5": "batch_size must be a positive integer, got 2.5.",
        "an unknown device": "Unknown device 'tpu'; choose one of auto, cpu, cuda, mps (or cuda:N",
    }[case]
    if case == "a SegmentationModel":
        net = model
    elif case == "a path":
        volume = "image.tif"
    elif case == "an unavailable device":
        kwargs["device"] = _unavailable_device()
        expected = "There is no GPU 99" if kwargs["device"] == "cuda:99" else expected
    elif case == "batch_size 2.5":
        kwargs["batch_size"] = 2.5
    else:
        kwargs["device"] = "tpu"
    with pytest.raises(ValueError) as error:
        predict_volume(net, volume, **kwargs)
    assert expected in str(error.value)
    assert len(str(error.value).splitlines()) == 1


def test_a_model_given_a_path_says_to_read_it(model):
    with pytest.raises(ValueError, match="The volume 'x.tif' is a file name, not an array"):
        model.predict("x.tif", device="cpu")
