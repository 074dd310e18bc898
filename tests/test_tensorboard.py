"""TensorBoard logging of training: what a tiny real run writes, read back from the event files;
a failing logger, an unwritable folder and a missing tensorboard package."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from napari_seg3d.engine import Seg3DError, TrainConfig, Trainer, default_model_config
from napari_seg3d.engine.errors import OutputError
from napari_seg3d.engine.training.scribbles import simulate_scribbles
from napari_seg3d.engine.training.tensorboard import (
    TensorBoardLogger,
    choose_slice,
    colour_classes,
    dice_tags,
    mean_dice,
    slice_region,
    tensorboard_available,
)

PATCH = (8, 16, 16)
SHAPE = (16, 32, 32)
SCALARS = ("train/loss", "train/learning_rate", "train/voxels_per_s", "train/data_wait")
SLICES = ("slices/image", "slices/annotations", "slices/prediction")


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def volume():
    """A noisy ``SHAPE`` image of bright balls and two classes of strokes (values 1 and 2)."""
    z, y, x = np.indices(SHAPE)
    balls = np.zeros(SHAPE, np.uint8)
    for cz, cy, cx in [(4, 8, 9), (11, 22, 20), (8, 20, 8)]:
        balls[(z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 < 25] = 1
    image = (balls + np.random.default_rng(0).normal(0, 0.2, SHAPE)).astype(np.float32)
    labels = simulate_scribbles(balls, slices_per_axis=2, strokes_per_class=2, length=10, seed=0)
    return image, labels


def _trainer(volume, loggers, cls=Trainer, **changes) -> Trainer:
    settings = {"patch_size": PATCH, "batch_size": 2, "iterations": 20, "validate_every": 10,
                "self_training": 0, "device": "cpu"}
    settings.update(changes)
    image, labels = volume
    return cls(image, labels, TrainConfig(**settings), loggers=loggers,
               model_config=default_model_config(1, 2, PATCH, base_filters=4, levels=2))


def _run(trainer: Trainer, stop_after: int | None = None):
    records, gen = [], trainer.run()
    while True:
        try:
            records.append(next(gen))
        except StopIteration as done:
            return records, done.value
        if len(records) == stop_after:
            trainer.request_stop()


def _events(log_dir):
    from tensorboard.backend.event_processing import event_accumulator as ea

    acc = ea.EventAccumulator(str(log_dir), size_guidance={ea.SCALARS: 0, ea.IMAGES: 0,
                                                           ea.TENSORS: 0})
    acc.Reload()
    return acc


def test_tensorboard_is_available():
    assert tensorboard_available()


def test_a_run_logs_scalars_dice_slices_and_settings(volume, tmp_path):
    logger = TensorBoardLogger(tmp_path / "runs")
    trainer = _trainer(volume, [logger])
    records, result = _run(trainer)
    assert result.last.iteration == 20 and trainer.loggers == [logger]
    logger.close()  # the loop closed it already: a second close is harmless
    acc = _events(tmp_path / "runs")
    tags = acc.Tags()

    for tag in SCALARS:
        assert [e.step for e in acc.Scalars(tag)] == list(range(1, 21)), tag
    np.testing.assert_allclose([e.value for e in acc.Scalars("train/loss")],
                               [r.loss for r in records], rtol=1e-6)
    validations = [r for r in records if r.val_dice is not None]
    assert [r.iteration for r in validations] == [10, 20]
    for k, name in enumerate(trainer.model.class_names):
        events = acc.Scalars(f"validation/dice/{name}")
        assert [e.step for e in events] == [10, 20]
        np.testing.assert_allclose([e.value for e in events], [r.val_dice[k] for r in validations],
                                   rtol=1e-6)
    np.testing.assert_allclose([e.value for e in acc.Scalars("validation/mean_dice")],
                               [np.mean(r.val_dice) for r in validations], rtol=1e-6)

    assert set(SLICES) <= set(tags["images"])
    for tag in SLICES:
        images = acc.Images(tag)
        assert [e.step for e in images] == [10, 20], tag  # the end is step 20: not logged twice
        assert all((e.width, e.height) == (SHAPE[2], SHAPE[1]) for e in images), tag

    text = acc.Tensors("settings/training/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '"patch_size"' in text and '"validate_every": 10' in text
    model_text = acc.Tensors("settings/model/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '"base_filters": 4' in model_text and '"class 1"' in model_text


def test_logging_leaves_the_training_unchanged_and_a_stopped_run_logs_its_last_slices(
        volume, tmp_path):
    _, plain = _run(_trainer(volume, [], iterations=6))
    _, logged = _run(_trainer(volume, [TensorBoardLogger(tmp_path, images_every=2)],
                              iterations=6), stop_after=5)
    assert logged.stopped and logged.last.iteration == 5
    acc = _events(tmp_path)
    assert [e.step for e in acc.Images("slices/prediction")] == [2, 4, 5]  # 5: at close
    assert "validation/mean_dice" not in acc.Tags()["scalars"]
    # the previews ran the network in eval mode between steps: the weights are the same
    _, full = _run(_trainer(volume, [TensorBoardLogger(tmp_path / "b", images_every=2)],
                            iterations=6))
    for (name, a), b in zip(plain.last.network.state_dict().items(),
                            full.last.network.state_dict().values()):
        assert torch.equal(a, b), name


def test_without_held_out_strokes_slices_are_logged_at_the_validation_steps(volume, tmp_path):
    records, _ = _run(_trainer(volume, [TensorBoardLogger(tmp_path)], iterations=5,
                               validate_every=2, validation_fraction=0.0))
    assert all(r.val_dice is None for r in records)
    acc = _events(tmp_path)
    assert [e.step for e in acc.Images("slices/image")] == [2, 4, 5]
    assert not any(tag.startswith("validation/") for tag in acc.Tags()["scalars"])


class _Broken:
    def __init__(self) -> None:
        self.closed = False

    def log(self, trainer, progress) -> None:
        if progress.iteration == 3:
            raise OSError("disk full")

    def close(self) -> None:
        self.closed = True


def test_a_failing_logger_is_dropped_and_training_goes_on(volume, tmp_path):
    broken, logger = _Broken(), TensorBoardLogger(tmp_path)
    trainer = _trainer(volume, [broken, logger], iterations=5, validate_every=5)
    with pytest.warns(RuntimeWarning, match="_Broken stopped logging: disk full"):
        records, result = _run(trainer)
    assert len(records) == 5 and result.last.iteration == 5 and not result.stopped
    assert trainer.loggers == [logger] and not broken.closed
    assert [e.step for e in _events(tmp_path).Scalars("train/loss")] == [1, 2, 3, 4, 5]


def test_a_tensorboard_logger_that_fails_closes_its_log(volume, tmp_path):
    class _FailingPreview(Trainer):
        def preview(self, slices, iteration):
            raise RuntimeError("no preview")

    logger = TensorBoardLogger(tmp_path, images_every=2)
    trainer = _trainer(volume, [logger], _FailingPreview, iterations=3)
    with pytest.warns(RuntimeWarning, match="TensorBoardLogger stopped logging: no preview"):
        records, _ = _run(trainer)
    assert len(records) == 3 and trainer.loggers == [] and logger._closed
    assert [e.step for e in _events(tmp_path).Scalars("train/loss")] == [1, 2]
    logger.close()  # harmless after the failure


def test_an_unwritable_log_dir_is_an_output_error(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(OutputError, match="Cannot write to the output folder"):
        TensorBoardLogger(tmp_path / "file")
    with pytest.raises(OutputError):
        TensorBoardLogger(tmp_path / "file" / "runs")


def test_missing_tensorboard_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    assert not tensorboard_available()
    with pytest.raises(Seg3DError, match=r'pip install "napari-seg3d\[tensorboard\]"'):
        TensorBoardLogger(tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_close_without_logging_and_twice_is_harmless(tmp_path):
    logger = TensorBoardLogger(tmp_path)
    logger.close()
    files = sorted(tmp_path.glob("events.out.tfevents.*"))
    sizes = [f.stat().st_size for f in files]
    logger.close()  # nothing more: no error, no new event file, nothing appended
    assert logger._closed and len(files) == 1
    assert sorted(tmp_path.glob("events.out.tfevents.*")) == files
    assert [f.stat().st_size for f in files] == sizes
    tags = _events(tmp_path).Tags()
    assert not tags["scalars"] and not tags["images"] and not tags["tensors"]


def test_the_slice_region_is_a_slab_at_most_256_wide_around_the_annotations():
    index = np.zeros((40, 600, 100), np.int16)
    index[30, 500:520, 10:20] = 1
    index[31, 480, 90] = -2  # held out counts as annotated
    index[12, 100, 50] = 2
    z = choose_slice(index)
    assert z == 30
    zs, ys, xs = slice_region(index, z, depth=8)
    assert (zs.start, zs.stop) == (26, 34)
    assert ys.stop - ys.start == 256 and ys.start <= 500 and ys.stop >= 520 and ys.stop <= 600
    assert (xs.start, xs.stop) == (0, 100)
    assert slice_region(index, 39, depth=8)[0] == slice(32, 40)
    assert choose_slice(np.zeros((5, 4, 4))) == 2


def test_pure_helpers():
    assert dice_tags(["bg", "cell", "cell"]) == [
        "validation/dice/bg", "validation/dice/cell", "validation/dice/cell (2)"]
    assert mean_dice((0.5, float("nan"), 1.0)) == 0.75 and mean_dice((float("nan"),)) is None
    rgb = colour_classes(np.array([[0, 1], [2, 8]]))
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.float32
    assert np.all(rgb[0, 0] == 0) and not np.allclose(rgb[0, 1], rgb[1, 0])
    assert np.allclose(rgb[1, 1], rgb[0, 1])  # the colours repeat after seven classes
