"""The input pipeline's previous per-record preparation, kept as a reference for tests.

It letterboxes each record's image and all of its masks as one tensor onto the full canvas,
measures boxes and centres of mass on the full-resolution resized masks and pools them 4x4 to
stride 4: exact, and slow (every object touched at the canvas's full resolution). The library's
``solo_tf.data.pipeline._prepare_one`` builds the same targets straight at stride 4 from the
source masks; ``tests/test_pipeline_fast.py`` checks that the two agree.
"""

from __future__ import annotations

import tensorflow as tf

from solo_tf.data.pipeline import _MASK_STRIDE, _validate
from solo_tf.preprocess import letterbox


def prepare_one_reference(record, rand, H, W, N, num_classes, multiscale, max_long, flip):
    """The previous ``pipeline._prepare_one``, kept as the reference the fast one is checked
    against: every mask resized to the full canvas, boxes and centres measured there, then
    pooled 4x4 to stride 4."""
    with tf.control_dependencies(_validate(record, num_classes)):
        image = tf.identity(record["image"])
        masks = tf.identity(record["masks"])
        classes = tf.cast(record["classes"], tf.int32)
    h = tf.shape(image)[0]
    w = tf.shape(image)[1]
    seeds = tf.random.experimental.stateless_split(tf.stack([rand, tf.constant(7, tf.int64)]), 2)

    short = None
    if multiscale is not None:
        short = tf.random.stateless_uniform(
            [], seeds[0], minval=multiscale[0], maxval=multiscale[1] + 1, dtype=tf.int32
        )
    # Image and masks letterboxed as one tensor: identical geometry, and never zero channels
    # (tf.image.resize rejects those, which an image without objects would give).
    stacked = tf.concat([tf.cast(image, tf.uint8), tf.cast(tf.transpose(masks, [1, 2, 0]), tf.uint8)], -1)
    stacked, (nh, nw), scale = letterbox(stacked, (H, W), short_side=short, max_long_side=max_long)
    if flip:
        do_flip = tf.random.stateless_uniform([], seeds[1]) < 0.5
        stacked = tf.cond(do_flip, lambda: flip_valid(stacked, nw), lambda: stacked)
    out_image = tf.ensure_shape(stacked[..., :3], (H, W, 3))
    full = tf.cast(stacked[..., 3:] >= 0.5, tf.float32)  # (H, W, n)

    # Boxes and centres of mass from the full-resolution resized masks.
    area = tf.reduce_sum(full, [0, 1])  # (n,)
    rows = tf.cast(tf.reduce_max(full, 1) > 0, tf.int32)  # (H, n)
    cols = tf.cast(tf.reduce_max(full, 0) > 0, tf.int32)  # (W, n)
    y1 = tf.argmax(rows, 0, output_type=tf.int32)
    y2 = H - tf.argmax(tf.reverse(rows, [0]), 0, output_type=tf.int32)
    x1 = tf.argmax(cols, 0, output_type=tf.int32)
    x2 = W - tf.argmax(tf.reverse(cols, [0]), 0, output_type=tf.int32)
    boxes = tf.cast(tf.stack([x1, y1, x2, y2], -1), tf.float32)  # (n, 4)
    # float64 sums: the previous pipeline summed in float32 over the (H, W, n) canvas, and that
    # accumulation drifted by up to 0.4 px on large objects at 800x1344 (found when the fast
    # pipeline was checked against it); the reference here is the exact centre.
    full64 = tf.cast(full, tf.float64)
    safe = tf.maximum(tf.reduce_sum(full64, [0, 1]), 1.0)
    cx = tf.reduce_sum(full64 * tf.range(W, dtype=tf.float64)[None, :, None], [0, 1]) / safe
    cy = tf.reduce_sum(full64 * tf.range(H, dtype=tf.float64)[:, None, None], [0, 1]) / safe
    centers = tf.cast(tf.stack([cx, cy], -1), tf.float32)  # (n, 2)

    # Keep the N largest non-empty objects, in source order.
    n = tf.shape(classes)[0]
    nonempty = area > 0
    num_nonempty = tf.reduce_sum(tf.cast(nonempty, tf.int32))
    num_keep = tf.minimum(num_nonempty, N)
    _, order = tf.math.top_k(tf.where(nonempty, area, -1.0), k=tf.minimum(n, N))
    keep = tf.sort(order[:num_keep])

    # Stride-4 masks by 4x4 area average; an object thinner than that keeps its densest cells
    # so the target assigner still sees it.
    s = _MASK_STRIDE
    kept = tf.gather(full, keep, axis=2)  # (H, W, k)
    frac = tf.reduce_mean(tf.reshape(kept, [H // s, s, W // s, s, -1]), [1, 3])  # (H/4, W/4, k)
    peak = tf.reduce_max(frac, [0, 1], keepdims=True)
    thin = tf.logical_and(frac >= peak, tf.logical_and(peak > 0, peak < 0.5))
    masks4 = tf.cast(tf.logical_or(frac >= 0.5, thin), tf.uint8)

    pad = N - num_keep
    y = {
        "classes": tf.pad(tf.gather(classes, keep), [[0, pad]], constant_values=-1),
        "boxes": tf.pad(tf.gather(boxes, keep), [[0, pad], [0, 0]]),
        "masks": tf.pad(tf.transpose(masks4, [2, 0, 1]), [[0, pad], [0, 0], [0, 0]]),
        "centers": tf.pad(tf.gather(centers, keep), [[0, pad], [0, 0]]),
    }
    y["classes"].set_shape((N,))
    y["boxes"].set_shape((N, 4))
    y["masks"].set_shape((N, H // s, W // s))
    y["centers"].set_shape((N, 2))
    meta = {
        "image_id": tf.cast(record["image_id"], tf.int64),
        "orig_size": tf.stack([h, w]),
        "valid_size": tf.stack([nh, nw]),
        "scale": tf.cast(scale, tf.float32),
        "dropped_empty": n - num_nonempty,
        "dropped_overflow": num_nonempty - num_keep,
    }
    return out_image, y, meta



def flip_valid(canvas, valid_w):
    """Mirror the valid columns [0, valid_w) of a (H, W, C) canvas; the padding stays right."""
    cols = tf.range(tf.shape(canvas)[1])
    return tf.gather(canvas, tf.where(cols < valid_w, valid_w - 1 - cols, cols), axis=1)
