"""`solo-tf` as a user runs it: train, then evaluate, predict and export in NEW processes (the model
file must load without the training code's classes), for the reference SGD schedule and
for AdamW; and a quiet start: no TensorFlow / absl C++ log line on any command's stderr."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import tiny_model_config
from solo_tf.config import Config, DataConfig, TrainConfig
from solo_tf.data.shapes import ShapesSourceConfig

# What TensorFlow's C++ start-up logging looks like: absl / glog prefixed lines
# ("I0000 00:00:1795545002.797 15338 port.cc:153] ...") and the known messages.
NATIVE_LOG = re.compile(
    r"^[IWEF]\d{4} \d\d:\d\d:\d\d|absl|oneDNN|cpu_feature_guard|cuda|InitializeLog|TF_ENABLE_ONEDNN_OPTS",
    re.IGNORECASE | re.MULTILINE,
)


def _solo_tf(args, cwd, timeout=600, **env):
    """Run ``python -m solo_tf.cli ARGS`` in a fresh process; the environment does not quiet
    TensorFlow (the CLI has to)."""
    environ = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "GLOG_minloglevel")}
    environ.update(env)
    return subprocess.run([sys.executable, "-m", "solo_tf.cli", *args], cwd=cwd, env=environ, capture_output=True,
                          text=True, timeout=timeout)


def _check(proc, what):
    assert proc.returncode == 0, f"{what} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    found = NATIVE_LOG.findall(proc.stderr)
    assert not found, f"{what}: native log lines on stderr: {found}\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _write_run_inputs(tmp_path, optimizer):
    from PIL import Image

    train = dict(epochs=2, steps_per_epoch=1, batch_size=4, optimizer=optimizer, warmup_iters=1)
    if optimizer == "sgd":  # the reference WarmupStepDecay schedule, one decay between the epochs
        train.update(decay_epochs=(1,))
    else:  # as shapes_demo: AdamW
        train.update(base_lr=0.003, decay_epochs=(1,))
    cfg = Config(
        name=f"tiny_{optimizer}",
        model=tiny_model_config("solov2", image_size=(64, 64), num_classes=6),
        data=DataConfig(max_instances=6, shapes=ShapesSourceConfig(num_train=8, num_val=2, image_size=(64, 64),
                                                                     max_objects=3)),
        train=TrainConfig(**train),
    )
    cfg.to_yaml(tmp_path / "config.yaml")
    Image.fromarray(np.random.RandomState(0).randint(0, 255, (48, 80, 3), np.uint8)).save(tmp_path / "photo.png")


# the AdamW chain is opt-in (slow): the SGD chain runs the same commands in new processes, and
# AdamW itself trains in tests/test_tasks.py; the default suite is near its time budget
@pytest.mark.parametrize("optimizer", ["sgd", pytest.param("adamw", marks=pytest.mark.slow)])
def test_train_then_evaluate_then_predict_in_new_processes(tmp_path, optimizer):
    _write_run_inputs(tmp_path, optimizer)
    trained = _check(_solo_tf(["train", "--config", "config.yaml", "--out", "run"], tmp_path), "train")
    assert trained["model"] == os.path.join("run", "model.keras") and trained["steps"] == 2

    metrics = _check(_solo_tf(["evaluate", "--model", "run/model.keras"], tmp_path), "evaluate")
    assert metrics["num_images"] == 2 and 0.0 <= metrics["AP"] <= 1.0

    pred = _check(_solo_tf(["predict", "--model", "run/model.keras", "photo.png", "--out", "pred",
                            "--score-thr", "0"], tmp_path), "predict")
    assert pred["pictures"] == [os.path.join("pred", "photo_pred.png")]
    results = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert len(results) == pred["detections"]
    assert all(r["segmentation"]["size"] == [48, 80] for r in results)

    if optimizer == "sgd":  # one conversion is enough here; tests/test_export.py covers the formats
        exported = _check(_solo_tf(["export", "--model", "run/model.keras", "--format", "tflite",
                                    "--out", "run/model.tflite"], tmp_path), "export")
        assert exported["path"] == os.path.join("run", "model.tflite") and exported["size_bytes"] > 0
        assert (tmp_path / "run" / "model.tflite.json").is_file()


def test_errors_are_one_quiet_line(tmp_path):
    proc = _solo_tf(["evaluate", "--model", "missing.keras"], tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == ["solo-tf: model file not found: missing.keras"]


def test_version_is_quick_and_names_the_package(tmp_path):
    proc = _solo_tf(["--version"], tmp_path, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("solo-tf ") and "keras" in proc.stdout
    assert proc.stderr == ""


@pytest.mark.slow
def test_a_model_trained_on_tensorflow_predicts_in_a_jax_process(tmp_path):
    _write_run_inputs(tmp_path, "adamw")
    _check(_solo_tf(["train", "--config", "config.yaml", "--out", "run"], tmp_path), "train")
    pred = _check(_solo_tf(["predict", "--model", "run/model.keras", "photo.png", "--out", "pred"], tmp_path,
                           KERAS_BACKEND="jax"), "predict on JAX")
    assert pred["pictures"] == [os.path.join("pred", "photo_pred.png")]


def test_a_killed_run_resumes_from_its_last_checkpoint_and_ends_at_the_planned_steps(tmp_path):
    """SIGKILL mid-run, then the same command with --resume latest: the optimizer's state
    (iteration count, so the schedule's position) comes back and the run ends at the planned
    step count, its history continuing where the checkpoint left it."""
    import csv
    import signal
    import time

    from solo_tf.saving import latest_checkpoint

    _write_run_inputs(tmp_path, "sgd")
    epochs = 12  # one step each, a checkpoint each: killed at the third, well before the end
    args = ["train", "--config", "config.yaml", "--out", "run", "--epochs", str(epochs), "--steps-per-epoch", "1",
            "--keep-checkpoints", "2"]
    environ = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.Popen([sys.executable, "-m", "solo_tf.cli", *args], cwd=tmp_path, env=environ,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ckpts = tmp_path / "run" / "checkpoints"
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            latest = latest_checkpoint(ckpts)
            if latest is not None and latest.name >= "epoch_003.weights.h5":
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.returncode
    assert not (tmp_path / "run" / "model.keras").exists(), "the run finished before it was killed"
    killed_at = latest_checkpoint(ckpts)
    done = int(killed_at.name[len("epoch_"):-len(".weights.h5")])
    assert 3 <= done < epochs

    resumed = _solo_tf(args + ["--resume", "latest"], tmp_path)
    summary = _check(resumed, "resumed train")
    assert summary["steps"] == epochs
    assert "resumed from" in resumed.stderr
    with open(tmp_path / "run" / "history.csv") as f:
        rows = [int(r["epoch"]) for r in csv.DictReader(f)]
    assert rows[-1] == epochs - 1 and rows == sorted(set(rows)), rows[:5] + rows[-5:]
    assert set(range(done, epochs)) <= set(rows)
