"""2D networks on slices (2.5D, as volume-segmantics): the SliceNetwork's passes, the slice
sampler, and a 2D model trained on the nuclei sample, saved, loaded and applied along one axis,
three axes and three axes with rotations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import ball_volume, run_to_end

from napari_seg3d._sample_data import load_nuclei
from napari_seg3d.engine import (
    SliceNetwork,
    TrainConfig,
    Trainer,
    build_model,
    default_batch_size,
    default_model_config,
    load_model,
    propose_patch_size,
    save_model,
)
from napari_seg3d.engine.metrics import dice_scores
from napari_seg3d.engine.models.slices import along_axis
from napari_seg3d.engine.normalization import Normalization
from napari_seg3d.engine.training.sampling import SliceSampler, make_annotations, to_slice_frame


def _net(out_channels: int = 3) -> SliceNetwork:
    torch.manual_seed(0)
    return build_model("unet", spatial_dims=2, in_channels=2, out_channels=out_channels, levels=2,
                       base_filters=4).eval()


def _per_slice(net, x: torch.Tensor, axis: int, rotation: int = 0) -> torch.Tensor:
    """The reference: the 2D network slice by slice, in a Python loop."""
    out = []
    for i in range(x.shape[2 + axis]):
        plane = x.select(2 + axis, i)
        logits = net(torch.rot90(plane, rotation, (2, 3)))
        out.append(torch.rot90(logits, -rotation, (2, 3)))
    return torch.stack(out, 2 + axis)


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("rotation", [0, 1, 3])
def test_along_axis_is_the_2d_network_slice_by_slice(axis, rotation):
    net = _net()
    x = torch.randn(2, 2, 5, 8, 7)
    with torch.no_grad():
        torch.testing.assert_close(along_axis(net.net, x, axis, rotation),
                                   _per_slice(net.net, x, axis, rotation), rtol=1e-5, atol=1e-5)


def test_planes_average_the_probabilities_of_their_passes():
    net = _net()
    x = torch.randn(2, 2, 6, 8, 8)
    with torch.no_grad():
        probs = {(a, k): torch.softmax(_per_slice(net.net, x, a, k), 1)
                 for a in range(3) for k in range(4)}
        expected = {"fast": probs[0, 0],
                    "three": sum(probs[a, 0] for a in range(3)) / 3,
                    "best": sum(probs.values()) / 12}
        for planes, want in expected.items():
            net.planes = planes
            torch.testing.assert_close(torch.softmax(net(x), 1), want, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="Unknown planes 'all'"):
        net.planes = "all"


def test_one_sigmoid_channel_averages_sigmoids():
    net = _net(out_channels=1)
    net.planes = "three"
    x = torch.randn(2, 2, 6, 8, 8)
    with torch.no_grad():
        want = sum(torch.sigmoid(_per_slice(net.net, x, a)) for a in range(3)) / 3
        torch.testing.assert_close(torch.sigmoid(net(x)), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape, axis", [((2, 2, 1, 8, 9), 0), ((2, 2, 6, 1, 9), 1),
                                         ((2, 2, 6, 8, 1), 2)])
def test_a_stack_of_slices_goes_through_its_own_plane_only(shape, axis):
    """Training slices (and single-slice images) are one voxel thick: one pass in their plane,
    the logits unchanged, whatever the planes."""
    net = _net()
    net.planes = "best"
    x = torch.randn(*shape)
    with torch.no_grad():
        torch.testing.assert_close(net.train()(x), _per_slice(net.net, x, axis))


def test_the_wrapper_refuses_a_3d_network_and_bad_input():
    with pytest.raises(ValueError, match="wraps a 2D network"):
        SliceNetwork(build_model("unet", spatial_dims=3, levels=2, base_filters=4))
    with pytest.raises(ValueError, match=r"expects input of shape \(B, C, Z, Y, X\) with C=2"):
        _net()(torch.randn(2, 1, 4, 8, 8))


def test_slice_sampler_draws_annotated_slices_along_all_three_axes():
    image, balls = ball_volume((20, 24, 26))  # every slice fits: no padding
    labels = np.zeros(balls.shape, np.uint8)
    labels[7, 4:20, 6] = np.where(balls[7, 4:20, 6], 2, 1)
    labels[3:12, 16, 18] = np.where(balls[3:12, 16, 18], 2, 1)
    ann = make_annotations(labels, (1, 2), 0.0, 0)
    sampler = SliceSampler(image, ann, Normalization((0.0,), (1.0,)), (8, 16, 12),
                           has_channels=False, random_fraction=0.0)
    rng = np.random.default_rng(0)
    batch = sampler.sample(60, rng)
    assert batch.image.shape == (60, 1, 1, 16, 12) and batch.target.shape == (60, 1, 16, 12)
    assert batch.mask.reshape(60, -1).any(1).all()  # every slice holds strokes
    seen = set()
    for img in batch.image[:, 0, 0]:  # each slice is a plane of the volume along some axis
        for axis in range(3):
            moved = np.moveaxis(image, axis, 0)
            for i in range(moved.shape[0]):
                plane = moved[i]
                for y in range(plane.shape[0] - 15):
                    for x in range(plane.shape[1] - 11):
                        if np.array_equal(plane[y:y + 16, x:x + 12], img):
                            seen.add(axis)
    assert seen == {0, 1, 2}
    val = sampler.validation_patches(8, 0)
    assert val == []  # validation_fraction 0: nothing held out


def test_to_slice_frame_moves_the_thin_axis_first():
    image = np.arange(2 * 4 * 1 * 5).reshape(2, 4, 1, 5)
    target = image[0].copy()
    img, tgt, mask = to_slice_frame(image, target, target > 3, 1)
    assert img.shape == (2, 1, 4, 5) and tgt.shape == (1, 4, 5) and mask.shape == (1, 4, 5)
    np.testing.assert_array_equal(img[:, 0], image[:, :, 0])


def test_defaults_for_slices():
    assert propose_patch_size((31, 61, 57), dims=2) == (32, 32, 32)
    assert propose_patch_size((5, 400, 300), dims=2) == (8, 96, 96)
    assert default_batch_size(2) > default_batch_size(3) == 2
    mc = default_model_config(1, 2, (32, 32, 32), (4.0, 1.0, 1.0), dims=2)
    assert mc.kwargs["spatial_dims"] == 2 and mc.kwargs["levels"] == 4
    assert mc.kwargs["pooling"] == [[2, 2]] * 3  # planes are isotropic to a 2D network


@pytest.fixture(scope="module")
def nuclei_2d(tmp_path_factory):
    """A small 2D model trained 60 iterations on the nuclei sample's strokes, saved and loaded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    image, truth, strokes = load_nuclei()
    patch = propose_patch_size(image.shape, dims=2)
    cfg = TrainConfig(patch_size=patch, batch_size=8, iterations=60, self_training=0,
                      device="cpu", validate_every=30)
    mc = default_model_config(1, 2, patch, base_filters=8, levels=3, dims=2)
    result = run_to_end(Trainer(image, strokes, cfg, model_config=mc).run())
    path = save_model(result.best, tmp_path_factory.mktemp("slices") / "m2d.pt")
    torch.set_num_threads(threads)
    return load_model(path), image, truth


