"""The napari manifest is valid, every command it names imports, and the headless part of the
package never loads Qt or napari."""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
from npe2 import PluginManifest

import napari_seg3d

MANIFEST = Path(napari_seg3d.__file__).parent / "napari.yaml"


@pytest.fixture(scope="module")
def manifest() -> PluginManifest:
    return PluginManifest.from_file(MANIFEST)  # parsing validates the schema


def test_manifest_is_valid(manifest):
    manifest.validate_imports()
    assert manifest.name == "napari-seg3d"
    assert manifest.display_name == "napari-seg3d"
    widgets = {w.display_name for w in manifest.contributions.widgets}
    assert widgets == {"Train", "Predict", "Batch predict"}
    assert [s.key for s in manifest.contributions.sample_data] == ["nuclei3d"]


def test_npe2_cli_validates():
    cli = Path(sys.executable).with_name("npe2")
    result = subprocess.run([str(cli), "validate", str(MANIFEST)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_python_name_imports_and_is_callable(manifest):
    for command in manifest.contributions.commands:
        module_name, _, attr = command.python_name.partition(":")
        target = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
        assert callable(target), command.python_name


def test_headless_imports_load_no_gui():
    code = (
        "import sys, napari_seg3d, napari_seg3d.engine, napari_seg3d.cli, napari_seg3d._reader,"
        " napari_seg3d._writer, napari_seg3d._sample_data\n"
        "gui = ('qtpy', 'napari', 'magicgui', 'PyQt6', 'PyQt5', 'PySide2', 'PySide6')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in gui))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
