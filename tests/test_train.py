"""The training generator: progress, stopping, exact resumption, live annotations, previews."""

from __future__ import annotations

import math
import threading

import h5py
import numpy as np
import pytest
import torch

from napari_seg3d.engine import (
    AnnotationError,
    Preview,
    TrainConfig,
    Trainer,
    TrainerUpdate,
    TrainProgress,
    TrainResult,
    default_model_config,
    load_model,
    propose_patch_size,
    save_model,
)
from napari_seg3d.engine.metrics import dice_scores
from napari_seg3d.engine.training.schedule import learning_rate_at
from napari_seg3d.engine.training.scribbles import simulate_scribbles

PATCH = (8, 16, 16)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny tensors gain nothing from more threads, and on a busy machine OpenMP threads waiting
    for each other make these tests many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model_config(in_channels=1, out_channels=2):
    return default_model_config(in_channels, out_channels, PATCH, base_filters=4, levels=2)


def _config(**changes) -> TrainConfig:
    settings = dict(patch_size=PATCH, batch_size=2, iterations=4, validate_every=2, device="cpu",
                    self_training=0)
    settings.update(changes)
    return TrainConfig(**settings)


def _trainer(image, labels, config=None, **kwargs) -> Trainer:
    if "init" not in kwargs:
        kwargs.setdefault("model_config", _model_config())
    return Trainer(image, labels, config or _config(), **kwargs)


def _run(trainer: Trainer, *, stop_after: int | None = None, send: dict | None = None):
    """Run to the end; ``send[i]`` goes in after the ``i``-th record; returns (records, result)."""
    send = send or {}
    records: list[TrainProgress] = []
    gen = trainer.run()
    value = None
    while True:
        try:
            records.append(gen.send(value) if records else next(gen))
        except StopIteration as done:
            return records, done.value
        value = send.get(len(records))
        if stop_after is not None and len(records) == stop_after:
            trainer.request_stop()


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.network.state_dict().items()}


def _assert_same_weights(a, b, atol=1e-6):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=atol), k


def test_run_yields_progress_and_returns_best_and_last(blobs):
    image, _, labels = blobs
    records, result = _run(_trainer(image, labels))
    assert [r.iteration for r in records] == [1, 2, 3, 4]
    assert all(r.iterations == 4 and math.isfinite(r.loss) and r.loss > 0 for r in records)
    assert [r.val_dice is not None for r in records] == [False, True, False, True]
    for r in records:
        assert r.learning_rate == pytest.approx(learning_rate_at(r.iteration - 1, 4, 3e-3))
        assert r.eta_s >= 0 and r.voxels_per_s > 0 and 0 <= r.data_wait <= 1
        if r.val_dice is not None:
            assert len(r.val_dice) == 2 and all(0 <= d <= 1 for d in r.val_dice)
    assert records[-1].eta_s == 0
    assert any(r.is_best for r in records)
    assert isinstance(result, TrainResult) and not result.stopped
    assert result.last.iteration == 4 and result.last.optimizer_state is not None
    assert result.best.iteration in (2, 4)
    assert result.best.history["loss"] == [r.loss for r in records]
    assert result.best.history["val_iteration"] == [2, 4]
    assert result.best.class_values == (1, 2)


def test_request_stop_ends_after_the_current_iteration(blobs):
    image, _, labels = blobs
    records, result = _run(_trainer(image, labels, _config(iterations=50)), stop_after=2)
    assert [r.iteration for r in records] == [1, 2]
    assert result.stopped and result.last.iteration == 2
    assert len(result.last.history["loss"]) == 2


