"""docs/python.md runs as written: its ``python`` code blocks, in order and in one namespace, in a
folder holding the files of ``napari-seg3d demo --write-sample sample`` (tiny settings, CPU)."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import numpy as np

from napari_seg3d._sample_data import write_sample
from napari_seg3d.engine import load_model, read_volume

PAGE = Path(__file__).resolve().parents[1] / "docs" / "python.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def test_the_python_page_runs_as_written(tmp_path, monkeypatch, one_thread):
    blocks = python_blocks(PAGE.read_text())
    assert len(blocks) == 2 and "train(" in blocks[0] and "predict_files(" in blocks[1]
    write_sample(tmp_path / "sample")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        for block in blocks:
            exec(compile(block, str(PAGE), "exec"), namespace)
    out = printed.getvalue()
    assert "iteration 4: loss" in out and "label values: [1 2]" in out
    assert "done sample/image.tif -> results/image_labels.h5" in out
    model = load_model(tmp_path / "model.pt")
    image = read_volume(tmp_path / "sample" / "image.tif").data
    labels = read_volume(tmp_path / "labels.tif").data
    np.testing.assert_array_equal(labels, model.predict(image, device="cpu"))
    np.testing.assert_array_equal(read_volume(tmp_path / "results" / "image_labels.h5").data,
                                  labels)
