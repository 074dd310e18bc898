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


def test_ctrl_c_stops_the_demo_and_saves_what_it_has(tmp_path):
    """A real ``napari-seg3d demo`` process (on the test's X display) with a run far too long to
    wait for: Ctrl-C once training is under way stops it within seconds, and the model, the
    prediction and a summary that says how far it got are still written."""
    import os
    import re
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "napari_seg3d.cli", "demo", "--headless", "--device", "cpu",
         "--iterations", "100000", "--out", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "COLUMNS": "120"})
    os.set_blocking(proc.stderr.fileno(), False)
    err, t0 = b"", time.monotonic()
    while not re.search(rb"\| *[1-9]\d*/100000", err):
        assert proc.poll() is None and time.monotonic() - t0 < 300, err.decode()[-2000:]
        err += proc.stderr.read() or b""
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, rest = proc.communicate(timeout=300)
    assert proc.returncode == 0, (err + rest).decode()[-2000:]
    text = out.decode()
    trained = int(re.search(r"Trained (\d+) of 100000 iterations", text).group(1))
    assert 0 < trained < 100000 and "(stopped)" in text and "mean" in text
    for name in ("nuclei-model.pt", "nuclei_prediction.tif", "training.png", "prediction.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert load_model(tmp_path / "nuclei-model.pt").iteration <= trained
    assert b"wrapped C/C++ object" not in err + rest
