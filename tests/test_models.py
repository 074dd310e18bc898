"""Tests of the U-Net and the architecture registry: tiny models, odd shapes, CPU."""

from __future__ import annotations

import pytest
import torch

from napari_seg3d.engine.models import MODELS, SliceNetwork, UNet, anisotropic_pooling, build_model


def _tiny(**kwargs) -> UNet:
    options = dict(base_filters=4, levels=3)
    options.update(kwargs)
    return UNet(**options)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize("spatial_dims, shape", [
    (3, (2, 1, 13, 34, 35)),
    (3, (2, 1, 8, 16, 16)),
    (2, (2, 1, 34, 35)),
    (2, (3, 1, 7, 9)),
])
@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("norm", ["instance", "group", "batch", "none"])
def test_output_shape_matches_input(spatial_dims, shape, residual, norm):
    model = _tiny(spatial_dims=spatial_dims, out_channels=3, residual=residual, norm=norm)
    out = model(torch.randn(shape))
    assert out.shape == (shape[0], 3, *shape[2:])
    assert torch.isfinite(out).all()


def test_default_four_levels_odd_shape():
    model = UNet(base_filters=4, out_channels=2)
    assert model.divisor == (8, 8, 8)
    assert model(torch.randn(2, 1, 13, 34, 35)).shape == (2, 2, 13, 34, 35)


def test_anisotropic_pooling_network():
    model = _tiny(pooling=((1, 2, 2), (2, 2, 2)), in_channels=2)
    assert model.divisor == (2, 4, 4)
    assert model(torch.randn(2, 2, 5, 17, 18)).shape == (2, 2, 5, 17, 18)


def test_pooling_from_lists_as_in_a_saved_config():
    model = _tiny(pooling=[[1, 2, 2], [1, 2, 2]])
    assert model.pooling == ((1, 2, 2), (1, 2, 2))
    assert model.divisor == (1, 4, 4)


def test_single_level_has_no_pooling():
    model = _tiny(levels=1, spatial_dims=2)
    assert model.divisor == (1, 1)
    assert model(torch.randn(2, 1, 5, 6)).shape == (2, 2, 5, 6)


def test_filters_grow_and_are_capped():
    model = UNet(base_filters=100, growth=2.0, levels=4)
    assert model.filters == (100, 200, 320, 320)


def test_dropout_is_active_in_training_only():
    model = _tiny(dropout=0.5)
    assert any(isinstance(m, torch.nn.Dropout3d) for m in model.modules())
    x = torch.randn(2, 1, 6, 10, 11)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_gradient_reaches_every_parameter():
    model = _tiny(spatial_dims=3, residual=True)
    logits = model(torch.randn(2, 1, 9, 10, 11))
    loss = torch.nn.functional.cross_entropy(logits, torch.randint(0, 2, (2, 9, 10, 11)))
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_output_depends_on_input(spatial_dims):
    model = _tiny(spatial_dims=spatial_dims).eval()
    shape = (2, 1) + (12,) * spatial_dims
    with torch.no_grad():
        a = model(torch.randn(shape))
        b = model(torch.randn(shape))
    assert not torch.allclose(a, b)
    assert a.std() > 0


def test_channels_last_input():
    model = _tiny().eval()
    x = torch.randn(2, 1, 8, 12, 13)
    with torch.no_grad():
        expected = model(x)
        out = model.to(memory_format=torch.channels_last_3d)(
            x.to(memory_format=torch.channels_last_3d))
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_build_model_round_trip():
    kwargs = dict(spatial_dims=2, in_channels=2, out_channels=3, levels=2, base_filters=4,
                  growth=1.5, residual=False, norm="group", dropout=0.1, pooling=((2, 1),))
    model = build_model("unet", **kwargs)
    assert isinstance(model, SliceNetwork) and isinstance(model.net, UNet)
    rebuilt = build_model("unet", **kwargs)
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(2, 2, 5, 11, 9)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), rebuilt.eval()(x))
    assert "unet" in MODELS


def test_unknown_architecture_lists_valid_ones():
    with pytest.raises(ValueError, match=r"Unknown architecture 'resnet'; valid: unet"):
        build_model("resnet")


@pytest.mark.parametrize("kwargs, message", [
    (dict(norm="layer"), "valid: instance, group, batch, none"),
    (dict(spatial_dims=4), "spatial_dims must be 2 or 3"),
    (dict(levels=3, pooling=((2, 2, 2),)), "levels - 1 = 2"),
    (dict(levels=2, pooling=((3, 2, 2),)), "factors of 1 or 2"),
    (dict(levels=2, pooling=((2, 2),)), "3 factors"),
    (dict(dropout=1.0), "dropout"),
])
def test_invalid_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        UNet(**kwargs)


def test_wrong_input_shape_raises_clear_error():
    with pytest.raises(ValueError, match=r"\(B, C, Z, Y, X\)"):
        _tiny()(torch.randn(1, 8, 8, 8))


@pytest.mark.parametrize("voxel_size, levels, expected", [
    ((1, 1, 1), 4, ((2, 2, 2),) * 3),
    ((3, 1, 1), 3, ((1, 2, 2), (2, 2, 2))),
    ((5, 1, 1), 4, ((1, 2, 2), (1, 2, 2), (2, 2, 2))),
    ((0.5, 0.5), 3, ((2, 2), (2, 2))),
    ((2, 1, 1), 1, ()),
])
def test_anisotropic_pooling_known_answers(voxel_size, levels, expected):
    assert anisotropic_pooling(voxel_size, levels) == expected


def test_anisotropic_pooling_feeds_the_network():
    pooling = anisotropic_pooling((4.0, 1.0, 1.0), 3)
    model = _tiny(pooling=pooling)
    assert model.divisor == (1, 4, 4)
    assert model(torch.randn(2, 1, 3, 10, 10)).shape == (2, 2, 3, 10, 10)


def test_anisotropic_pooling_rejects_bad_voxel_size():
    with pytest.raises(ValueError, match="positive"):
        anisotropic_pooling((0, 1, 1), 3)
