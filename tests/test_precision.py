"""Mixed precision: which dtype each device computes in, and what it changes in a prediction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from napari_seg3d.engine import precision
from napari_seg3d.engine.prediction.sliding_window import predict_volume


def test_cuda_computes_in_float16_and_other_devices_in_float32():
    assert precision.mixed_dtype("cuda") is torch.float16
    assert precision.mixed_dtype("mps") is None
    assert precision.describe("cuda") == "float16"
    assert precision.describe("cuda", enabled=False) == "float32"
    assert precision.describe("mps") == "float32"


def test_the_cpu_uses_bfloat16_exactly_when_it_has_native_units():
    native = bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    assert precision.cpu_has_fast_bfloat16() is native
    assert precision.mixed_dtype("cpu") is (torch.bfloat16 if native else None)
    with precision.autocast("cpu"):
        y = nn.Linear(4, 4)(torch.ones(2, 4))
    assert y.dtype is (torch.bfloat16 if native else torch.float32)
    with precision.autocast("cpu", enabled=False):
        assert nn.Linear(4, 4)(torch.ones(2, 4)).dtype is torch.float32


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv3d(8, 2, 3, padding=1))


def test_prediction_without_amp_is_float32_and_with_amp_stays_close():
    net = _net()
    volume = np.random.default_rng(0).normal(size=(12, 14, 16)).astype(np.float32)
    kwargs = dict(patch_size=(8, 8, 8), batch_size=2, probabilities=True)
    full = predict_volume(net, volume, amp=False, **kwargs)
    mixed = predict_volume(net, volume, **kwargs)
    with torch.no_grad():
        x = torch.from_numpy(volume)[None, None]
        reference = net(x).softmax(1)[0].numpy()
    # a window covering the volume gives the forward exactly in float32
    whole = predict_volume(net, volume, patch_size=volume.shape, probabilities=True, amp=False)
    np.testing.assert_allclose(whole, reference, rtol=1e-5, atol=1e-6)
    assert full.dtype == mixed.dtype == np.float32
    # bfloat16 keeps 8 bits of mantissa: probabilities agree to about 1e-2
    assert np.abs(full - mixed).max() < (0.05 if precision.cpu_has_fast_bfloat16() else 1e-6)


@pytest.mark.parametrize("amp", [True, False])
def test_training_computes_in_the_device_mixed_dtype_when_asked(amp):
    from conftest import drain

    from napari_seg3d.engine import TrainConfig, Trainer, default_model_config

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    image = rng.normal(size=(8, 16, 16)).astype(np.float32)
    image[:, :, 8:] += 3
    labels = np.zeros(image.shape, np.uint8)
    labels[:, 2:6, 2:4], labels[:, 2:6, 12:14] = 1, 2
    cfg = TrainConfig(patch_size=(8, 16, 16), batch_size=2, iterations=4, validate_every=2,
                      amp=amp, device="cpu", self_training=0)
    trainer = Trainer(image, labels, cfg, model_config=default_model_config(
        1, 2, cfg.patch_size, base_filters=4, levels=2))
    seen = []
    trainer.model.network.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    records, result = drain(trainer.run())
    expected = (precision.mixed_dtype("cpu") if amp else None) or torch.float32
    assert seen and set(seen) == {expected}  # training steps and validation alike
    assert all(np.isfinite(r.loss) for r in records)
    assert result.best.train_config.amp is amp


def test_no_amp_from_the_command_line(tmp_path, capsys, one_thread):
    """``train --no-amp`` saves a float32 model that predicts in float32; ``predict --no-amp``
    predicts a mixed-precision model in float32."""
    from conftest import ball_volume

    from napari_seg3d.cli import main
    from napari_seg3d.engine import load_model
    from napari_seg3d.engine.io import read_volume, write_volume

    image, balls = ball_volume((12, 20, 20))
    labels = np.zeros(image.shape, np.uint8)
    labels[:, 2:4, 2:4], labels[balls & (np.arange(20) % 4 == 0)] = 1, 2
    write_volume(tmp_path / "image.tif", image)
    write_volume(tmp_path / "labels.tif", labels)
    tiny = ["--patch-size", "8", "16", "16", "--base-filters", "4", "--levels", "2", "--quiet",
            "--device", "cpu", "--iterations", "2", "--no-report"]
    common = ["train", "--image", str(tmp_path / "image.tif"), "--labels",
              str(tmp_path / "labels.tif"), *tiny]
    assert main([*common, "--out", str(tmp_path / "mixed.pt")]) == 0
    assert main([*common, "--out", str(tmp_path / "full.pt"), "--no-amp"]) == 0
    mixed, full = load_model(tmp_path / "mixed.pt"), load_model(tmp_path / "full.pt")
    assert mixed.train_config.amp is True and full.train_config.amp is False
    capsys.readouterr()
    assert main(["info", str(tmp_path / "full.pt")]) == 0
    assert '"amp": false' in capsys.readouterr().out

    def predicted(model_file, *options):
        out = tmp_path / f"out-{model_file}-{len(options)}"
        assert main(["predict", str(tmp_path / "image.tif"), "--model", str(tmp_path / model_file),
                     "--out", str(out), "--probabilities", "--format", "npy", "--quiet",
                     "--device", "cpu", *options]) == 0
        return read_volume(out / "image_probabilities.npy").data

    image_f = image.astype(np.float32)
    np.testing.assert_array_equal(predicted("full.pt"),
                                  full.predict(image_f, probabilities=True, amp=False))
    np.testing.assert_array_equal(predicted("mixed.pt", "--no-amp"),
                                  mixed.predict(image_f, probabilities=True, amp=False))
    np.testing.assert_array_equal(predicted("mixed.pt"),
                                  mixed.predict(image_f, probabilities=True, amp=True))
    # on a CPU with native bfloat16 the two precisions really differ
    differ = not np.array_equal(predicted("mixed.pt"), predicted("mixed.pt", "--no-amp"))
    assert differ is precision.cpu_has_fast_bfloat16()
