"""Where a train step's time goes: forward + backward of growing parts of the model, and FLOPs.

Times (median of ``--repeats``, after one warm-up call) the gradient computation of:
the backbone alone; backbone + FPN; the whole network (heads and mask branch, no loss); the
whole train step without the optimizer update (targets assigned in the model); and the same
with the grid targets given, as the tf.data pipeline supplies them. Each part's cost is the
difference to the previous line. FLOPs come from the TensorFlow profiler on the traced graphs
(backbone step and whole step), so the FLOP rate of each can be compared. Last, the heads'
stacked convolutions alone at the model's grid sizes: with the backbone + FPN line, the time
that only fewer FLOPs or faster convolutions can take away.
TensorFlow backend. Synthetic batch: 8 rectangles per image (``bench_gpu.synthetic_batch``).

    python benchmarks/profile_step.py                                   # SOLOv2-R50, 512x512, batch 2
    python benchmarks/profile_step.py --config solov2_light_r18 --size 448 768
    python benchmarks/profile_step.py --precision mixed_bfloat16               # bf16 on CPU (oneDNN)
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench_gpu import synthetic_batch  # noqa: E402
from solo_tf.config import load_config  # noqa: E402
from solo_tf.model import SOLO  # noqa: E402
from solo_tf.targets import assign_grids  # noqa: E402


def median_s(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        tf.nest.map_structure(lambda v: v.numpy(), fn())
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def gradient_of(forward, variables):
    @tf.function
    def step():
        with tf.GradientTape() as tape:
            out = forward()
            loss = tf.add_n([tf.reduce_sum(tf.cast(v, tf.float32)) * 1e-6 for v in tf.nest.flatten(out)])
        return tape.gradient(loss, variables)

    return step


def flops(fn):
    graph = fn.get_concrete_function().graph
    opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    return tf.compat.v1.profiler.profile(graph=graph, options=opts).total_float_ops


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="solov2_r50")
    p.add_argument("--size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"))
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--precision", default="float32", choices=("float32", "mixed_bfloat16", "mixed_float16"),
                   help="Keras dtype policy of the model (mixed_bfloat16: oneDNN's bf16 kernels on CPUs with "
                        "AVX512_BF16 / AMX)")
    args = p.parse_args()
    keras.config.set_dtype_policy(args.precision)
    cfg = load_config(args.config)
    cfg.model.image_size = tuple(args.size)
    m = cfg.model
    model = SOLO(m, cfg.loss)
    images, y = synthetic_batch(args.batch, *args.size, m.num_classes, slots=16)
    x = tf.constant(images)
    y = {k: tf.constant(v) for k, v in y.items()}
    backbone = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    normalize, fpn = model.get_layer("normalize"), model.get_layer("fpn")
    variables = model.trainable_variables

    def train_step(targets):
        @tf.function
        def step():
            with tf.GradientTape() as tape:
                loss = model.compute_loss(x=x, y=targets, y_pred=model(x, training=True))
            return tape.gradient(loss, variables)

        return step

    valid = tf.logical_and(tf.reduce_max(tf.cast(y["masks"], tf.int32), [2, 3]) > 0, y["classes"] >= 0)
    with_grids = dict(y)
    for level, (category, owner) in enumerate(assign_grids(y["classes"], y["boxes"], y["centers"], valid,
                                                           m.image_size, m.num_grids, m.scale_ranges, m.pos_scale)):
        with_grids[f"grid_category_{level}"], with_grids[f"grid_owner_{level}"] = category, owner

    backbone_step = gradient_of(lambda: backbone(normalize(x), training=True), backbone.trainable_variables)
    parts = [
        ("backbone", backbone_step),
        ("+ FPN", gradient_of(lambda: fpn(backbone(normalize(x), training=True)),
                              backbone.trainable_variables + fpn.trainable_variables)),
        ("+ heads and mask branch (no loss)", gradient_of(lambda: model(x, training=True), variables)),
        ("+ loss, targets in the model", train_step(y)),
        ("+ loss, grid targets given", train_step(with_grids)),
    ]
    print(f"{args.config} {args.size[0]}x{args.size[1]} batch {args.batch} {args.precision}, forward + backward, "
          f"median of {args.repeats}; cpus={os.cpu_count()} tf={tf.__version__}")
    for name, fn in parts:
        print(f"  {name:<36} {median_s(fn, args.repeats):7.2f} s", flush=True)
    whole = parts[3][1]
    f_backbone, f_whole = flops(backbone_step), flops(whole)
    t_backbone, t_whole = median_s(backbone_step, args.repeats), median_s(whole, args.repeats)
    print(f"  FLOPs: backbone step {f_backbone / 1e9:.0f} G ({f_backbone / t_backbone / 1e9:.0f} GFLOP/s), "
          f"whole step {f_whole / 1e9:.0f} G ({f_whole / t_whole / 1e9:.0f} GFLOP/s)")
    # What the heads' convolutions alone cost: each level's stacked 3x3 convs (head_channels
    # in and out, both branches) on a (batch, S, S, C) input, forward and backward (input and
    # weight gradients, as inside the network). With the backbone + FPN line above, this is
    # the time no overhead removal can take away at this precision.
    c, heads_s = m.head_channels, 0.0
    for grid in m.num_grids:
        conv = keras.layers.Conv2D(c, 3, padding="same", use_bias=False)
        feat = tf.Variable(tf.random.normal((args.batch, grid, grid, c)))
        conv.build(feat.shape)
        heads_s += 2 * m.stacked_convs * median_s(gradient_of(lambda: conv(feat), conv.trainable_variables + [feat]),
                                                  max(args.repeats, 5))
    print(f"  the heads' {2 * m.stacked_convs} stacked {c}->{c} 3x3 convs per level alone, fwd+bwd at grids "
          f"{tuple(m.num_grids)}: {heads_s:.2f} s")


if __name__ == "__main__":
    main()
