"""The tasks layer: train / evaluate / predict / demo / info as library functions that leave
the caller's config alone; compact model files that load and predict like the trained model;
checkpoints that keep the optimizer state and resume; a fixed-step demo end to end."""

import copy
import json
import zipfile

import h5py
import numpy as np
import pytest

from conftest import tiny_model_config
from solo_tf.config import Config, DataConfig, TrainConfig
from solo_tf.data.shapes import ShapesSourceConfig


def _tiny_config(**train):
    kw = dict(epochs=2, batch_size=4, warmup_iters=2, decay_epochs=(1,))
    kw.update(train)
    return Config(
        name="tiny_shapes",
        model=tiny_model_config("solov2", image_size=(64, 64), num_classes=6),
        data=DataConfig(max_instances=6, shapes=ShapesSourceConfig(num_train=8, num_val=4, image_size=(64, 64),
                                                                     max_objects=3)),
        train=TrainConfig(**kw),
    )


def _h5_groups(path):
    """Top-level groups of the weights inside a .keras zip, or of a .weights.h5 file."""
    if str(path).endswith(".keras"):
        with zipfile.ZipFile(path) as z, z.open("model.weights.h5") as f, h5py.File(f, "r") as h5:
            return set(h5.keys())
    with h5py.File(path, "r") as h5:
        return set(h5.keys())


