"""The public API for scripts: ``napari_seg3d.engine`` exports what a script needs and no
internals, its docstring examples run, and the front ends use it instead of private modules."""

from __future__ import annotations

import ast
import doctest
import importlib
from pathlib import Path

import pytest

import napari_seg3d.engine as engine

SRC = Path(engine.__file__).resolve().parents[2]
SCRIPT_NEEDS = {"read_volume", "write_volume", "TrainConfig", "Trainer", "train", "run_to_end",
                "PredictConfig", "predict_volume", "predict_files", "iter_predict_files",
                "save_model", "load_model", "describe", "propose_patch_size",
                "default_model_config", "default_batch_size", "TrainProgress", "TrainResult",
                "RegionDone", "FileResult", "TensorBoardLogger", "DEVICES"}
INTERNALS = {"PatchSampler": "napari_seg3d.engine.training.sampling",
             "SliceSampler": "napari_seg3d.engine.training.sampling",
             "anisotropic_pooling": "napari_seg3d.engine.models"}


def test_the_engine_exports_what_a_script_needs_and_no_internals():
    assert SCRIPT_NEEDS <= set(engine.__all__)
    assert all(hasattr(engine, name) for name in engine.__all__)
    for name, module in INTERNALS.items():
        assert name not in engine.__all__
        assert hasattr(importlib.import_module(module), name)  # still there for the engine


@pytest.mark.parametrize("module", ["napari_seg3d.engine.generators", "napari_seg3d.engine.config",
                                    "napari_seg3d.engine.prediction.sliding_window",
                                    "napari_seg3d.engine.api"])
def test_the_docstring_examples_run(module, one_thread):
    failed, tried = doctest.testmod(importlib.import_module(module), verbose=False)
    assert failed == 0 and tried > 0


def _imports(path: Path) -> list[str]:
    """The engine modules and names a front-end file imports (absolute names)."""
    package = ".".join(path.relative_to(SRC).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            module = (base + "." if node.level else "") + (node.module or "")
            if ".engine" in module:
                found += [module] + [f"{module}.{a.name}" for a in node.names]
    return found


def test_the_front_ends_import_no_private_engine_name():
    front_ends = [SRC / "napari_seg3d" / "cli.py", SRC / "napari_seg3d" / "_cli_parser.py",
                  *(SRC / "napari_seg3d" / "_widgets").glob("*.py")]
    private = [(p.name, name) for p in front_ends for name in _imports(p)
               if any(part.startswith("_") for part in name.split(".")[1:])]
    assert not private, private
