"""In-graph grid target assignment against a straightforward per-object loop, same outputs.

Batch 8 x 20 objects (default) on the SOLOv2 head (5 levels, grids 40..12) at 800x1344: the
loop (tests/targets_reference.py, numpy, one object and one cell at a time, what a direct
port of the reference does) against :func:`solo_tf.targets.assign_grids` compiled on the
backend (tf.function on TensorFlow, jax.jit on JAX). Prints medians over ``--repeats`` runs
and checks that both give the same grids.

    python benchmarks/bench_targets.py                 # CPU, this backend
    python benchmarks/bench_targets.py --quick         # batch 2 x 10 objects
    KERAS_BACKEND=jax python benchmarks/bench_targets.py
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
import numpy as np  # noqa: E402

from solo_tf.targets import assign_grids  # noqa: E402
from targets_reference import loop_assign, random_objects  # noqa: E402

GRIDS = (40, 36, 24, 16, 12)
RANGES = ((1, 96), (48, 192), (96, 384), (192, 768), (384, 2048))


def compiled(image_size):
    def fn(classes, boxes, centers, valid):
        grids = assign_grids(classes, boxes, centers, valid, image_size, GRIDS, RANGES)
        return [g for pair in grids for g in pair]

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=False)
    if keras.backend.backend() == "jax":
        import jax

        return jax.jit(fn)
    return fn


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--objects", type=int, default=20)
    p.add_argument("--image-size", type=int, nargs=2, default=[800, 1344])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--quick", action="store_true", help="batch 2 x 10 objects, 5 repeats")
    args = p.parse_args()
    if args.quick:
        args.batch, args.objects, args.repeats = 2, 10, 5
    size = tuple(args.image_size)
    classes, boxes, centers, valid = random_objects(np.random.RandomState(0), args.batch, args.objects, size, fill=1.0)
    fn = compiled(size)
    inputs = [keras.ops.convert_to_tensor(a) for a in (classes, boxes, centers, valid)]

    def graph():
        return [keras.ops.convert_to_numpy(t) for t in fn(*inputs)]

    graph()  # trace / compile
    t_graph, got = timed(graph, args.repeats)
    t_loop, expected = timed(lambda: loop_assign(classes, boxes, centers, valid, size, GRIDS, RANGES),
                             max(3, args.repeats // 4))
    same = all(np.array_equal(g, e) for g, e in zip(got, [a for pair in expected for a in pair]))
    print(f"backend={keras.backend.backend()} device={keras.distribution.list_devices()[0]} "
          f"batch={args.batch} objects={args.objects} image={size[0]}x{size[1]} levels={len(GRIDS)}")
    print(f"per-object loop  {t_loop * 1000:9.2f} ms")
    print(f"in-graph         {t_graph * 1000:9.2f} ms")
    print(f"speed-up         {t_loop / t_graph:9.1f}x   same outputs: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
