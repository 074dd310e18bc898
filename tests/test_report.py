"""The training report's panels: at most REPORT_EDGE voxels a side around each slice's strokes,
so that the report of a large volume predicts crops, not whole slabs (a 464^3 volume's three
slabs took three minutes after a 3-minute training)."""

from __future__ import annotations

import numpy as np
import torch

from napari_seg3d._report import REPORT_EDGE, report_box, training_report
from napari_seg3d.engine import (
    SegmentationModel,
    TrainConfig,
    build_model,
    default_model_config,
)
from napari_seg3d.engine.normalization import Normalization

PATCH = (8, 16, 16)


def test_the_box_is_centred_on_the_strokes_and_inside_the_slice():
    strokes = np.zeros((600, 500), np.uint8)
    strokes[100:120, 450:460] = 1
    assert report_box(strokes) == (slice(14, 206), slice(308, 500))  # clipped at two sides
    strokes[:] = 0
    strokes[300, 200] = 2
    assert report_box(strokes) == (slice(204, 396), slice(104, 296))  # centred on the stroke
    assert report_box(np.zeros((600, 500), np.uint8)) == (slice(204, 396), slice(154, 346))
    assert report_box(np.ones((40, 30), np.uint8)) == (slice(0, 40), slice(0, 30))  # all of it


def test_a_large_slice_is_shown_and_predicted_as_a_crop(one_thread):
    config = default_model_config(1, 2, PATCH, base_filters=4, levels=2)
    torch.manual_seed(0)
    model = SegmentationModel(network=build_model(config.architecture, **config.kwargs).eval(),
                              model_config=config,
                              train_config=TrainConfig(patch_size=PATCH, device="cpu"),
                              class_values=(1, 2), normalization=Normalization((0.0,), (1.0,)))
    image = np.random.default_rng(0).random((12, 300, 40), dtype=np.float32)
    labels = np.zeros(image.shape, np.uint8)
    labels[6, 280:290, 5:9], labels[6, 250, 30] = 1, 2
    fig = training_report(model, image, labels, device="cpu")
    panels = [ax for ax in fig.axes if ax.get_title().startswith(("image", "strokes", "predic"))]
    assert [ax.get_title() for ax in panels] == [
        f"{name}, z = 6, y 108-300, x 0-40" for name in ("image", "strokes", "prediction")]
    for ax in panels:  # every panel shows the crop of the slice, the prediction included
        assert ax.get_images()[0].get_array().shape == (REPORT_EDGE, 40)
