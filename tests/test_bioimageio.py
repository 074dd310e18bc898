"""BioImage Model Zoo packages (issue 15): a model trained on the nuclei sample is exported by
``napari-seg3d export``; bioimageio.core's own test passes on the package; bioimageio.core's
prediction of the test input equals ``napari-seg3d predict``'s probabilities (float32, within
1e-4); the package loads back as the same model; another tool's package that fits predicts as
bioimageio.core does; one that does not fit gets its sentence. Nothing reaches the network: every
test runs under a guard that fails on any connection or name look-up off this machine."""

from __future__ import annotations

import io
import socket
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from _zoo_packages import build_package, train_on_sample

from napari_seg3d._sample_data import load_nuclei, write_sample
from napari_seg3d.cli import main
from napari_seg3d.engine import ModelFileError, TrainConfig, Trainer, load_model, save_model
from napari_seg3d.engine.errors import AnnotationError, OutputError
from napari_seg3d.engine.io import read_volume, write_volume

# bioimageio.core loads TorchScript weights with torch.jit.load, deprecated in PyTorch 2.13
pytestmark = pytest.mark.filterwarnings(
    r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning")
TOLERANCE = 1e-4  # bioimageio.core against napari-seg3d predict, probabilities in float32
LOCAL = ("127.0.0.1", "::1", "localhost")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Fail the test if anything connects, or looks a name up, off this machine."""
    attempts = []
    connect, getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def guarded_connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in LOCAL:
            attempts.append(address)
            raise OSError("network blocked by the test")
        return connect(self, address)

    def guarded_getaddrinfo(host, *args, **kwargs):
        if host not in LOCAL and host is not None:
            attempts.append(host)
            raise OSError("name look-up blocked by the test")
        return getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    yield
    assert not attempts, f"the test reached for the network: {attempts}"


@pytest.fixture(autouse=True)
def _collect_open_files():
    """What bioimageio.core's own calls here leave open, collected after each test."""
    from napari_seg3d.engine.zoo import collecting_open_files

    with collecting_open_files():
        yield


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    """The sample's files, a model trained on them, and its package from ``napari-seg3d export``."""
    folder = tmp_path_factory.mktemp("zoo")
    image = write_sample(folder / "sample")[0]
    model = train_on_sample(folder)
    package = folder / "nuclei.zip"
    assert main(["export", str(model), "--out", str(package), "--image", str(image),
                 "--author", "A. Tester"]) == 0
    return {"folder": folder, "image": image, "model": model, "package": package}


def passes_bioimageio_test(package: Path) -> None:
    from bioimageio.core import test_model

    summary = test_model(str(package))
    failed = [(d.name, [e.msg for e in d.errors]) for d in summary.details if d.status != "passed"]
    assert summary.status == "passed", failed
    names = " ".join(d.name for d in summary.details)
    assert "pytorch_state_dict" in names and "torchscript" in names, names


def test_the_package_passes_bioimageio_cores_own_test(exported):
    passes_bioimageio_test(exported["package"])


def test_the_package_describes_the_model(exported):
    rdf = yaml.safe_load(_member(exported["package"], "rdf.yaml"))
    model = load_model(exported["model"])
    assert rdf["format_version"].startswith("0.5") and rdf["license"] == "BSD-3-Clause"
    assert set(rdf["weights"]) == {"pytorch_state_dict", "torchscript"}
    arch = rdf["weights"]["pytorch_state_dict"]["architecture"]
    assert (arch["import_from"], arch["callable"]) == ("napari_seg3d.engine.zoo.network",
                                                       "ZooNetwork")
    (scale,) = [p for p in rdf["inputs"][0]["preprocessing"] if p["id"] == "scale_linear"]
    (low,), (high,) = model.normalization.low, model.normalization.high
    assert scale["kwargs"]["gain"] == pytest.approx(1 / (high - low))
    assert scale["kwargs"]["offset"] == pytest.approx(-low / (high - low))
    axes = rdf["outputs"][0]["axes"]
    assert axes[1]["channel_names"] == ["background", "nucleus"]
    assert [a["scale"] for a in axes[2:]] == [1.0, 1.0, 1.0]  # the sample's voxel size
    assert rdf["authors"] == [{"name": "A. Tester"}]
    assert "10.1109/WACV45572.2020.9093435" in [c["doi"] for c in rdf["cite"]]  # StarDist
    with zipfile.ZipFile(exported["package"]) as z:
        names = z.namelist()
    assert {"README.md", "LICENSE-stardist.txt", "cover.png", "test_input.npy"} <= set(names)
    readme = _member(exported["package"], "README.md").decode()
    mean_dice = np.mean(model.history["best_val_dice"])
    assert "## Validation" in readme and f"**{mean_dice:.3f}**" in readme
    assert "| learning_rate | 0.003 |" in readme and "StarDist" in readme


def _member(package: Path, name: str) -> bytes:
    with zipfile.ZipFile(package) as z:
        return z.read(name)


def _test_input(package: Path, name: str = "test_input.npy") -> np.ndarray:
    return np.load(io.BytesIO(_member(package, name)))


def test_bioimageio_core_predicts_what_napari_seg3d_predict_does(exported, tmp_path):
    from bioimageio.core import create_prediction_pipeline, load_model_description, predict

    x = _test_input(exported["package"])  # (1, 1, 16, 32, 32): one window of the model
    write_volume(tmp_path / "crop.tif", x[0, 0])
    assert main(["predict", str(tmp_path / "crop.tif"), "--model", str(exported["model"]),
                 "--out", str(tmp_path / "out"), "--probabilities", "--no-amp",
                 "--device", "cpu", "--quiet", "--no-forest"]) == 0  # a package: the network
    (probabilities,) = (tmp_path / "out").glob("*probabilities*")
    ours = np.asarray(read_volume(probabilities).data)
    descr = load_model_description(exported["package"], perform_io_checks=False)
    for weights in ("pytorch_state_dict", "torchscript"):
        pipeline = create_prediction_pipeline(descr, weight_format=weights, devices=["cpu"])
        theirs = predict(model=pipeline, inputs=x).members["probabilities"].data
        assert np.abs(np.asarray(theirs)[0] - ours).max() < TOLERANCE, weights


def test_the_package_loads_back_as_the_same_model(exported, tmp_path):
    image = np.asarray(read_volume(exported["image"]).data)
    before, after = load_model(exported["model"]), load_model(exported["package"])
    for name in ("model_config", "train_config", "class_values", "class_names",
                 "normalization", "in_channels", "voxel_size", "iteration"):
        assert getattr(after, name) == getattr(before, name), name
    options = {"device": "cpu", "amp": False}
    assert before.forest is not None and after.forest is None  # a package holds the network
    np.testing.assert_array_equal(after.predict(image, probabilities=True, **options),
                                  before.predict(image, probabilities=True, forest=False,
                                                 **options))
    for model, name in ((exported["model"], "pt"), (exported["package"], "zip")):
        assert main(["predict", str(exported["image"]), "--model", str(model), "--out",
                     str(tmp_path / name), "--device", "cpu", "--quiet", "--no-forest"]) == 0
    labels = [np.asarray(read_volume(tmp_path / n / "image_labels.tif").data) for n in ("pt", "zip")]
    np.testing.assert_array_equal(*labels)


@pytest.mark.parametrize(("dims", "loss", "image"), [(2, "ce_dice", True), (3, "bce_dice", False)],
                         ids=["2.5D, crop of the sample", "one sigmoid output, synthetic input"])
def test_2p5d_and_one_output_models_export_and_load_back(tmp_path, capsys, dims, loss, image):
    model_file = train_on_sample(tmp_path, dims=dims, loss=loss)
    sample = write_sample(tmp_path / "sample")[0]
    package = tmp_path / "model.zip"
    args = ["export", str(model_file), "--out", str(package)]
    assert main(args + (["--image", str(sample)] if image else [])) == 0
    assert ("synthetic" in capsys.readouterr().out) is not image
    passes_bioimageio_test(package)
    before, after = load_model(model_file), load_model(package)
    assert after.dims == dims and after.network.out_channels == (1 if loss == "bce_dice" else 2)
    x = _test_input(package)[0]
    np.testing.assert_array_equal(after.predict(x, probabilities=True, device="cpu"),
                                  before.predict(x, probabilities=True, device="cpu",
                                                 forest=False))


@pytest.mark.parametrize("preprocessing", ["zero_mean_unit_variance", "scale_range"])
def test_another_tools_package_predicts_as_bioimageio_core_does(tmp_path, preprocessing):
    from bioimageio.core import load_model_description, predict

    package = build_package(tmp_path, preprocessing=preprocessing)
    model = load_model(package)
    assert type(model).__name__ == "PackageModel" and model.class_values == (1, 2, 3)
    assert model.class_names == ("class0", "class1", "class2")
    x = _test_input(package, "in.npy")
    ours = model.predict(x[0], probabilities=True, device="cpu")
    descr = load_model_description(package, perform_io_checks=False)
    theirs = np.asarray(predict(model=descr, inputs=x).members["output0"].data)[0]
    assert np.abs(ours - theirs).max() < TOLERANCE
    np.testing.assert_array_equal(model.predict(x[0], device="cpu"), theirs.argmax(0) + 1)


def test_another_tools_package_predicts_from_the_command_line(tmp_path):
    package = build_package(tmp_path)
    write_volume(tmp_path / "volume.tif", _test_input(package, "in.npy")[0, 0])
    assert main(["predict", str(tmp_path / "volume.tif"), "--model", str(package), "--out",
                 str(tmp_path / "out"), "--device", "cpu", "--quiet"]) == 0
    labels = np.asarray(read_volume(tmp_path / "out" / "volume_labels.tif").data)
    assert labels.shape == (12, 20, 24) and set(np.unique(labels)) <= {1, 2, 3}


@pytest.mark.parametrize("weights", ["file", "torchscript"])
def test_code_inside_a_package_runs_only_when_trusted(tmp_path, monkeypatch, weights):
    package = build_package(tmp_path, weights=weights)
    monkeypatch.delenv("NAPARI_SEG3D_TRUST_CODE", raising=False)
    with pytest.raises(ModelFileError, match="holds code.*NAPARI_SEG3D_TRUST_CODE=1"):
        load_model(package)
    monkeypatch.setenv("NAPARI_SEG3D_TRUST_CODE", "1")
    reference = build_package(tmp_path / "library", weights="library")
    x = _test_input(package, "in.npy")[0]
    np.testing.assert_allclose(load_model(package).predict(x, probabilities=True, device="cpu"),
                               load_model(reference).predict(x, probabilities=True, device="cpu"),
                               atol=1e-6)


def test_a_library_callable_that_is_not_a_network_is_never_called(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_SEG3D_TRUST_CODE", "1")  # not even when code is trusted
    package = build_package(tmp_path, weights="os.system")
    with pytest.raises(ModelFileError, match="os.system, is not a torch.nn.Module class"):
        load_model(package)
    assert not (tmp_path / "ran").exists()


UNFIT = {
    "2D": ({"axes": "bcyx"}, "is a 2D model"),
    "TensorFlow": ({"weights": "tensorflow"}, "only tensorflow_saved_model_bundle weights"),
    "clip": ({"preprocessing": "clip"}, "pre-processing 'clip' is not one napari-seg3d applies"),
    "smaller output": ({"output_size": "smaller"}, "not the size of its input"),
}


@pytest.mark.parametrize("case", list(UNFIT))
def test_a_package_that_does_not_fit_gets_its_sentence(tmp_path, capsys, case):
    options, sentence = UNFIT[case]
    package = build_package(tmp_path, **options)
    with pytest.raises(ModelFileError, match=sentence):
        load_model(package)
    write_volume(tmp_path / "v.tif", np.zeros((8, 8, 8), np.float32))
    assert main(["predict", str(tmp_path / "v.tif"), "--model", str(package), "--out",
                 str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not fit napari-seg3d" in err[0], err


def test_another_tools_model_is_neither_exported_nor_trained(tmp_path, capsys):
    package = build_package(tmp_path)
    model = load_model(package)
    image, _, scribbles = load_nuclei()
    with pytest.raises(AnnotationError, match="predicts with it but cannot train it"):
        Trainer(image, scribbles, TrainConfig(device="cpu"), init=model)
    assert main(["export", str(package), "--out", str(tmp_path / "again.zip")]) == 2
    assert "share that package itself" in capsys.readouterr().err
    with pytest.raises(OutputError, match="use the package itself"):
        save_model(model, tmp_path / "model.pt")
    assert not (tmp_path / "model.pt").exists() and not list(tmp_path.glob(".*.part"))


def test_export_refuses_to_write_over_its_inputs(exported, capsys):
    assert main(["export", str(exported["model"]), "--out", str(exported["model"])]) == 2
    assert "is the model file" in capsys.readouterr().err
    assert load_model(exported["model"]).iteration == 3  # untouched
