"""The decoder's share of inference latency per preset, on this machine.

For each preset: the network's forward pass alone, and the in-graph decoder alone (2x2
local max, top ``nms_pre`` candidates, their masks, maskness, Matrix NMS, K survivors) on
that forward pass's outputs, with stride-4 masks (what the exported graphs return) and with
the masks upsampled to the canvas (what ``Predictor`` and evaluation use). Untrained weights
and ``score_thr = update_thr = 0``, so every candidate passes: the decoder's worst case.
Median of ``--repeats`` calls after two warm-up calls; one image (batch 1), each preset at
its own canvas unless ``--image-size`` is given.

    python benchmarks/bench_decoder.py
    python benchmarks/bench_decoder.py --configs solov2_r50 --image-size 512 512
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

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

from solo_tf.config import PostprocessConfig, load_config  # noqa: E402
from solo_tf.decoder import decode  # noqa: E402
from solo_tf.model import SOLO  # noqa: E402

PRESETS = ["shapes_demo", "solov2_mobile_mnv3l_448", "solov2_light_mnv3l_448", "decoupled_solo_light_mnv3l_448",
           "solov2_light_r18", "solov2_r50", "decoupled_solo_r50", "solo_r50"]


def median_ms(fn, arg, repeats):
    for _ in range(2):
        ops.convert_to_numpy(keras.tree.flatten(fn(arg))[0])
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        keras.tree.map_structure(ops.convert_to_numpy, fn(arg))
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def compiled(fn):
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.function(fn)
    if keras.backend.backend() == "jax":
        import jax

        return jax.jit(fn)
    return fn


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="*", default=PRESETS)
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"))
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    print(f"backend={keras.backend.backend()} cpus={os.cpu_count()} keras={keras.__version__}")
    print(f"{'config':<32} {'canvas':>9} {'nms_pre':>7} {'nms_stride':>10} {'forward ms':>10} "
          f"{'decode s4 ms':>12} {'share':>6} {'decode full ms':>14} {'share':>6}", flush=True)
    for name in args.configs:
        cfg = load_config(name)
        if args.image_size:
            cfg.model.image_size = tuple(args.image_size)
        model = SOLO(cfg.model)
        post = PostprocessConfig(**{**vars(cfg.postprocess), "score_thr": 0.0, "update_thr": 0.0})
        h, w = cfg.model.image_size
        x = ops.convert_to_tensor(np.random.RandomState(0).uniform(0, 255, (1, h, w, 3)).astype("float32"))
        forward = compiled(lambda v: model(v, training=False))
        raw = forward(x)
        t_fwd = median_ms(forward, x, args.repeats)
        row = []
        for full in (False, True):
            dec = compiled(lambda o, full=full: decode(o, cfg.model, post, full_size_masks=full))
            t = median_ms(dec, raw, args.repeats)
            row += [t, t / (t + t_fwd)]
        print(f"{name:<32} {h:>4}x{w:<4} {post.nms_pre:>7} {getattr(post, 'nms_stride', 4):>10} {t_fwd:>10.1f} "
              f"{row[0]:>12.1f} {row[1]:>6.1%} {row[2]:>14.1f} {row[3]:>6.1%}", flush=True)


if __name__ == "__main__":
    main()
