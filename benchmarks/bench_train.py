"""Training throughput (images/s) of a config on this machine, and where targets are built.

For each config it times ``model.fit`` steps over shapes batches that are generated and
prepared once and then cached (so the figure is the model's train step plus, for
``targets_in=pipeline``, the tf.data grid-assignment map), after warm-up steps that are
not counted. Both target placements are measured side by side in one run.

    python benchmarks/bench_train.py                       # tiny + shapes_demo, TF backend
    KERAS_BACKEND=jax python benchmarks/bench_train.py     # JAX (targets in the model only)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from solo_tf.config import DataConfig, load_config  # noqa: E402
from solo_tf.data.shapes import ShapesSourceConfig  # noqa: E402
from solo_tf.data.grid_targets import add_grid_targets, grid_targets_supported  # noqa: E402
from solo_tf.data.pipeline import prepare, shapes_source  # noqa: E402
from solo_tf.model import SOLO  # noqa: E402


class StepTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.times = []

    def on_train_batch_begin(self, batch, logs=None):
        self._t = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self._t)


def measure(model_cfg, batch_size, targets_in, steps, warmup, max_instances):
    data_cfg = DataConfig(max_instances=max_instances,
                          shapes=ShapesSourceConfig(num_train=batch_size * 4, image_size=tuple(model_cfg.image_size)))
    src = shapes_source(data_cfg, "train", model_cfg.num_classes)
    ds = prepare(src.records, model_cfg, data_cfg, batch_size, training=True).take(4).cache().repeat()
    if targets_in == "pipeline":
        ds = add_grid_targets(ds, model_cfg)
    ds = ds.prefetch(2)
    model = SOLO(model_cfg)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9, global_clipnorm=35.0))
    timer = StepTimer()
    model.fit(ds, epochs=1, steps_per_epoch=warmup + steps, verbose=0, callbacks=[timer], shuffle=False)
    per_step = statistics.median(timer.times[warmup:])
    return batch_size / per_step, per_step


def main():
    from conftest import tiny_model_config

    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--configs", nargs="*", default=["tiny", "shapes_demo"])
    args = p.parse_args()
    placements = ["pipeline", "model"] if grid_targets_supported() else ["model"]
    print(f"backend={keras.backend.backend()} cpus={os.cpu_count()} tf={tf.__version__} keras={keras.__version__}")
    print(f"{'config':<14} {'targets_in':<10} {'batch':>5} {'img/s':>8} {'ms/step':>8}")
    for name in args.configs:
        if name == "tiny":
            cfg, batch, n = tiny_model_config("solov2", image_size=(64, 64), num_classes=6), 8, 8
        else:
            full = load_config(name)
            cfg, batch, n = full.model, full.train.batch_size, full.data.max_instances
        for where in placements:
            ips, step = measure(cfg, batch, where, args.steps, args.warmup, n)
            print(f"{name:<14} {where:<10} {batch:>5} {ips:>8.1f} {step * 1000:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
