"""U-Net++ and the residual-encoder U-Net: shapes, anisotropic pooling, model file, training,
and the choice in the command line and the Train widget."""

import numpy as np
import pytest
import torch
from conftest import run_to_end

from napari_seg3d.engine import TrainConfig, Trainer, default_model_config, load_model, save_model
from napari_seg3d.engine.models import MODELS, ResEncUNet, UNetPlusPlus, build_model

ARCHITECTURES = ["unet", "unetpp", "resenc_unet"]


pytestmark = pytest.mark.usefixtures("one_thread")  # the workers' thread count too


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("levels, pooling", [(1, []), (3, [[1, 2, 2], [2, 2, 2]])])
def test_logits_keep_the_input_size(architecture, levels, pooling):
    net = build_model(architecture, spatial_dims=3, in_channels=2, out_channels=3, levels=levels,
                      base_filters=4, pooling=pooling)
    assert net(torch.randn(2, 2, 9, 17, 18)).shape == (2, 3, 9, 17, 18)


def test_unetpp_has_a_node_for_every_nested_skip():
    net = UNetPlusPlus(spatial_dims=2, in_channels=1, out_channels=2, levels=4, base_filters=4)
    assert sorted(net.nodes) == sorted(f"{i}_{j}" for j in range(1, 4) for i in range(4 - j))
    assert not hasattr(net, "decoder")
    assert net(torch.randn(2, 1, 20, 21)).shape == (2, 2, 20, 21)


def test_resenc_unet_deepens_the_encoder():
    net = ResEncUNet(spatial_dims=3, levels=3, base_filters=4, pooling=[[2, 2, 2]] * 2)
    assert [len(stage) for stage in net.encoder] == [1, 2, 3]
    with pytest.raises(ValueError, match="at least 1 block for each of the 3 levels"):
        ResEncUNet(levels=3, blocks=[1, 2])


def test_registry_lists_the_three():
    assert set(ARCHITECTURES) <= set(MODELS)
    with pytest.raises(ValueError, match="Unknown architecture 'vnet'.*unetpp"):
        default_model_config(1, 2, (8, 16, 16), architecture="vnet")


@pytest.mark.parametrize("architecture", ["unetpp", "resenc_unet"])
def test_trains_saves_and_rebuilds_from_the_model_file(blobs, tmp_path, architecture):
    image, _, labels = blobs
    mc = default_model_config(1, 2, (8, 16, 16), voxel_size=(2.0, 1.0, 1.0), base_filters=4,
                              architecture=architecture)
    assert mc.architecture == architecture and mc.kwargs["pooling"][0] == [1, 2, 2]
    cfg = TrainConfig(patch_size=(8, 16, 16), iterations=4, device="cpu", self_training=0)
    result = run_to_end(Trainer(image, labels, cfg, model_config=mc,
                                voxel_size=(2.0, 1.0, 1.0)).run())
    path = save_model(result.last, tmp_path / "m.pt")
    loaded = load_model(path)
    assert type(loaded.network) is MODELS[architecture]
    np.testing.assert_array_equal(loaded.predict(image, device="cpu"),
                                  result.last.predict(image, device="cpu"))


@pytest.mark.parametrize("architecture", ["unetpp", "resenc_unet"])
def test_command_line_and_config_file_choose_it(tmp_path, blobs, architecture):
    from napari_seg3d.cli import main
    from napari_seg3d.engine.io import write_volume

    image, _, labels = blobs
    write_volume(tmp_path / "image.tif", image)
    write_volume(tmp_path / "labels.tif", labels)
    config = tmp_path / "run.yaml"
    config.write_text(f"architecture: {architecture}\nbase_filters: 4\nlevels: 2\n")
    argv = ["train", "--image", str(tmp_path / "image.tif"), "--labels", str(tmp_path / "labels.tif"),
            "--out", str(tmp_path / "m.pt"), "--iterations", "2", "--patch-size", "8", "16", "16",
            "--config", str(config), "--quiet", "--device", "cpu", "--no-report"]
    assert main(argv) == 0
    assert load_model(tmp_path / "m.pt").model_config.architecture == architecture
    argv[argv.index("--config"):argv.index("--config") + 2] = ["--architecture", "unet",
                                                               "--base-filters", "4"]
    assert main(argv) == 0
    assert load_model(tmp_path / "m.pt").model_config.architecture == "unet"
