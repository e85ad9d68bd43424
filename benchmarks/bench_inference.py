"""Inference latency per image (model forward + in-graph decoder with Matrix NMS) on CPU.

Untrained weights with ``score_thr=0`` so the decoder always works on a full candidate set
(the worst case for Matrix NMS). Median of ``--repeats`` timed calls after warm-up.

    python benchmarks/bench_inference.py                          # shapes_demo, light R18
    python benchmarks/bench_inference.py --configs solov2_r50     # a paper model (slow on CPU)
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

from solo_tf.config import PostprocessConfig, load_config  # noqa: E402
from solo_tf.inference import build_inference_model  # noqa: E402
from solo_tf.model import SOLO  # noqa: E402


def time_calls(fn, x, repeats, warmup=2):
    for _ in range(warmup):
        fn(x)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--configs", nargs="*", default=["shapes_demo", "solov2_light_r18"])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--batch", type=int, default=1)
    args = p.parse_args()
    print(f"backend={keras.backend.backend()} cpus={os.cpu_count()} keras={keras.__version__}")
    print(f"{'config':<18} {'input':>10} {'batch':>5} {'model ms':>9} {'model+decode ms/img':>20}")
    for name in args.configs:
        cfg = load_config(name)
        model = SOLO(cfg.model)
        post = PostprocessConfig(**{**vars(cfg.postprocess), "score_thr": 0.0, "update_thr": 0.0})
        infer = build_inference_model(model, post)
        h, w = cfg.model.image_size
        x = np.random.RandomState(0).uniform(0, 255, (args.batch, h, w, 3)).astype("float32")
        raw = time_calls(model.predict_on_batch, x, args.repeats)
        full = time_calls(infer.predict_on_batch, x, args.repeats)
        print(f"{name:<18} {h:>4}x{w:<5} {args.batch:>5} {raw * 1000 / args.batch:>9.1f} "
              f"{full * 1000 / args.batch:>20.1f}", flush=True)


if __name__ == "__main__":
    main()
