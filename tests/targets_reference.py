"""A plain per-object loop of the reference's grid assignment (docs/DESIGN.md, centre region),
written for reading, not speed: what :func:`solo_tf.targets.assign_grids` computes for
all objects and images at once. Used by tests/test_targets_loop.py and
benchmarks/bench_targets.py."""

from __future__ import annotations

import numpy as np


def loop_assign(classes, boxes, centers, valid, image_size, num_grids, scale_ranges, pos_scale=0.2):
    """Per-level (category, owner) grids, each (B, S, S) int32, one object at a time.

    Arguments as :func:`solo_tf.targets.assign_grids` (numpy arrays). Arithmetic is in
    float32, as the graph's.
    """
    classes = np.asarray(classes)
    boxes = np.asarray(boxes, np.float32)
    centers = np.asarray(centers, np.float32)
    valid = np.asarray(valid, bool)
    height, width = np.float32(image_size[0]), np.float32(image_size[1])
    out = []
    for grid, (lo, hi) in zip(num_grids, scale_ranges):
        s = np.float32(grid)
        category = np.full((len(classes), grid, grid), -1, np.int32)
        owner = np.full((len(classes), grid, grid), -1, np.int32)
        for b in range(len(classes)):
            for n in range(classes.shape[1]):  # in slot order: a later object wins a shared cell
                if not valid[b, n] or classes[b, n] < 0:
                    continue
                x1, y1, x2, y2 = boxes[b, n]
                w, h = x2 - x1, y2 - y1
                scale = np.sqrt(np.maximum(w * h, np.float32(0)))
                if not lo <= scale <= hi:
                    continue
                cx, cy = centers[b, n]
                half_w, half_h = np.float32(0.5 * pos_scale) * w, np.float32(0.5 * pos_scale) * h

                def cell(v, size):
                    return int(np.floor(np.float32(v) / size * s))

                ci, cj = cell(cy, height), cell(cx, width)
                top = max(cell(cy - half_h, height), 0, ci - 1)
                down = min(cell(cy + half_h, height), grid - 1, ci + 1)
                left = max(cell(cx - half_w, width), 0, cj - 1)
                right = min(cell(cx + half_w, width), grid - 1, cj + 1)
                for i in range(top, down + 1):
                    for j in range(left, right + 1):
                        category[b, i, j] = classes[b, n]
                        owner[b, i, j] = n
        out.append((category, owner))
    return out


def random_objects(rng, batch, slots, image_size, fill=0.8):
    """Random padded ground truth: (classes, boxes, centers, valid), some slots padding
    (class -1), some objects invalid (empty masks), centres inside the boxes."""
    H, W = image_size
    x1 = rng.uniform(0, W - 4, (batch, slots))
    y1 = rng.uniform(0, H - 4, (batch, slots))
    w = np.minimum(rng.uniform(2, W * 0.9, (batch, slots)) ** rng.uniform(0.6, 1.0, (batch, slots)), W - x1)
    h = np.minimum(rng.uniform(2, H * 0.9, (batch, slots)) ** rng.uniform(0.6, 1.0, (batch, slots)), H - y1)
    boxes = np.stack([x1, y1, x1 + w, y1 + h], -1).astype(np.float32)
    centers = np.stack([x1 + w * rng.uniform(0.2, 0.8, w.shape), y1 + h * rng.uniform(0.2, 0.8, h.shape)], -1)
    classes = np.where(rng.rand(batch, slots) < fill, rng.randint(0, 5, (batch, slots)), -1).astype(np.int32)
    valid = rng.rand(batch, slots) < 0.95
    return classes, boxes, centers.astype(np.float32), valid
