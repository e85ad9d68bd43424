"""Data-parallel training: two replicas train as one device on the same global batch
(MirroredStrategy over two logical CPUs on TensorFlow, keras.distribution.DataParallel over
two host devices on JAX), and two worker processes on localhost (TF_CONFIG) agree.

Each run is a subprocess: logical devices must be set before the backend starts."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_model_config

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent


def _batch(path, count=8):
    """Shapes images with different object counts (so the replicas' positives differ) and
    their padded ground truth, saved for the subprocesses."""
    from solo_tf.config import DataConfig
    from solo_tf.data.shapes import ShapesSourceConfig
    from solo_tf.data.pipeline import prepare, shapes_source

    cfg = tiny_model_config("solov2", image_size=(64, 64), num_classes=6)
    data = DataConfig(max_instances=6, flip=False, shapes=ShapesSourceConfig(
        num_train=count, image_size=(64, 64), max_objects=4, object_size=(0.25, 0.6)))
    images, y = next(iter(prepare(shapes_source(data, "train", 6).records, cfg, data, batch_size=count,
                                  training=False)))
    np.savez(path, images=images.numpy(), **{k: v.numpy() for k, v in y.items()})
    return y


# The child: one model trained on one device and one trained data-parallel from the same
# initial weights on the same global batches; losses and weights written to OUT.
CHILD = r"""
import json, sys
import numpy as np
backend, out = sys.argv[1], sys.argv[2]
if backend == "tensorflow":
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from conftest import tiny_model_config
from solo_tf.model import SOLO

data = dict(np.load(out + "/batch.npz"))
x = data.pop("images")
cfg = tiny_model_config("solov2", image_size=(64, 64), num_classes=6, norm_eval=True)

def fit(model, weights):
    model.set_weights(weights)
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9, global_clipnorm=35.0))
    h = model.fit(x, data, batch_size=4, epochs=1, shuffle=False, verbose=0)
    return {k: float(v[-1]) for k, v in h.history.items()}, model.get_weights()

keras.utils.set_random_seed(0)
single = SOLO(cfg)
w0 = single.get_weights()
one_logs, one_w = fit(single, w0)
if backend == "tensorflow":
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    replicas = strategy.num_replicas_in_sync
    with strategy.scope():
        par = SOLO(cfg)
        par_logs, par_w = fit(par, w0)
else:
    devices = keras.distribution.list_devices()
    replicas = len(devices)
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    par_logs, par_w = fit(SOLO(cfg), w0)
np.savez(out + "/weights.npz", *[a - b for a, b in zip(one_w, par_w)], *[a - w for a, w in zip(one_w, w0)])
json.dump({"replicas": replicas, "one": one_logs, "par": par_logs, "n": len(w0)}, open(out + "/logs.json", "w"))
"""


def _run_child(tmp_path, backend, **env):
    environ = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3",
                   PYTHONPATH=os.pathsep.join([str(REPO), str(HERE)]), **env)
    res = subprocess.run([sys.executable, "-c", CHILD, backend, str(tmp_path)], cwd=REPO, env=environ,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    logs = json.loads((tmp_path / "logs.json").read_text())
    arrays = np.load(tmp_path / "weights.npz")
    n = logs["n"]
    diffs = [arrays[f"arr_{i}"] for i in range(n)]
    moved = [arrays[f"arr_{i}"] for i in range(n, 2 * n)]
    return logs, diffs, moved


def _assert_same_training(logs, diffs, moved):
    assert logs["replicas"] == 2
    for key in ("loss", "focal_loss", "dice_loss"):
        np.testing.assert_allclose(logs["par"][key], logs["one"][key], rtol=2e-4, err_msg=key)
    assert max(float(np.abs(m).max()) for m in moved) > 1e-3, "training did not move the weights"
    worst = max(float(np.abs(d).max()) for d in diffs)
    assert worst < 1e-4, f"weights after two steps differ by up to {worst}"


def test_two_mirrored_replicas_train_as_one_device(tmp_path):
    y = _batch(tmp_path / "batch.npz")
    # the halves of each global batch hold different numbers of objects: normalising by each
    # replica's own positives would give another loss
    counts = (y["classes"].numpy() >= 0).sum(axis=1)
    assert counts[:2].sum() != counts[2:4].sum() or counts[4:6].sum() != counts[6:].sum()
    _assert_same_training(*_run_child(tmp_path, "tensorflow"))


def test_jax_data_parallel_trains_as_one_device(tmp_path):
    _batch(tmp_path / "batch.npz")
    _assert_same_training(*_run_child(tmp_path, "jax", JAX_PLATFORMS="cpu",
                                      XLA_FLAGS="--xla_force_host_platform_device_count=2"))


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_two_workers_on_localhost_agree_on_the_weights(tmp_path):
    """`solo-tf train --strategy multiworker` in two processes joined by TF_CONFIG."""
    from solo_tf.config import Config, DataConfig, TrainConfig
    from solo_tf.data.shapes import ShapesSourceConfig

    cfg = Config(
        name="tiny_multiworker",
        model=tiny_model_config("solov2", image_size=(64, 64), num_classes=6, norm_eval=True),
        data=DataConfig(max_instances=6, shapes=ShapesSourceConfig(num_train=8, num_val=2, image_size=(64, 64),
                                                                     max_objects=3)),
        train=TrainConfig(epochs=1, steps_per_epoch=3, batch_size=4, optimizer="sgd", warmup_iters=1),
    )
    cfg.to_yaml(tmp_path / "config.yaml")
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    procs = []
    for index in range(2):
        environ = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
        environ.update(TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow",
                       TF_CONFIG=json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "solo_tf.cli", "train", "--config", "config.yaml", "--out", "run",
             "--strategy", "multiworker"],
            cwd=tmp_path, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    import time

    deadline = time.monotonic() + 600
    try:  # a worker that fails leaves the other waiting on its collectives: stop both then
        while time.monotonic() < deadline and any(p.poll() is None for p in procs):
            if any(p.poll() not in (None, 0) for p in procs):
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    outs = [p.communicate() for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-4000:]
        assert json.loads(out.strip().splitlines()[-1])["steps"] == 3
    from solo_tf.saving import load_model

    chief = load_model(tmp_path / "run" / "model.keras")
    other = load_model(tmp_path / "run" / "worker_1" / "model.keras")
    for a, b in zip(chief.get_weights(), other.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert "2 replicas" in outs[0][1]


@pytest.mark.parametrize("name", ["bogus"])
def test_an_unknown_strategy_is_named(name):
    from solo_tf.distribute import make_strategy

    with pytest.raises(ValueError, match="bogus"):
        make_strategy(name)