@pytest.mark.parametrize("self_training", [0, 2])  # 2: rounds at 3 and 4, stopped at the first
def test_stopped_and_resumed_run_ends_exactly_like_an_uninterrupted_one(blobs, tmp_path,
                                                                        self_training):
    image, _, labels = blobs
    config = _config(iterations=6, self_training=self_training)
    records_a, result_a = _run(_trainer(image, labels, config))

    _, stopped = _run(_trainer(image, labels, config), stop_after=3)
    assert stopped.stopped and stopped.last.iteration == 3
    path = save_model(stopped.last, tmp_path / "run.last.pt")
    records_b, result_b = _run(_trainer(image, labels, config, init=load_model(path), resume=True))

    assert [r.iteration for r in records_b] == [4, 5, 6]
    assert [r.loss for r in records_b] == pytest.approx([r.loss for r in records_a[3:]], abs=1e-6)
    _assert_same_weights(result_b.last, result_a.last)
    assert result_b.last.iteration == 6
    assert result_b.last.history["loss"] == pytest.approx(result_a.last.history["loss"], abs=1e-6)


def test_fine_tuning_starts_at_iteration_zero_from_the_given_weights(blobs):
    image, _, labels = blobs
    _, base = _run(_trainer(image, labels, _config(iterations=3)))
    before = _weights(base.last)
    trainer = _trainer(image, labels, _config(iterations=2, seed=5), init=base.last)
    assert trainer.start_iteration == 0 and trainer.optimizer_state is None
    _assert_same_weights(trainer.model, base.last, atol=0)
    records, result = _run(trainer)
    assert [r.iteration for r in records] == [1, 2]
    assert result.last.iteration == 2 and result.last.history["loss"] == [r.loss for r in records]
    assert all(torch.equal(before[k], v) for k, v in _weights(base.last).items())  # init untouched
    assert not all(torch.equal(before[k], v) for k, v in _weights(result.last).items())


def test_same_seed_gives_identical_weights_and_another_seed_does_not(blobs):
    image, _, labels = blobs
    results = [_run(_trainer(image, labels, _config(iterations=3, seed=s)))[1] for s in (7, 7, 8)]
    _assert_same_weights(results[0].last, results[1].last, atol=0)
    assert results[0].last.history["loss"] == results[1].last.history["loss"]
    w0, w2 = _weights(results[0].last), _weights(results[2].last)
    assert not all(torch.equal(w0[k], w2[k]) for k in w0)


@pytest.mark.parametrize("wrap", [lambda new: TrainerUpdate(labels=new), lambda new: new],
                         ids=["TrainerUpdate", "ndarray"])
def test_sending_labels_mid_run_swaps_the_annotations(blobs, wrap):
    image, truth, labels = blobs
    new = simulate_scribbles(truth - 1, slices_per_axis=3, strokes_per_class=1, length=6, seed=1)
    assert not np.array_equal(new, labels)
    trainer = _trainer(image, labels)
    old = trainer.sampler.annotations
    records, result = _run(trainer, send={2: wrap(new)})
    swapped = trainer.sampler.annotations
    assert swapped is not old
    assert np.array_equal(swapped.index != 0, new != 0)
    assert not np.array_equal(old.index != 0, new != 0)
    assert [r.iteration for r in records] == [1, 2, 3, 4] and not result.stopped


def test_sending_labels_with_an_unknown_class_is_an_error(blobs):
    image, _, labels = blobs
    gen = _trainer(image, labels).run()
    next(gen)
    bad = labels.copy()
    bad[0, 0, 0] = 9
    with pytest.raises(AnnotationError, match=r"values \[9\]"):
        gen.send(bad)


def test_preview_predicts_the_region_with_painted_values(blobs):
    image, _, labels = blobs
    region = (slice(2, 10), slice(None), slice(4, 20))
    records, _ = _run(_trainer(image, labels), send={1: TrainerUpdate(preview=region)})
    assert [r.preview is not None for r in records] == [False, True, False, False]
    preview = records[1].preview
    assert isinstance(preview, Preview) and preview.iteration == 1
    assert preview.slices == (slice(2, 10), slice(0, 24), slice(4, 20))
    assert preview.labels.shape == (8, 24, 16)
    assert set(np.unique(preview.labels)) <= {1, 2}


