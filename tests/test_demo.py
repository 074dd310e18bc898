"""The README's main command: the scripted demo in a real napari window (Xvfb from pytest-xvfb)."""

import numpy as np
import tifffile

from napari_seg3d._demo import run_demo
from napari_seg3d._sample_data import load_nuclei
from napari_seg3d.engine import load_model


def test_scripted_demo_trains_predicts_and_reports_dice(tmp_path, capsys, qapp):
    code = run_demo(tmp_path, iterations=4, headless=True, device="cpu")
    out = capsys.readouterr().out
    assert code == 0
    assert "Dice against the ground truth: background" in out and "mean" in out
    for name in ("training.png", "prediction.png", "nuclei-model.pt", "nuclei_prediction.tif"):
        assert (tmp_path / name).stat().st_size > 0
    prediction = tifffile.imread(tmp_path / "nuclei_prediction.tif")
    _, truth, _ = load_nuclei()
    assert prediction.shape == truth.shape
    assert set(np.unique(prediction)) <= {1, 2}
    assert load_model(tmp_path / "nuclei-model.pt").class_names == ("background", "nucleus")
