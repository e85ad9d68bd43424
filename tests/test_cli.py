"""The command line: train writes the model, checkpoints and logs; errors name the key."""

import json

import numpy as np
import pytest

from conftest import tiny_model_config
from solo_tf.config import Config, DataConfig, TrainConfig
from solo_tf.data.shapes import ShapesSourceConfig


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
    header = history[0].split(",")
    assert header[:1] == ["epoch"] and {"focal_loss", "dice_loss", "lr"} <= set(header)
    assert len(history) == 3
    # lr 0.01 * 4/16; epoch 1 ends at step 1 of a 2-step warm-up from 1/3, epoch 2 after the
    # decay at epoch 1 (decay_epochs (1,))
    lr = [float(row.split(",")[header.index("lr")]) for row in history[1:]]
    assert lr == pytest.approx([0.0025 * (1 / 3 + 2 / 3 * 1 / 2), 0.0025 * 0.1])
    assert any((out / "logs").rglob("*tfevents*"))
    assert Config.from_yaml(out / "config.yaml").labels.class_names[0] == "circle"
    model = keras.saving.load_model(out / "model.keras")
    assert model.model_config.num_classes == 6
    assert not list(out.rglob(".*")), "temporary files left behind"


def test_train_bad_config_names_the_key(tmp_path, capsys):
    from solo_tf.cli import main

    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epoch: 3\n")
    assert main(["train", "--config", str(path)]) == 2
    assert "train.epoch" in capsys.readouterr().err


@pytest.mark.parametrize("setting,policy", [(True, "mixed_float16"), ("bfloat16", "mixed_bfloat16")])
def test_mixed_precision_trains_a_step(tmp_path, setting, policy):
    import keras

    from solo_tf.config import load_config
    from solo_tf.tasks import train

    cfg = load_config(_tiny_run_config(tmp_path, mixed_precision=setting))
    try:
        run = train(cfg, tmp_path / "mp", epochs=1, verbose=0)
        assert run.model.dtype_policy.name == policy
        assert run.model.get_layer("head").compute_dtype == policy.split("_")[1]
        assert all(w.dtype == "float32" for w in run.model.weights)
        assert np.isfinite(run.history["loss"][-1])
        assert np.isfinite(run.history["lr"][-1])  # read through the LossScaleOptimizer (float16)
    finally:
        keras.config.set_dtype_policy("float32")


def test_mixed_precision_setting_is_checked():
    from solo_tf.config import ConfigError, TrainConfig

    with pytest.raises(ConfigError, match="train.mixed_precision"):
        TrainConfig(mixed_precision="int8").validate()


def test_version_and_help_need_no_backend(capsys):
    from solo_tf import __version__
    from solo_tf.cli import main

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and f"solo-tf {__version__}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["train"])  # --config missing: a usage error
    assert e.value.code == 2 and "--config" in capsys.readouterr().err


@pytest.mark.parametrize("argv, verbose", [
    (["demo"], False),
    (["demo", "--verbose"], True),
    (["--verbose", "demo"], True),  # before the command: not reset by the command's own flag
    (["-v", "info", "m.keras"], True),
])
def test_verbose_is_accepted_before_or_after_the_command(argv, verbose):
    from solo_tf.cli import build_parser

    assert build_parser().parse_args(argv).verbose is verbose


def test_abbreviated_flags_are_rejected_not_guessed():
    """`train --steps 20` must not silently mean --steps-per-epoch 20 (argparse's prefix match)."""
    from solo_tf.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--config", "shapes_demo", "--steps", "20"])
    assert build_parser().parse_args(["train", "--config", "shapes_demo", "--steps-per-epoch", "20"]).steps_per_epoch == 20
