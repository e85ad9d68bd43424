"""In-graph grid target assignment for SOLO / SOLOv2 (pure ``keras.ops``, static shapes).

Naming: B = images, N = ground-truth slots (padded, class -1 = padding), L = levels,
S = grid size of a level, M = positive-cell slots gathered for the mask loss.

The assignment is the reference's, vectorised over objects and images:

* scale of an object = sqrt(w * h) of its box; it is assigned to every level whose
  (inclusive) scale range contains it, so one object can be positive on two levels;
* centre = centre of mass of the full-resolution mask; the centre region has half extents
  ``0.5 * pos_scale * (w, h)``; the grid cell of a point is ``floor(c / size * S)``;
* the region's top/down/left/right cells are clamped to [0, S-1] and then to at most one
  cell around the centre cell (a region of at most 3x3);
* where two objects claim one cell the later one (higher slot index) wins;
* padding (class < 0) and objects with an empty mask are skipped.

The same functions run inside the tf.data pipeline (TensorFlow backend) and inside the
loss (:class:`solo_tf.losses.SOLOLoss`, any backend).
"""

from __future__ import annotations

from keras import ops


def assign_grids(classes, boxes, centers, valid, image_size, num_grids, scale_ranges, pos_scale=0.2):
    """Category and owner grids of every level.

    Args:
        classes: (B, N) int, class index, < 0 for padding.
        boxes: (B, N, 4) float, x1 y1 x2 y2 in input pixels (x2/y2 exclusive).
        centers: (B, N, 2) float, (x, y) centre of mass of each mask in input pixels.
        valid: (B, N) bool, False for padding and empty masks.
        image_size: (H, W) python ints, the padded input size.
        num_grids: per level S.
        scale_ranges: per level (lo, hi), inclusive, on sqrt(w * h).
        pos_scale: centre-region scale (sigma in the paper).

    Returns:
        list over levels of ``(category, owner)``, each (B, S, S) int32; category is the
        class of the owning object or -1, owner the slot index of that object or -1.
    """
    height, width = float(image_size[0]), float(image_size[1])
    classes = ops.cast(classes, "int32")
    boxes = ops.cast(boxes, "float32")
    centers = ops.cast(centers, "float32")
    valid = ops.logical_and(ops.cast(valid, "bool"), classes >= 0)

    box_w = boxes[..., 2] - boxes[..., 0]  # (B, N)
    box_h = boxes[..., 3] - boxes[..., 1]
    scale = ops.sqrt(ops.maximum(box_w * box_h, 0.0))
    half_w = 0.5 * pos_scale * box_w
    half_h = 0.5 * pos_scale * box_h
    cx = centers[..., 0]
    cy = centers[..., 1]
    num_slots = ops.shape(classes)[1]
    slot = ops.arange(num_slots, dtype="int32")  # (N,)

    out = []
    for grid, (lo, hi) in zip(num_grids, scale_ranges):
        s = float(grid)

        def cell(v, size):
            return ops.cast(ops.floor(v / size * s), "int32")

        coord_y, coord_x = cell(cy, height), cell(cx, width)
        top = ops.maximum(ops.maximum(cell(cy - half_h, height), 0), coord_y - 1)
        down = ops.minimum(ops.minimum(cell(cy + half_h, height), grid - 1), coord_y + 1)
        left = ops.maximum(ops.maximum(cell(cx - half_w, width), 0), coord_x - 1)
        right = ops.minimum(ops.minimum(cell(cx + half_w, width), grid - 1), coord_x + 1)
        hit = ops.logical_and(valid, ops.logical_and(scale >= lo, scale <= hi))  # (B, N)

        idx = ops.arange(grid, dtype="int32")
        # (B, N, S): does object n cover row i / column j
        in_rows = ops.logical_and(idx[None, None, :] >= top[..., None], idx[None, None, :] <= down[..., None])
        in_cols = ops.logical_and(idx[None, None, :] >= left[..., None], idx[None, None, :] <= right[..., None])
        in_rows = ops.logical_and(in_rows, hit[..., None])
        # (B, N, S, S)
        covers = ops.logical_and(in_rows[:, :, :, None], in_cols[:, :, None, :])
        # the later object wins a shared cell: take the highest covering slot index
        owner = ops.max(ops.where(covers, slot[None, :, None, None], -1), axis=1)  # (B, S, S)
        owner = ops.cast(owner, "int32")
        flat_owner = ops.reshape(owner, (-1, grid * grid))
        category = ops.take_along_axis(classes, ops.maximum(flat_owner, 0), axis=1)
        category = ops.where(flat_owner >= 0, category, -1)
        out.append((ops.reshape(ops.cast(category, "int32"), (-1, grid, grid)), owner))
    return out


def grid_targets(y, model_config):
    """Per-level (category, owner) grids of a batch: the ones the tf.data pipeline sent
    (``grid_category_{l}`` / ``grid_owner_{l}``), else :func:`assign_grids` here.

    Args:
        y: ground-truth dict: ``classes`` (B, N), ``boxes`` (B, N, 4), ``masks``
            (B, N, H/4, W/4), ``centers`` (B, N, 2); optionally the grids themselves.
        model_config: :class:`solo_tf.config.ModelConfig` (grids, scale ranges, pos_scale).

    Returns:
        list over levels of ``(category, owner)``, each (B, S, S) int32.
    """
    cfg = model_config
    if "grid_category_0" in y:
        return [(y[f"grid_category_{l}"], y[f"grid_owner_{l}"]) for l in range(len(cfg.num_grids))]
    valid = ops.logical_and(mask_validity(y["masks"]), ops.cast(y["classes"], "int32") >= 0)
    return assign_grids(
        y["classes"], y["boxes"], y["centers"], valid, cfg.image_size, cfg.num_grids, cfg.scale_ranges, cfg.pos_scale
    )