def _labels_of_shape(blobs):
    return blobs[0], np.zeros((3, 4, 5), np.uint8), _config(), {}


def _one_class(blobs):
    return blobs[0], (blobs[2] > 0).astype(np.uint8), _config(), {}


def _nothing_painted(blobs):
    return blobs[0], np.zeros_like(blobs[2]), _config(), {}


def _bce_three_classes(blobs):
    labels = blobs[2].copy()
    labels[0, :2, :2] = 3
    return blobs[0], labels, _config(loss="bce"), {"model_config": _model_config(1, 1)}


def _resume_without_optimizer(blobs):
    fresh = _trainer(blobs[0], blobs[2]).model  # never trained: no optimizer state
    return blobs[0], blobs[2], _config(), {"init": fresh, "resume": True}


def _new_class_on_fine_tune(blobs):
    fresh = _trainer(blobs[0], blobs[2]).model
    labels = blobs[2].copy()
    labels[0, 0, 0] = 4
    return blobs[0], labels, _config(), {"init": fresh}


def _channels_differ_from_model(blobs):
    fresh = _trainer(blobs[0], blobs[2]).model
    return np.stack([blobs[0], blobs[0]]), blobs[2], _config(), {"init": fresh}


def _two_dimensional_image(blobs):
    return blobs[0][0], blobs[2][0], _config(), {}


@pytest.mark.parametrize(("make", "message"), [
    (_labels_of_shape, r"annotations have shape \(3, 4, 5\) but the image is \(17, 24, 26\)"),
    (_one_class, r"Only one class \(value 1\)"),
    (_nothing_painted, "There are no annotations"),
    (_bce_three_classes, "bce loss is for two classes; 3 are painted"),
    (_resume_without_optimizer, "no optimizer state.*fine-tune it instead"),
    (_new_class_on_fine_tune, r"Label values \[4\] are not classes of the loaded model"),
    (_channels_differ_from_model, "trained on 1-channel images; this image has 2"),
    (_two_dimensional_image, r"Expected a 3D image .* got shape \(24, 26\)"),
])
def test_unusable_inputs_raise_a_clear_annotation_error(blobs, make, message):
    image, labels, config, kwargs = make(blobs)
    with pytest.raises(AnnotationError, match=message):
        _trainer(image, labels, config, **kwargs)


def _as_h5(image, tmp_path):
    with h5py.File(tmp_path / "image.h5", "w") as f:
        f["raw"] = image
    return h5py.File(tmp_path / "image.h5", "r")["raw"]


def _threads_in_a_new_thread(work=torch.get_num_threads):
    out = []
    thread = threading.Thread(target=lambda: out.append(work()))
    thread.start()
    thread.join()
    return out[0]


def test_training_in_a_worker_thread_keeps_torch_threads(blobs, monkeypatch):
    """As in the napari widget: the prefetch thread limits itself to one torch thread, and neither
    the training thread nor threads started later inherit that limit."""
    image, _, labels = blobs
    monkeypatch.setenv("NAPARI_SEG3D_THREADS", "2")  # what the training thread sets itself to
    torch.set_num_threads(2)  # the default of new threads (restored by _one_torch_thread)
    trainer = _trainer(image, labels, _config(iterations=3))
    seen = []

    def train():
        for _ in trainer.run():
            seen.append(torch.get_num_threads())
        return seen

    assert _threads_in_a_new_thread(train) == [2, 2, 2]
    assert _threads_in_a_new_thread() == 2


