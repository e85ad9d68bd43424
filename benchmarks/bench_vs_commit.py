"""Train-step speed of this tree against an earlier commit, side by side in one run.

A speed-up quoted as a ratio measured on one machine in one run: the earlier commit is
checked out into a temporary git worktree, and the same measurement (``model.fit`` steps of a
preset's model at a given size and batch, on cached shapes batches prepared by each tree's own
pipeline, the median step after warm-up) runs in a fresh process for each tree, alternating
``--rounds`` times so that the machine's drift falls on both. Only the API both trees share is
used (``load_config``, ``SOLO``, ``shapes_source``, ``prepare``, ``add_grid_targets``).

    python benchmarks/bench_vs_commit.py                      # vs 917b6dd (issue 10's code), SOLOv2-R50 512x512 b2
    python benchmarks/bench_vs_commit.py --ref HEAD~3 --precision float32 mixed_bfloat16

``--precision`` lists the dtype policies to measure this tree with; the earlier commit is
measured in float32 (what it had).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Runs inside the tree being measured (its own solo_tf on sys.path); prints one JSON line.
DRIVER = r"""
import json, os, statistics, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
root, config, h, w, batch, steps, warmup, precision, coco = sys.argv[1:10]
sys.path.insert(0, root)
import keras
import tensorflow as tf
keras.config.set_dtype_policy(precision)
from solo_tf.config import DataConfig, load_config
from solo_tf.data.shapes import ShapesSourceConfig
from solo_tf.data.grid_targets import add_grid_targets
from solo_tf.data.pipeline import prepare, shapes_source
from solo_tf.data.sources import coco_source
from solo_tf.model import SOLO

cfg = load_config(config)
cfg.model.image_size = (int(h), int(w))
batch, steps, warmup = int(batch), int(steps), int(warmup)
if coco != "-":  # COCO-like records: the preset's classes and max_instances
    data_cfg = cfg.data
    data_cfg.coco.train_annotations, data_cfg.coco.train_images = coco.split(",")
    data_cfg.multiscale = None
    src = coco_source(data_cfg, "train", cfg.model.num_classes)
else:
    cfg.model.num_classes = 6  # the shapes classes
    data_cfg = DataConfig(max_instances=8, shapes=ShapesSourceConfig(num_train=batch * 4, image_size=(int(h), int(w))))
    src = shapes_source(data_cfg, "train", cfg.model.num_classes)
ds = prepare(src.records, cfg.model, data_cfg, batch, training=True).take(4).cache().repeat()
ds = add_grid_targets(ds, cfg.model).prefetch(2)
model = SOLO(cfg.model, cfg.loss)
model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9, global_clipnorm=35.0))
times = []
class T(keras.callbacks.Callback):
    def on_train_batch_begin(self, b, logs=None):
        self.t = time.perf_counter()
    def on_train_batch_end(self, b, logs=None):
        times.append(time.perf_counter() - self.t)
model.fit(ds, epochs=1, steps_per_epoch=warmup + steps, verbose=0, callbacks=[T()], shuffle=False)
step = statistics.median(times[warmup:])
print(json.dumps({"step_s": step, "img_s": batch / step, "params": int(model.count_params())}))
"""


def measure(tree: Path, args, precision: str) -> dict:
    env = dict(os.environ, KERAS_BACKEND="tensorflow", PYTHONPATH=str(tree))
    cmd = [sys.executable, "-c", DRIVER, str(tree), args.config, *map(str, args.size), str(args.batch),
           str(args.steps), str(args.warmup), precision, args.coco or "-"]
    out = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"measurement in {tree} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ref", default="917b6dd", help="the earlier commit (default: the code issue 10 was filed against)")
    p.add_argument("--config", default="solov2_r50")
    p.add_argument("--size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"))
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--precision", nargs="+", default=["float32", "mixed_bfloat16"])
    p.add_argument("--data", choices=("coco", "shapes"), default="coco",
                   help="coco: bench_pipeline's synthetic COCO records (480x640, ~7 polygon objects of 80 "
                        "classes), the preset's num_classes and max_instances; shapes: the shapes source "
                        "(6 classes, at most 6 objects, max_instances 8)")
    args = p.parse_args()
    args.coco = None

    with tempfile.TemporaryDirectory() as tmp:
        if args.data == "coco":
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from bench_pipeline import write_synthetic_coco

            ann, images = write_synthetic_coco(Path(tmp) / "coco", 4 * args.batch)
            args.coco = f"{ann},{images}"
        old, new = Path(tmp) / "ref", Path(tmp) / "this"
        # this tree is measured from a copy, so that editing it during the run changes nothing
        shutil.copytree(ROOT / "solo_tf", new / "solo_tf", ignore=shutil.ignore_patterns("__pycache__"))
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old), args.ref],
                       check=True, capture_output=True)
        try:
            runs = {f"{args.ref} float32": [], **{f"this tree {p}": [] for p in args.precision}}
            print(f"cpus={os.cpu_count()} config={args.config} size={tuple(args.size)} batch={args.batch} "
                  f"steps={args.steps} (median, after {args.warmup} warm-up) rounds={args.rounds}", flush=True)
            for r in range(args.rounds):
                runs[f"{args.ref} float32"].append(measure(old, args, "float32"))
                print(f"round {r}: {args.ref} float32 {runs[f'{args.ref} float32'][-1]['step_s']:.2f} s/step", flush=True)
                for prec in args.precision:
                    runs[f"this tree {prec}"].append(measure(new, args, prec))
                    print(f"round {r}: this tree {prec} {runs[f'this tree {prec}'][-1]['step_s']:.2f} s/step", flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], capture_output=True)
    base = statistics.median(r["step_s"] for r in runs[f"{args.ref} float32"])
    print(f"{'code':<34} {'s/step':>7} {'img/s':>6} {'speed-up':>8}")
    for name, rs in runs.items():
        step = statistics.median(r["step_s"] for r in rs)
        print(f"{name:<34} {step:>7.2f} {args.batch / step:>6.2f} {base / step:>7.2f}x")


if __name__ == "__main__":
    main()