def _images(n=2, size=64, seed=0):
    return np.random.RandomState(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")


def test_train_leaves_the_config_alone_and_saves_a_compact_model(tmp_path):
    from keras import ops

    from solo_tf.saving import load_model
    from solo_tf.tasks import train

    cfg = _tiny_config(optimizer="adamw")
    before = copy.deepcopy(cfg)
    run = train(cfg, tmp_path / "run", steps_per_epoch=1, verbose=0)
    assert cfg == before, "train changed the caller's config"
    assert run.config.train.steps_per_epoch == 1 and run.config.labels.class_names[0] == "circle"
    assert run.steps == 2 and run.model_path == tmp_path / "run" / "model.keras"

    # model.keras: no optimizer state; loads (registered classes) and predicts as the trained model
    assert "optimizer" not in _h5_groups(run.model_path)
    with zipfile.ZipFile(run.model_path) as z:
        config_json = z.read("config.json").decode()
    assert "AdamW" not in config_json and not json.loads(config_json).get("compile_config")
    loaded = load_model(run.model_path)
    x = _images()
    a, b = run.model.predict_on_batch(x), loaded.predict_on_batch(x)
    for k in a:
        np.testing.assert_array_equal(ops.convert_to_numpy(a[k]), ops.convert_to_numpy(b[k]), err_msg=k)

    # the per-epoch checkpoints keep the optimizer state (AdamW moments) for resuming
    ckpt = tmp_path / "run" / "checkpoints" / "epoch_002.weights.h5"
    assert "optimizer" in _h5_groups(ckpt)
    assert ckpt.stat().st_size > 2 * sum(int(np.prod(v.shape)) * 4 for v in run.model.trainable_weights)


def test_total_steps_trains_exactly_that_many_with_the_shaped_schedule(tmp_path):
    from solo_tf.tasks import train

    # 5 steps in epochs of 2: the last epoch is cut to one step; the config decays at epoch 1
    # of 2, so the run decays at round(1/2 * 5) = 2; warm-up min(2, 5 // 4) = 1 step
    run = train(_tiny_config(steps_per_epoch=2), tmp_path / "run", total_steps=5, keep_checkpoints=2, verbose=0)
    assert run.steps == 5
    assert len(run.history["loss"]) == 3
    lr = 0.01 * 4 / 16
    assert run.history["lr"] == pytest.approx([lr, 0.1 * lr, 0.1 * lr])  # last steps: 1, 3, 4
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == [
        "epoch_002.weights.h5", "epoch_003.weights.h5"]  # the newest two kept


def test_total_steps_decays_at_the_configs_fractions_whatever_the_epoch_count(tmp_path):
    from solo_tf.tasks import train

    # the config decays at epoch 3 of 4: three quarters of the schedule. 8 steps in epochs of
    # one step run 8 epochs, and still decay at step 6 (not at epoch 3 of the 8)
    cfg = _tiny_config(epochs=4, decay_epochs=(3,), steps_per_epoch=1)
    run = train(cfg, tmp_path / "run", total_steps=8, keep_checkpoints=1, validation=False, verbose=0)
    lr = 0.01 * 4 / 16
    assert run.steps == 8
    assert run.history["lr"][2:] == pytest.approx([lr] * 4 + [0.1 * lr] * 2)  # after the 2-step warm-up


def test_resume_restores_the_optimizer_state_and_continues(tmp_path):
    from keras import ops

    from solo_tf.saving import load_checkpoint
    from solo_tf.model import SOLO
    from solo_tf.tasks import train
    from solo_tf.training import make_optimizer

    cfg = _tiny_config(epochs=3, steps_per_epoch=2, optimizer="sgd")
    first = train(cfg, tmp_path / "a", epochs=1, verbose=0)
    ckpt = tmp_path / "a" / "checkpoints" / "epoch_001.weights.h5"

    # the checkpoint restores weights, momentum buffers and the step count into a new model
    fresh = SOLO(cfg.model, cfg.loss, first.config.labels, cfg.postprocess)
    fresh.compile(optimizer=make_optimizer(first.config.train, 2))
    assert load_checkpoint(fresh, ckpt) == 2
    for v, w in zip(fresh.optimizer.variables, first.model.optimizer.variables):
        np.testing.assert_array_equal(ops.convert_to_numpy(v), ops.convert_to_numpy(w), err_msg=v.path)

    resumed = train(cfg, tmp_path / "a", resume_from=ckpt, verbose=0)
    assert resumed.steps == 6  # 2 restored + epochs 2 and 3
    assert len(resumed.history["loss"]) == 2
    rows = (tmp_path / "a" / "history.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["0", "1", "2"]  # the log goes on


def test_evaluate_and_predict_take_a_model_file(tmp_path):
    from PIL import Image

    from solo_tf.model import SOLO
    from solo_tf.tasks import evaluate, predict

    cfg = _tiny_config()
    before = copy.deepcopy(cfg)
    model = SOLO(cfg.model)
    path = tmp_path / "m" / "model.keras"
    from solo_tf.saving import save_model

    save_model(model, path)
    metrics = evaluate(path, cfg, metrics_path=tmp_path / "e" / "metrics.json", max_batches=1)
    assert cfg == before
    assert metrics["num_images"] == 4 and 0.0 <= metrics["AP"] <= 1.0 and metrics["bad_records"] == []
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["num_images"] == 4

    img = tmp_path / "x.png"
    Image.fromarray(np.random.RandomState(0).randint(0, 255, (30, 50, 3), np.uint8)).save(img)
    res = predict(path, [img], tmp_path / "p", score_thr=0.0)
    assert res.pictures == [str(tmp_path / "p" / "x_pred.png")]
    assert all(inst["masks"].shape[1:] == (30, 50) for inst in res.instances)
    assert json.loads(res.results_path.read_text()) == res.results


def test_info_describes_a_saved_model(tmp_path, capsys):
    from solo_tf.cli import main
    from solo_tf.config import LabelsConfig
    from solo_tf.saving import save_model
    from solo_tf.model import SOLO
    from solo_tf.tasks import info

    model = SOLO(tiny_model_config("decoupled_solo", image_size=(64, 96), num_classes=3),
                 labels_config=LabelsConfig(class_names=["car", "person", "dog"], category_ids=[3, 1, 18]))
    path = save_model(model, tmp_path / "model.keras")
    d = info(path)
    assert d["variant"] == "decoupled_solo" and d["backbone"] == "tiny" and d["input_size"] == [64, 96]
    assert d["classes"] == [{"index": 0, "name": "car", "dataset_id": 3}, {"index": 1, "name": "person", "dataset_id": 1},
                            {"index": 2, "name": "dog", "dataset_id": 18}]
    assert d["parameters"] == model.count_params() and d["file_bytes"] == path.stat().st_size
    assert main(["info", str(path)]) == 0
    text = capsys.readouterr().out
    assert "decoupled_solo" in text and "64 x 96" in text and "person (1)" in text and f"{d['parameters']:,}" in text
    assert main(["info", str(tmp_path / "nope.keras")]) == 1
    assert "nope.keras" in capsys.readouterr().err


def test_demo_with_a_fixed_step_count_end_to_end(tmp_path):
    """The demo's reproducible mode, reduced to a few steps: trains exactly that many, scores,
    draws ground truth beside prediction, and leaves a model file about its weights' size."""
    from PIL import Image

    from solo_tf.tasks import demo, info

    out = tmp_path / "demo"
    summary = demo(out, steps=3, num_train=48, num_val=4, verbose=0)
    assert summary["steps"] == 3 and "note" not in summary
    assert 0.0 <= summary["mask_ap"] <= 1.0
    names = sorted(p.split("/")[-1] for p in summary["pictures"])
    assert names == ["prediction_0.png", "prediction_1.png", "prediction_2.png", "prediction_3.png",
                     "target_grids.png", "training_curves.png"]
    with Image.open(out / "prediction_0.png") as im:
        assert im.size[0] > 2 * 128  # two panels: ground truth | prediction
    d = info(out / "model.keras")
    assert d["file_bytes"] <= 1.1 * d["weights_bytes"], d
    assert "optimizer" in _h5_groups(out / "checkpoints" / "epoch_001.weights.h5")


def test_run_control_callbacks_on_a_small_keras_model():
    """StepLimit stops mid-epoch at exactly N steps; TimeBudget stops at the epoch end past
    its budget and says so; LearningRateLogger logs the rate the last step used."""
    import keras

    from solo_tf.training import LearningRateLogger, StepLimit, TimeBudget, WarmupStepDecay

    x, y = np.ones((12, 3), np.float32), np.zeros((12, 1), np.float32)

    def fit(callbacks, epochs=4, schedule=0.1):
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        model.compile(keras.optimizers.SGD(schedule), "mse")
        hist = model.fit(x, y, batch_size=4, epochs=epochs, callbacks=callbacks, verbose=0, shuffle=False)
        return model, hist.history

    model, hist = fit([StepLimit(5)])  # epochs of 3 steps
    assert int(model.optimizer.iterations.numpy()) == 5 and len(hist["loss"]) == 2

    ticks = iter(range(100))
    budget = TimeBudget(2.5, clock=lambda: float(next(ticks)))  # one "second" per clock read
    model, hist = fit([budget])
    assert budget.stopped_early and len(hist["loss"]) < 4

    schedule = WarmupStepDecay(0.1, boundaries=[4], warmup_iters=0)
    _, hist = fit([LearningRateLogger()], epochs=3, schedule=schedule)
    assert hist["lr"] == pytest.approx([0.1, 0.01, 0.01])  # last steps 2, 5, 8; decay from step 4