def test_a_2d_model_learns_the_nuclei_and_is_rebuilt_from_its_file(nuclei_2d, one_thread):
    model, image, truth = nuclei_2d
    assert model.dims == 2 and isinstance(model.network, SliceNetwork)
    assert model.train_config.planes == "three"
    dice = {}
    for planes in ("fast", "three", "best"):
        pred = model.predict(image, planes=planes, device="cpu", batch_size=2)
        dice[planes] = float(np.mean(dice_scores(pred, truth, (1, 2))))
    assert min(dice.values()) > 0.7, dice
    # the planes are a choice of each prediction: the shared network keeps those it was trained with
    assert model.network.planes == "three"


def test_a_2d_model_predicts_block_by_block_as_a_whole(nuclei_2d, one_thread):
    model, image, _ = nuclei_2d
    whole = model.predict(image, planes="fast", device="cpu", probabilities=True)
    blocked = model.predict(image, planes="fast", device="cpu", probabilities=True,
                            block_shape=(16, 40, 40))
    np.testing.assert_allclose(blocked, whole, atol=1e-5)


def test_a_single_slice_image_is_segmented_in_its_plane(nuclei_2d, one_thread):
    model, image, truth = nuclei_2d
    z = 15
    pred = model.predict(image[z:z + 1], planes="best", device="cpu")
    assert pred.shape == (1,) + image.shape[1:]
    assert model.window(pred.shape) == (1, 32, 32)  # no padding along z: a 2D image
    assert np.mean(dice_scores(pred, truth[z:z + 1], (1, 2))) > 0.6


def test_planes_are_refused_for_3d_models():
    image, balls = ball_volume()
    cfg = TrainConfig(patch_size=(8, 16, 16), iterations=1, self_training=0, device="cpu")
    labels = np.where(balls, 2, 1).astype(np.uint8)
    mc = default_model_config(1, 2, cfg.patch_size, base_filters=4, levels=2)
    model = run_to_end(Trainer(image, labels, cfg, model_config=mc).run()).best
    assert model.dims == 3
    with pytest.raises(ValueError, match="apply to 2D .* models only"):
        model.predict(image, planes="fast")
