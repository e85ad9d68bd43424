"""Peak training memory (RSS) and step time against the Dice loss's positive slots.

Each setting of ``loss.max_positives`` runs in its own process (peak RSS is per process):
the model is built, then ``model.fit`` runs ``--steps`` steps on generated shapes batches at
the config's canvas. Printed per setting: RSS after building, peak RSS, the peak's growth
per image of the batch, the Dice slots per image and the median step time.

    python benchmarks/bench_memory.py                                     # SOLOv2-R50 800x1344, batch 2
    python benchmarks/bench_memory.py --config solo_r50 --slots none 256
    python benchmarks/bench_memory.py --image-size 512 512 --steps 3

``none`` is the bound (9 cells x 2 levels x data.max_instances per image: what every
image built before the cap existed); numbers are the cap.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def rss_mb():
    """Current resident set size of this process, MB (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def child(args):
    """One setting, in this process: build, fit, print one JSON line."""
    import statistics
    import time

    import keras

    from solo_tf.config import load_config
    from solo_tf.data.shapes import ShapesSourceConfig
    from solo_tf.data.pipeline import prepare, shapes_source
    from solo_tf.losses import SOLOLoss
    from solo_tf.model import SOLO

    cfg = load_config(args.config)
    if args.image_size:
        cfg.model.image_size = tuple(args.image_size)
    setting = args.slots[0]
    cfg.loss.max_positives = None if setting == "none" else int(setting)
    cfg.model.num_classes = 6  # the generated shapes' classes (the COCO presets have 80)
    cfg.labels.class_names = cfg.labels.category_ids = None
    cfg.data.source = "shapes"
    cfg.data.shapes = ShapesSourceConfig(num_train=args.batch * 2, image_size=tuple(cfg.model.image_size),
                                         max_objects=8)
    src = shapes_source(cfg.data, "train", cfg.model.num_classes)
    ds = prepare(src.records, cfg.model, cfg.data, args.batch, training=False).take(2).cache().repeat()
    keras.utils.set_random_seed(0)
    model = SOLO(cfg.model, cfg.loss)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9, global_clipnorm=35.0))
    built = rss_mb()
    times = []

    class Timer(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.t = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            times.append(time.perf_counter() - self.t)

    model.fit(ds, epochs=1, steps_per_epoch=args.steps, verbose=0, callbacks=[Timer()])
    loss = SOLOLoss(cfg.model, cfg.loss)
    groups = model.variant.loss_level_groups()
    slots = sum(loss.dice_slots(cfg.data.max_instances, g) for g in groups)
    peak = peak_rss_mb()
    print(json.dumps({
        "slots": setting, "dice_slots_per_image": slots, "built_mb": round(built), "peak_mb": round(peak),
        "peak_growth_per_image_mb": round((peak - built) / args.batch),
        "step_s": round(statistics.median(times[1:] if len(times) > 1 else times), 2), "first_step_s": round(times[0], 1),
    }))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="solov2_r50")
    p.add_argument("--image-size", type=int, nargs=2, default=[800, 1344], metavar=("H", "W"))
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=2, help="fit steps per setting (the first includes tracing)")
    p.add_argument("--slots", nargs="+", default=["none", "256"], help="loss.max_positives settings ('none' = bound)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    import platform

    print(f"config={args.config} image_size={args.image_size} batch={args.batch} steps={args.steps} "
          f"cpus={os.cpu_count()} machine={platform.machine()}")
    print(f"{'max_positives':>13} {'slots/img':>9} {'built MB':>9} {'peak MB':>8} {'growth/img MB':>13} "
          f"{'step s':>7} {'first s':>7}")
    for slots in args.slots:
        cmd = [sys.executable, __file__, "--child", "--config", args.config, "--batch", str(args.batch),
               "--steps", str(args.steps), "--slots", slots, "--image-size", *map(str, args.image_size)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            print(f"{slots:>13} failed: {res.stderr.strip().splitlines()[-1] if res.stderr.strip() else res.returncode}")
            continue
        r = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"{slots:>13} {r['dice_slots_per_image']:>9} {r['built_mb']:>9} {r['peak_mb']:>8} "
              f"{r['peak_growth_per_image_mb']:>13} {r['step_s']:>7} {r['first_step_s']:>7}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
