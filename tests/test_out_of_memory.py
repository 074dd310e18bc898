"""CUDA out of memory, simulated on the CPU by a network that raises torch.cuda.OutOfMemoryError
for batches above a size: prediction retries with fewer windows, training splits the batch, and
both say so; when nothing is left to give, a clear error."""

import numpy as np
import pytest
import torch
from conftest import drain
from torch import nn

from napari_seg3d.engine import Seg3DError, TrainConfig, Trainer
from napari_seg3d.engine.models import build_model
from napari_seg3d.engine.prediction.sliding_window import predict_volume


class Tight(nn.Module):
    """``net``, but "out of GPU memory" for more than ``max_batch`` inputs at a time."""

    def __init__(self, net: nn.Module, max_batch: int) -> None:
        super().__init__()
        self.net, self.max_batch, self.refused = net, max_batch, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > self.max_batch:
            self.refused += 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.net(x)


def _net():
    torch.manual_seed(0)
    return build_model("unet", spatial_dims=3, in_channels=1, out_channels=2, levels=2,
                       base_filters=4)


def test_prediction_retries_with_fewer_windows_and_says_so():
    volume = np.random.default_rng(0).random((1, 12, 20, 20), dtype=np.float32)
    expected = predict_volume(_net(), volume, patch_size=(8, 8, 8), batch_size=2,
                              probabilities=True, device="cpu")
    tight = Tight(_net(), max_batch=2)
    with pytest.warns(RuntimeWarning) as record:
        out = predict_volume(tight, volume, patch_size=(8, 8, 8), batch_size=8,
                             probabilities=True, device="cpu")
    assert [str(w.message) for w in record] == [
        "Out of GPU memory predicting 8 windows at a time: retrying with 4.",
        "Out of GPU memory predicting 4 windows at a time: retrying with 2."]
    assert tight.refused == 2  # once at 8, once at 4; then 2 for the rest of the volume
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_prediction_gives_a_clear_error_when_one_window_does_not_fit():
    volume = np.zeros((1, 8, 8, 8), np.float32)
    with pytest.warns(RuntimeWarning), pytest.raises(Seg3DError, match="even with one window"):
        predict_volume(Tight(_net(), max_batch=0), volume, patch_size=(8, 8, 8), batch_size=2,
                       device="cpu")


def _trainer(blobs, batch_size: int, max_batch: int) -> Trainer:
    image, _, labels = blobs
    cfg = TrainConfig(patch_size=(8, 16, 16), batch_size=batch_size, iterations=3, device="cpu",
                      self_training=0)
    trainer = Trainer(image, labels, cfg)
    trainer.model.network = Tight(trainer.model.network, max_batch)
    return trainer


def _run(trainer):
    return drain(trainer.run())


def test_training_splits_the_batch_and_says_so(blobs):
    trainer = _trainer(blobs, batch_size=4, max_batch=1)
    with pytest.warns(RuntimeWarning) as record:
        records, result = _run(trainer)
    assert [str(w.message) for w in record] == [
        "Out of GPU memory with 4 patches at a time: training on 2 parts of the batch.",
        "Out of GPU memory with 2 patches at a time: training on 4 parts of the batch."]
    assert trainer.micro_batches == 4  # 4 -> 2 -> 1 patch at a time, kept for later steps
    assert [r.iteration for r in records] == [1, 2, 3]
    assert all(np.isfinite(r.loss) and r.loss > 0 for r in records)
    assert result.last.iteration == 3


def test_training_gives_a_clear_error_when_one_patch_does_not_fit(blobs):
    trainer = _trainer(blobs, batch_size=2, max_batch=0)
    with pytest.warns(RuntimeWarning), pytest.raises(Seg3DError, match="even with one patch"):
        _run(trainer)