def resize_masks(masks, size):
    """Resize 0/1 instance masks bilinearly and threshold at 0.5.

    Args:
        masks: (B, N, h, w) uint8/float 0/1.
        size: (h', w') target size.

    Returns:
        (B, N, h', w') float32 0/1.
    """
    masks = ops.cast(masks, "float32")
    if tuple(masks.shape[2:]) == tuple(size):
        return masks
    x = ops.transpose(masks, (0, 2, 3, 1))  # (B, h, w, N): resize works on channels-last
    x = ops.image.resize(x, size, interpolation="bilinear", antialias=False)
    x = ops.transpose(x, (0, 3, 1, 2))
    return ops.cast(x >= 0.5, "float32")


def positive_slots(owner, max_positives, num_owners=None):
    """Indices of the positive cells, padded (or capped) to a static count M.

    Args:
        owner: (B, S, S) int grid of one level, or (B, K) cells of several levels
            concatenated; -1 where the cell is negative.
        max_positives: M, static number of slots to return (clipped to the cell count).
        num_owners: N, the number of ground-truth slots (owner values are < N). Needed only
            when M is below the cell count, so that positives can overflow the slots.

    Returns:
        ``(cells, owners, is_pos, overflow)``: (B, M) int32 flat cell index (k = i*S + j
        within a level grid), (B, M) int32 owning slot (0 where not positive), (B, M)
        float32 1 for a real positive, 0 for filler, and (B,) float32 the image's positives
        that found no slot (0 whenever they fit).

    When an image has more positives than slots, the kept subset is fair to its objects:
    round robin, every object's first cell, then every object's second, and so on, so an
    object with few cells (a small one, or one on a single level) loses none before a large
    one has lost all but as many. Within an object the cells are taken in a fixed spread
    order over its region and levels (k * 0.618 G mod G), not top-left first. When the
    positives fit, every one of them has a slot: the loss is exactly the uncapped one.
    """
    cells_total = 1
    for d in owner.shape[1:]:
        cells_total *= int(d)
    flat = ops.reshape(ops.cast(owner, "int32"), (-1, cells_total))
    is_pos = flat >= 0
    num_pos = ops.sum(ops.cast(is_pos, "float32"), axis=1)
    m = min(int(max_positives), cells_total)
    k = ops.arange(cells_total, dtype="int32")
    if m == cells_total or num_owners is None:
        # every positive fits: positives first, in ascending k
        kf = ops.cast(k, "float32")
        score = ops.where(is_pos, float(cells_total) - kf, -kf - 1.0)
        _, cells = ops.top_k(score, k=m, sorted=True)
    else:
        n = int(num_owners)
        # group the positives by owner, each group in a spread order of its cells
        spread = (k * _coprime_stride(cells_total)) % cells_total
        key = ops.where(is_pos, flat * cells_total + spread, n * cells_total + k)
        order = ops.cast(ops.argsort(key, axis=1), "int32")  # (B, G)
        sorted_owner = ops.take_along_axis(flat, order, axis=1)
        # rank of each positive within its owner's group: position - the group's first position
        counts = ops.sum(ops.one_hot(ops.maximum(flat, 0), n) * ops.cast(is_pos, "float32")[..., None], axis=1)
        first = ops.cumsum(counts, axis=1) - counts  # (B, N)
        rank = ops.cast(k, "float32")[None] - ops.take_along_axis(first, ops.maximum(sorted_owner, 0), axis=1)
        # round robin: all rank-0 cells (by owner), then all rank-1 cells, ...; negatives last
        score = ops.where(sorted_owner >= 0, -(rank * float(n) + ops.cast(sorted_owner, "float32")),
                          -float(n * cells_total + 1) - ops.cast(k, "float32")[None])
        _, picked = ops.top_k(score, k=m, sorted=True)
        cells = ops.take_along_axis(order, ops.cast(picked, "int32"), axis=1)
    cells = ops.cast(cells, "int32")
    owners = ops.take_along_axis(flat, cells, axis=1)
    pos = ops.cast(owners >= 0, "float32")
    overflow = num_pos - ops.sum(pos, axis=1)
    return cells, ops.maximum(owners, 0), pos, overflow


def _coprime_stride(n):
    """A stride near 0.618 n with gcd(stride, n) = 1: k -> k * stride mod n visits every
    cell once, spread out (golden-ratio hashing)."""
    import math

    stride = max(1, int(round(0.6180339887 * n)))
    while math.gcd(stride, n) != 1:
        stride += 1
    return stride


def gather_mask_targets(level_masks, owners):
    """Mask target of each positive slot.

    Args:
        level_masks: (B, N, h, w) float 0/1, ground-truth masks at the level's mask size.
        owners: (B, M) int slot index from :func:`positive_slots`.

    Returns:
        (B, M, h, w) float32.
    """
    h, w = level_masks.shape[2], level_masks.shape[3]
    flat = ops.reshape(level_masks, (-1, level_masks.shape[1], h * w))
    gathered = ops.take_along_axis(flat, ops.cast(owners, "int32")[:, :, None], axis=1)
    return ops.reshape(gathered, (-1, owners.shape[1], h, w))


def mask_validity(masks):
    """(B, N) bool: which ground-truth masks have at least one pixel set."""
    return ops.max(ops.reshape(ops.cast(masks, "float32"), (ops.shape(masks)[0], masks.shape[1], -1)), axis=-1) > 0


__all__ = [
    "assign_grids",
    "grid_targets",
    "resize_masks",
    "positive_slots",
    "gather_mask_targets",
    "mask_validity",
]
