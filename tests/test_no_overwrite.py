"""Nothing lost, even by a careless command: no command writes over one of its own inputs (links
included) or over another input's output, and output names of same-name inputs stay the same
from run to run. Through the real command line on real files, and the napari widgets."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_seg3d.cli import main
from napari_seg3d.engine import SegmentationModel, TrainConfig, default_model_config, save_model
from napari_seg3d.engine.errors import OutputError
from napari_seg3d.engine.io import read_volume, write_volume
from napari_seg3d.engine.io.no_overwrite import ReadFiles
from napari_seg3d.engine.models import build_model
from napari_seg3d.engine.normalization import Normalization
from napari_seg3d.engine.prediction.batch import expand_inputs, output_paths
from napari_seg3d.engine.prediction.output_names import MANIFEST

PATCH = (8, 16, 16)
SHAPE = (8, 16, 18)


def _model() -> SegmentationModel:
    config = default_model_config(1, 2, PATCH, base_filters=4, levels=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        network = build_model(config.architecture, **config.kwargs)
    return SegmentationModel(network=network, model_config=config,
                             train_config=TrainConfig(patch_size=PATCH, device="cpu"),
                             class_values=(1, 2), normalization=Normalization((0.0,), (1.0,)))


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    """A tiny untrained model file, saved once."""
    return save_model(_model(), tmp_path_factory.mktemp("model") / "m.pt")


@pytest.fixture
def model_bytes(model_path) -> bytes:
    return model_path.read_bytes()


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=SHAPE).astype(np.float32)


def _labels() -> np.ndarray:
    labels = np.zeros(SHAPE, np.uint8)
    labels[2, 2:6, 2:6], labels[5, 9:14, 9:14] = 1, 2
    return labels


def _digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


def _cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --- train ------------------------------------------------------------------------------------

@pytest.fixture
def train_files(tmp_path, model_bytes):
    """An image, its labels, a ground truth, a settings file, a model to start from, an HDF5 file
    with image and labels, a zarr image, and links to the labels."""
    write_volume(tmp_path / "img.tif", _image())
    write_volume(tmp_path / "lab.tif", _labels())
    write_volume(tmp_path / "truth.tif", _labels())
    (tmp_path / "cfg.yaml").write_text("iterations: 2\n")
    (tmp_path / "m.report.png").write_text("iterations: 2\n")  # a settings file, oddly named
    (tmp_path / "run.last.pt").write_bytes(model_bytes)
    write_volume(f"{tmp_path / 'vol.h5'}:/raw", _image())
    write_volume(f"{tmp_path / 'vol.h5'}:/labels", _labels())
    write_volume(tmp_path / "img.zarr", _image())
    os.link(tmp_path / "lab.tif", tmp_path / "hard.pt")
    os.symlink(tmp_path / "lab.tif", tmp_path / "soft.pt")
    return tmp_path


TRAIN_CASES = {  # the options that differ from --image img.tif --labels lab.tif, the message
    "--out the labels": (["--out", "lab.tif"],
                         "The model (--out lab.tif) would be written over the labels (--labels"),
    "--out the image": (["--out", "img.tif"], "would be written over the image (--image img.tif)"),
    "the last model over the labels": (["--out", "lab.tif", "--labels", "lab.last.tif"],
                                       "The last model (lab.last.tif, beside --out) would be"),
    "the report over the settings": (["--out", "m.pt", "--config", "m.report.png"],
                                     "report (m.report.png, beside --out) would be written over"),
    "--out the settings": (["--out", "cfg.yaml", "--config", "cfg.yaml"],
                           "would be written over the settings file (--config cfg.yaml)"),
    "--out the ground truth": (["--out", "truth.tif", "--truth", "truth.tif"],
                               "would be written over the ground truth (--truth truth.tif)"),
    "--out the --resume model": (["--out", "run.last.pt", "--resume", "run.last.pt"],
                                 "would be written over the model to resume"),
    "--out the --fine-tune model": (["--out", "run.last.pt", "--fine-tune", "run.last.pt"],
                                    "would be written over the model to fine-tune"),
    "--out an HDF5 input": (["--image", "vol.h5:/raw", "--labels", "vol.h5:/labels", "--out",
                             "vol.h5"], "would be written over the image (--image vol.h5:/raw)"),
    "a hard link of the labels": (["--out", "hard.pt"],
                                  "(--labels lab.tif) (the same file, through a hard link)"),
    "a symbolic link to the labels": (["--out", "soft.pt"],
                                      "(the same file, through a symbolic link)"),
    "--tensorboard the labels": (["--out", "m.pt", "--tensorboard", "lab.tif"],
                                 "TensorBoard log (--tensorboard lab.tif) would be written over"),
    "--tensorboard inside a zarr input": (["--image", "img.zarr", "--out", "m.pt", "--tensorboard",
                                           "img.zarr/logs"], "would be written inside the image"),
}


@pytest.mark.parametrize("case", TRAIN_CASES)
def test_train_refuses_to_write_over_an_input_before_training(train_files, capsys, monkeypatch,
                                                              case):
    monkeypatch.chdir(train_files)
    extra, message = TRAIN_CASES[case]
    args = {"--image": "img.tif", "--labels": "lab.tif"}
    rest = []
    for flag, value in zip(extra[::2], extra[1::2]):
        if flag in args:
            args[flag] = value
        else:
            rest += [flag, value]
    before = _digests(train_files)
    code, out, err = _cli(capsys, "train", *[x for kv in args.items() for x in kv], *rest,
                          "--iterations", "100000", "--quiet", "--device", "cpu")
    assert code == 2 and out == ""
    assert err.startswith("napari-seg3d train: error: ") and len(err.strip().splitlines()) == 1
    assert message in err and err.rstrip().endswith("nothing was written."), err
    assert _digests(train_files) == before  # nothing changed, nothing new (no .last, no report)
    assert not (train_files / "img.zarr" / "logs").exists()


def test_resuming_a_run_replaces_its_last_state_with_the_continued_one(tmp_path, capsys):
    """``--resume m.last.pt --out m.pt``, the way to continue a run: the continued end state
    replaces the one it resumed (the run goes on, nothing else is written over)."""
    from napari_seg3d.engine import load_model

    write_volume(tmp_path / "img.tif", _image())
    write_volume(tmp_path / "lab.tif", _labels())
    common = ["--image", str(tmp_path / "img.tif"), "--labels", str(tmp_path / "lab.tif"),
              "--out", str(tmp_path / "m.pt"), "--quiet", "--device", "cpu", "--no-report",
              "--patch-size", "8", "16", "16", "--base-filters", "4", "--levels", "2"]
    assert _cli(capsys, "train", *common, "--iterations", "2")[0] == 0
    assert load_model(tmp_path / "m.last.pt").iteration == 2
    code, _, err = _cli(capsys, "train", *common, "--iterations", "2", "--resume",
                        str(tmp_path / "m.last.pt"))
    assert code == 0, err
    assert load_model(tmp_path / "m.last.pt").iteration == 4


def test_tensorboard_may_hold_the_inputs_but_not_be_inside_one(tmp_path):
    """A log folder only gets new files: one that holds the inputs (``--tensorboard .``) is fine."""
    write_volume(tmp_path / "img.zarr", _image())
    read = ReadFiles({"the image": tmp_path / "img.tif", "the store": tmp_path / "img.zarr"})
    assert read.hit(tmp_path, replaced_whole=False) is None
    assert read.hit(tmp_path / "runs", replaced_whole=False) is None
    assert "replace the folder that holds" in read.hit(tmp_path)  # a store replaced whole
    assert "inside the store" in read.hit(tmp_path / "img.zarr" / "runs", replaced_whole=False)


# --- predict ----------------------------------------------------------------------------------

@pytest.fixture
def folder(tmp_path, model_bytes):
    """``h/x.tif``, ``h/x_labels.tif`` (annotations the user keeps beside it) and the model."""
    write_volume(tmp_path / "h" / "x.tif", _image())
    write_volume(tmp_path / "h" / "x_labels.tif", _labels())
    (tmp_path / "m.pt").write_bytes(model_bytes)
    return tmp_path


def _predict(capsys, tmp, *argv) -> tuple[int, str, str]:
    return _cli(capsys, "predict", "--model", tmp / "m.pt", "--quiet", "--device", "cpu", *argv)


def _refused(capsys, tmp, *argv) -> str:
    before = _digests(tmp)
    code, out, err = _predict(capsys, tmp, *argv)
    assert code == 2 and out == "", err
    assert err.startswith("napari-seg3d predict: error: ") and len(err.strip().splitlines()) == 1
    assert err.rstrip().endswith("choose another output folder; nothing was written."), err
    assert _digests(tmp) == before
    return err


def test_the_output_of_one_input_never_replaces_another_input(folder, capsys):
    h = folder / "h"
    err = _refused(capsys, folder, "--out", h, "--overwrite", h / "x.tif", h / "x_labels.tif")
    assert f"The output x_labels.tif of {h / 'x.tif'} would be written over the input " \
           f"{h / 'x_labels.tif'}" in err
    assert not (h / "x_labels_labels.tif").exists()
    _refused(capsys, folder, "--out", h, h)  # the folder holds the user's x_labels.tif


@pytest.mark.parametrize("link", ["hard", "symbolic", "folder"])
def test_links_to_an_input_count_as_that_input(folder, capsys, link):
    h, data = folder / "h", folder / "data"
    data.mkdir()
    out = h
    if link == "hard":  # the input data/ann.tif is h/x_labels.tif under another name
        os.link(h / "x_labels.tif", data / "ann.tif")
        inputs = [h / "x.tif", data / "ann.tif"]
    elif link == "symbolic":  # h/x_labels.tif points to the input data/ann.tif
        (h / "x_labels.tif").rename(data / "ann.tif")
        os.symlink(data / "ann.tif", h / "x_labels.tif")
        inputs = [h / "x.tif", data / "ann.tif"]
    else:  # the output folder is a link to the input folder
        out = folder / "results"
        os.symlink(h, out)
        inputs = [h / "x.tif", h / "x_labels.tif"]
    err = _refused(capsys, folder, "--out", out, "--overwrite", *inputs)
    assert "through a" in err or link == "folder"


@pytest.mark.parametrize(("fmt", "inputs", "extra", "message"), [
    ("h5", ["h/x.h5:/raw", "h/x_raw_labels.h5:/raw"], [], "over the input h/x_raw_labels.h5:/raw"),
    ("zarr", ["h/x.tif", "h/x_labels.zarr"], [], "over the input h/x_labels.zarr"),
    ("tif", ["h/x.tif", "h/x_probabilities.tif"], ["--probabilities"],
     "The output x_probabilities.tif of h/x.tif would be written over the input"),
    ("npy", ["h/x.tif"], ["--model", "h/x_labels.npy"], "over the model file h/x_labels.npy"),
])
def test_hdf5_zarr_companion_and_model_outputs(folder, capsys, monkeypatch, model_bytes, fmt,
                                               inputs, extra, message):
    monkeypatch.chdir(folder)
    write_volume("h/x.h5:/raw", _image())
    write_volume("h/x_raw_labels.h5:/raw", _image(1))
    write_volume("h/x_labels.zarr", _image(2))
    write_volume("h/x_probabilities.tif", _image(3))
    Path("h/x_labels.npy").write_bytes(model_bytes)  # a model file, named as an output
    err = _refused(capsys, folder, "--out", "h", "--format", fmt, "--overwrite", *extra, *inputs)
    assert message in err


def test_a_rerun_into_the_input_folder_never_predicts_the_outputs(folder, capsys):
    h = folder / "r"
    h.mkdir()
    shutil.copy(folder / "h" / "x.tif", h / "x.tif")
    code, out, _ = _predict(capsys, folder, "--out", h, "--probabilities", h)
    assert code == 0 and out.split() == ["done", str(h / "x.tif"), "->", str(h / "x_labels.tif")]
    assert expand_inputs([h]) == [str(h / "x.tif")]
    written = _digests(h)
    code, out, _ = _predict(capsys, folder, "--out", h, "--probabilities", h)
    assert code == 0 and out.split()[0] == "skipped" and len(out.splitlines()) == 1
    code, out, _ = _predict(capsys, folder, "--out", h, "--overwrite", h)
    assert code == 0 and out.split()[0] == "done" and len(out.splitlines()) == 1
    assert sorted(p.name for p in h.iterdir()) == [MANIFEST, "x.tif", "x_labels.tif",
                                                   "x_probabilities.tif"]
    assert _digests(h)["x_probabilities.tif"] == written["x_probabilities.tif"]
    # an output the user edited is theirs: an input of the folder, so never written over
    write_volume(h / "x_labels.tif", _labels())
    assert expand_inputs([h]) == [str(h / "x.tif"), str(h / "x_labels.tif")]
    _refused(capsys, folder, "--out", h, "--overwrite", h)


def test_same_name_inputs_keep_their_output_names_across_runs_and_subsets(folder, capsys):
    a, b = folder / "a" / "x.tif", folder / "b" / "x.tif"
    write_volume(a, _image(1))
    write_volume(b, _image(2))
    out = folder / "out"

    def run(*argv) -> list[tuple[str, str]]:
        code, printed, _ = _predict(capsys, folder, "--out", out, *argv)
        assert code == 0
        return [(line.split()[0], Path(line.split()[-1]).name) for line in printed.splitlines()]

    assert run(a, b) == [("done", "x_labels_a.tif"), ("done", "x_labels_b.tif")]
    assert run(b, a) == [("skipped", "x_labels_b.tif"), ("skipped", "x_labels_a.tif")]
    assert run(b) == [("skipped", "x_labels_b.tif")]
    kept = _digests(out)["x_labels_a.tif"]
    assert run("--overwrite", b) == [("done", "x_labels_b.tif")]
    assert _digests(out)["x_labels_a.tif"] == kept  # b's rerun never touches a's result
    np.testing.assert_array_equal(read_volume(out / "x_labels_b.tif").data,
                                  _model().predict(_image(2), device="cpu"))

    out = folder / "out2"  # alone first: the plain name, kept when the other joins
    assert run(b) == [("done", "x_labels.tif")]
    assert run(a, b) == [("done", "x_labels_a.tif"), ("skipped", "x_labels.tif")]
    assert run("--overwrite", a) == [("done", "x_labels_a.tif")]
    np.testing.assert_array_equal(read_volume(out / "x_labels.tif").data,
                                  _model().predict(_image(2), device="cpu"))


def test_an_input_named_twice_is_predicted_once(folder, capsys):
    h = folder / "h"
    (h / "x_labels.tif").unlink()
    code, out, _ = _predict(capsys, folder, "--out", folder / "out", h, h / "x.tif",
                            folder / "h" / ".." / "h" / "x.tif")
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith("done") and len(lines) == 3
    assert all(f"named twice: the same file as {h / 'x.tif'}" in line for line in lines[1:])


def test_a_damaged_record_loses_only_the_record(folder, capsys):
    out = folder / "out"
    out.mkdir()
    (out / MANIFEST).write_text("{not json")
    code, printed, _ = _predict(capsys, folder, "--out", out, folder / "h" / "x.tif")
    assert code == 0 and printed.startswith("done")
    assert expand_inputs([out]) == []  # the record is whole again


def test_output_names_depend_on_the_input_not_on_the_run(tmp_path):
    specs = [str(tmp_path / d / "x.tif") for d in ("p/a", "q/a", "b")]
    names = [p.name for p in output_paths(tmp_path / "out", specs, "tif")]
    assert names == ["x_labels_p_a.tif", "x_labels_q_a.tif", "x_labels_b.tif"]
    assert [p.name for p in output_paths(tmp_path / "out", specs[::-1], "tif")] == names[::-1]
    assert output_paths(tmp_path / "out", specs[:1], "tif")[0].name == "x_labels.tif"
    with pytest.raises(OutputError, match="over the model file"):
        output_paths(tmp_path, [tmp_path / "x.tif"], "tif", model_file=tmp_path / "x_labels.tif")


# --- the property ------------------------------------------------------------------------------

STEMS = ["x", "x_labels", "x_probabilities", "x_labels_a"]  # inputs named as outputs, often
FOLDERS = ["a", "b"]

tree = st.lists(st.tuples(st.sampled_from(FOLDERS), st.sampled_from(STEMS),
                          st.sampled_from(["file", "hard", "symbolic"])),
                min_size=2, max_size=5, unique_by=lambda t: (t[0], t[1]))
invocation = st.fixed_dictionaries({
    "out": st.sampled_from([*FOLDERS, "out", "link-to-a"]),
    "by_folder": st.booleans(),
    "overwrite": st.booleans(),
    "probabilities": st.booleans(),
    "format": st.sampled_from(["tif", "npy", "h5"]),
    "model": st.sampled_from(["m.pt", "a/x_labels.npy"]),
})


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files=tree, runs=st.lists(invocation, min_size=1, max_size=2))
def test_no_predict_invocation_changes_an_input(files, runs, model_path, capsys):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        made: list[Path] = []
        for i, (sub, stem, kind) in enumerate(files):
            path = root / sub / f"{stem}.tif"
            path.parent.mkdir(parents=True, exist_ok=True)
            if kind == "file" or not made:
                write_volume(path, _image(i))
            elif kind == "hard":
                os.link(made[-1], path)
            else:
                os.symlink(made[-1], path)
            made.append(path)
        for name in ("m.pt", "a/x_labels.npy"):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(model_path, root / name)
        os.symlink(root / "a", root / "link-to-a")
        for run in runs:
            inputs = sorted({str(root / p.relative_to(root).parts[0]) for p in made}) \
                if run["by_folder"] else [str(p) for p in made]
            guarded = {Path(p).resolve() for p in expand_inputs(inputs)} | {root / run["model"]}
            before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in guarded}
            argv = ["predict", *inputs, "--model", str(root / run["model"]), "--out",
                    str(root / run["out"]), "--format", run["format"], "--quiet", "--device",
                    "cpu", *(["--overwrite"] if run["overwrite"] else []),
                    *(["--probabilities"] if run["probabilities"] else [])]
            code = main(argv)
            err = capsys.readouterr().err
            assert code in (0, 2, 3), err
            assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in guarded} == before


def test_a_zip_named_npy_in_an_input_folder_fails_alone(folder, capsys):
    """A model file (a zip) named ``.npy`` among the inputs is one failed file, not a crash."""
    h = folder / "h"
    (h / "x_labels.tif").unlink()
    shutil.copy(folder / "m.pt", h / "x_labels.npy")
    code, out, err = _predict(capsys, folder, "--out", folder / "out", h)
    assert code == 3 and out.splitlines()[0].startswith("done"), err
    assert "it is a zip archive, not a .npy array" in out.splitlines()[1]
