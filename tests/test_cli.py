"""The command line: train writes the model, checkpoints and logs; errors name the key."""

import json

import numpy as np
import pytest

from conftest import tiny_model_config
from solo_tf.config import Config, DataConfig, ShapesSourceConfig, TrainConfig


def _tiny_run_config(tmp_path, **train):
    model = tiny_model_config("solov2", image_size=(64, 64), num_classes=6)
    cfg = Config(
        name="tiny_shapes",
        model=model,
        data=DataConfig(max_instances=6, shapes=ShapesSourceConfig(num_train=8, num_val=4, image_size=(64, 64),
                                                                     max_objects=3)),
        train=TrainConfig(epochs=2, batch_size=4, warmup_iters=2, decay_epochs=(1,), **train),
    )
    path = tmp_path / "tiny.yaml"
    cfg.to_yaml(path)
    return path


@pytest.mark.parametrize("targets_in", ["pipeline", "model"])
def test_train_writes_model_checkpoints_and_logs(tmp_path, capsys, targets_in):
    import keras

    from solo_tf.cli import main

    cfg_path = _tiny_run_config(tmp_path, targets_in=targets_in)
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg_path), "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["model"] == str(out / "model.keras")
    assert np.isfinite(summary["final_loss"])
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch_001.weights.h5", "epoch_002.weights.h5"]
    history = (out / "history.csv").read_text().splitlines()
    assert history[0].split(",")[:1] == ["epoch"] and "focal_loss" in history[0] and "dice_loss" in history[0]
    assert len(history) == 3
    assert any((out / "logs").rglob("*tfevents*"))
    assert Config.from_yaml(out / "config.yaml").labels.class_names[0] == "circle"
    model = keras.saving.load_model(out / "model.keras")
    assert model.model_config.num_classes == 6
    assert not list(out.glob(".*tmp*")), "temporary files left behind"


def test_train_bad_config_names_the_key(tmp_path, capsys):
    from solo_tf.cli import main

    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epoch: 3\n")
    assert main(["train", "--config", str(path)]) == 2
    assert "train.epoch" in capsys.readouterr().err


def test_mixed_precision_trains_a_step(tmp_path):
    import keras

    from solo_tf.cli import run_train
    from solo_tf.config import load_config

    cfg = load_config(_tiny_run_config(tmp_path, mixed_precision=True))
    try:
        model, history, _ = run_train(cfg, tmp_path / "mp", epochs=1, verbose=0)
        assert model.dtype_policy.name == "mixed_float16"
        assert np.isfinite(history["loss"][-1])
    finally:
        keras.config.set_dtype_policy("float32")