@pytest.mark.parametrize(("kind", "loss"), [
    ("array", "bce"),
    ("h5", "ce_dice"),
    ("two_channels", "ce_dice"),
])
def test_trains_and_predicts_from_each_kind_of_image(blobs, tmp_path, kind, loss):
    image, _, labels = blobs
    channels = 2 if kind == "two_channels" else 1
    source = {"array": image, "h5": _as_h5(image, tmp_path) if kind == "h5" else None,
              "two_channels": np.stack([image, 1 - image])}[kind]
    try:
        model_config = _model_config(channels, 1 if loss == "bce" else 2)
        records, result = _run(_trainer(source, labels, _config(iterations=2, loss=loss),
                                        model_config=model_config))
        labels_pred = result.last.predict(source[...], device="cpu")
    finally:
        if kind == "h5":
            source.file.close()
    assert len(records) == 2 and result.last.in_channels == channels
    assert labels_pred.shape == image.shape and set(np.unique(labels_pred)) <= {1, 2}
    if channels == 2:
        with pytest.raises(ValueError, match="2-channel images; the image has 1"):
            result.last.predict(image, device="cpu")


@pytest.mark.parametrize("loss", ["ce_dice", "bce_dice"])
def test_training_learns_the_blobs_from_scribbles(blobs, loss):
    image, truth, labels = blobs
    config = _config(iterations=100, validate_every=50, learning_rate=1e-2, loss=loss)
    model_config = _model_config(1, 1 if loss == "bce_dice" else 2)
    _, result = _run(_trainer(image, labels, config, model_config=model_config))
    dice = dice_scores(result.best.predict(image, device="cpu"), truth, (1, 2))
    assert min(dice) > 0.8, dice


@pytest.mark.parametrize(("iteration", "total", "expected"), [
    (0, 100, 0.05),  # warm-up: (i + 1) / 20
    (9, 100, 0.5),
    (19, 100, 1.0),
    (20, 100, 0.8 ** 0.9),  # then (1 - i / total) ** 0.9
    (50, 100, 0.5 ** 0.9),
    (100, 100, 0.0),
    (150, 100, 0.0),
])
def test_learning_rate_warms_up_then_decays(iteration, total, expected):
    assert learning_rate_at(iteration, total, 1.0) == pytest.approx(expected)
    assert learning_rate_at(iteration, total, 3e-3) == pytest.approx(3e-3 * expected)


@pytest.mark.parametrize(("shape", "voxel_size", "expected"), [
    ((100, 200, 300), None, (48, 48, 48)),  # max_edge
    ((31, 61, 57), None, (16, 32, 32)),  # 60% of the image, down to a multiple of 8
    ((17, 24, 26), None, (8, 8, 8)),
    ((5, 5, 5), None, (8, 8, 8)),  # never below 8, even for a smaller image
    ((100, 200, 300), (2.0, 0.5, 0.5), (8, 48, 48)),  # z voxels 4x longer: 48 / 4 = 12 -> 8
    ((100, 200, 300), (1.0, 0.5, 0.5), (24, 48, 48)),
    ((100, 200, 300), (0.5, 1.0, 1.0), (56, 48, 48)),  # z voxels shorter: 96, capped at 60%
    ((100, 200, 300), (1.0, 0.5, 0.25), (8, 24, 48)),  # ratios (4, 2, 1) to the finest axis
])
def test_propose_patch_size(shape, voxel_size, expected):
    assert propose_patch_size(shape, voxel_size) == expected


@pytest.mark.parametrize(("patch", "voxel_size", "levels", "pooling"), [
    ((32, 64, 64), None, 4, [[2, 2, 2]] * 3),
    ((8, 16, 16), None, 2, [[2, 2, 2]]),
])
def test_default_model_config_sizes_the_unet_to_the_patch(patch, voxel_size, levels, pooling):
    kwargs = default_model_config(1, 3, patch, voxel_size).kwargs
    assert kwargs["levels"] == levels and kwargs["out_channels"] == 3
    assert kwargs["pooling"] == pooling


def test_image_with_nan_and_inf_trains_and_predicts(blobs):
    image, _, scribbles = blobs
    image = image.copy()
    image[0, :5, :5] = np.nan
    image[3, 10:12, 10:12] = np.inf
    records, result = _run(_trainer(image, scribbles))
    assert all(math.isfinite(r.loss) for r in records)
    assert all(torch.isfinite(p).all() for p in result.last.network.parameters())
    assert set(np.unique(result.last.predict(image))) <= {1, 2}
