"""The input pipeline every data source goes through: records -> padded model batches.

Sources (:mod:`solo_tf.data.sources`) yield unbatched records (``image`` (h, w, 3) uint8,
``masks`` (n, h, w) uint8, ``classes`` (n,) int32, ``image_id`` int64). :func:`prepare`
letterboxes each record onto ``model.image_size`` with :func:`solo_tf.preprocess.letterbox`
(the resize inference and the exported graphs use too), optionally augments (multi-scale,
horizontal flip), builds the stride-4 mask targets, boxes and centres of mass straight from
the source-resolution masks (never a canvas-size mask: see :func:`_prepare_one`), pads the
ground truth to ``data.max_instances`` (class -1) and batches. Per image, all tf ops: no Python per object. Objects lost on the
way (empty after resizing, or beyond ``max_instances``) are counted in a
:class:`PipelineStats` and, with ``with_meta``, per image. It runs whatever the Keras
backend is (the letterbox runs on Keras' TensorFlow backend inside ``tf.data``).
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from solo_tf.data.sources import RecordSource, load_source, open_sources, shapes_source  # noqa: F401 (re-exported)
from solo_tf.decoder import MASK_STRIDE as _MASK_STRIDE  # GT masks share the decoder's stride 4
from solo_tf.preprocess import letterbox


class PipelineStats:
    """Counters a :func:`prepare` dataset updates as it runs (tf.Variables, read any time).

    ``images``: records prepared; ``objects``: instances seen in them; ``dropped_empty``:
    instances whose mask became empty after resizing; ``dropped_overflow``: instances beyond
    ``data.max_instances`` (the smallest by mask area).
    """

    KEYS = ("images", "objects", "dropped_empty", "dropped_overflow")

    def __init__(self):
        self._vars = {k: tf.Variable(0, dtype=tf.int64, trainable=False, name=f"pipeline_{k}") for k in self.KEYS}

    def _add(self, **counts):
        for k, v in counts.items():
            self._vars[k].assign_add(tf.cast(v, tf.int64))

    def as_dict(self) -> dict:
        return {k: int(v.numpy()) for k, v in self._vars.items()}

    def reset(self) -> None:
        for v in self._vars.values():
            v.assign(0)

    def __repr__(self):
        return f"PipelineStats({self.as_dict()})"


def build_datasets(config):
    """Training and validation batches for ``config`` (batch size ``config.train.batch_size``).

    Returns:
        ``(train_ds, val_ds, info)``: datasets of ``(images, y)`` (see :func:`prepare`);
        ``val_ds`` is None when the source has no validation split. ``info`` holds
        ``class_names`` (list), ``category_ids`` (list of the dataset's id per class, or
        None: the index is the id), ``num_train``, ``num_val``, ``stats`` ({"train", "val"}
        -> :class:`PipelineStats`) and ``bad_records`` (the distinct
        :class:`~solo_tf.data.errors.BadRecordLog` of the splits, live: they keep counting
        records skipped while the datasets are iterated; print ``log.summary()`` at the end).
    """
    sources = open_sources(config, ("train", "val"))
    train_src, val_src = sources["train"], sources["val"]
    bs = int(config.train.batch_size)
    stats = {"train": PipelineStats(), "val": PipelineStats()}
    train_ds = prepare(train_src.records, config.model, config.data, bs, training=True, stats=stats["train"])
    val_ds = None
    if val_src is not None and val_src.num_records > 0:
        val_ds = prepare(
            val_src.records, config.model, config.data, bs, training=False, drop_remainder=False, stats=stats["val"]
        )
    logs = []
    for src in (train_src, val_src):
        if src is not None and src.bad_records is not None and all(src.bad_records is not g for g in logs):
            logs.append(src.bad_records)
    info = {
        "class_names": list(train_src.class_names),
        "category_ids": list(train_src.category_ids) if train_src.category_ids is not None else None,
        "num_train": int(train_src.num_records),
        "num_val": int(val_src.num_records) if val_src is not None else 0,
        "stats": stats,
        "bad_records": logs,
    }
    return train_ds, val_ds, info


# --- preparation -----------------------------------------------------------------------------
def prepare(
    records: tf.data.Dataset,
    model_config,
    data_config,
    batch_size: int,
    training: bool,
    with_meta: bool = False,
    drop_remainder: bool | None = None,
    stats: PipelineStats | None = None,
    shuffle_buffer: int = 256,
) -> tf.data.Dataset:
    """Records -> batches of ``(images, y)`` or, with ``with_meta``, ``(images, y, meta)``.

    With H, W = ``model_config.image_size``, N = ``data_config.max_instances``, B = batch:

    * ``images`` (B, H, W, 3) float32 RGB 0-255; the resized image sits top-left, zeros pad.
    * ``y["classes"]`` (B, N) int32, -1 = padding; ``y["boxes"]`` (B, N, 4) float32 x1 y1 x2 y2
      in input pixels (x2, y2 exclusive; tight box of the resized mask); ``y["masks"]``
      (B, N, H/4, W/4) uint8 0/1 (4x4 area average >= 0.5; an object too thin for that keeps
      its densest cells); ``y["centers"]`` (B, N, 2) float32 (x, y) centre of mass of the
      resized mask, in pixel-index units (pixel (r, c) sits at x=c, y=r, as
      ``scipy.ndimage.center_of_mass``). Real objects come first, in source order. The
      resized mask is the one the image's resize gives, thresholded at 0.5: exactly the
      bilinear resize's when the image is enlarged; when it shrinks (antialiased), the
      nearest-neighbour map with half-pixel centres, which differs from it only on edges.
    * With ``model_config.portrait_canvas`` (and a non-square canvas), an image oriented the
      other way than (H, W) is letterboxed onto the transposed canvas (W, H) instead
      (:meth:`~solo_tf.config.ModelConfig.canvas_for`), keeping the scale it would have on
      the matching canvas, and batches hold one canvas each (grouped by orientation, in
      arrival order): their shapes are known per batch, not in the element spec.
    * ``meta``: ``image_id`` (B,) int64, ``orig_size`` (B, 2) int32 source (h, w),
      ``valid_size`` (B, 2) int32 (h, w) of the resized image inside the canvas, ``scale``
      (B,) float32 resize factor, ``dropped_empty`` / ``dropped_overflow`` (B,) int32.

    Training (``training=True``) shuffles (seeded by ``data_config.seed``) and augments:
    ``data_config.multiscale`` (lo, hi) draws the short side (every ``multiscale_step``
    pixels when that is set; capped by
    ``data_config.max_long_side`` and always fitting the canvas); ``data_config.flip`` flips
    horizontally with probability 1/2. ``data_config.skip_bad`` skips (with a logged warning)
    records that fail validation instead of raising.
    """
    if drop_remainder is None:
        drop_remainder = bool(training)
    stats = stats if stats is not None else PipelineStats()
    H, W = (int(v) for v in model_config.image_size)
    if H % _MASK_STRIDE or W % _MASK_STRIDE:
        raise ValueError(f"model.image_size must be a multiple of {_MASK_STRIDE}, got {model_config.image_size}")
    N = int(data_config.max_instances)
    num_classes = int(model_config.num_classes)
    multiscale = None
    if training and data_config.multiscale:
        multiscale = (*(int(v) for v in data_config.multiscale), int(data_config.multiscale_step or 1))
    max_long = data_config.max_long_side if multiscale else None
    flip = bool(training and data_config.flip)
    seed = int(data_config.seed)

    canvases = model_config.canvases  # (H, W), and (W, H) with model.portrait_canvas

    def _prepare(record, rand):
        def on(canvas):
            return _prepare_one(record, rand, *canvas, N, num_classes, multiscale, max_long, flip)

        if len(canvases) == 1:
            return on(canvases[0])
        size = tf.shape(record["image"])
        other = size[0] > size[1] if H < W else size[1] > size[0]  # as ModelConfig.canvas_for
        return tf.cond(other, lambda: on(canvases[1]), lambda: on(canvases[0]))

    def _map(record, rand):
        image, y, meta = _prepare(record, rand)
        stats._add(
            images=1,
            objects=tf.shape(record["classes"])[0],
            dropped_empty=meta["dropped_empty"],
            dropped_overflow=meta["dropped_overflow"],
        )
        return (image, y, meta) if with_meta else (image, y)

    ds = records
    if training:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    # One random int64 per record feeds the stateless augmentation ops, so the augmentation is
    # reproducible for a seed yet differs between epochs.
    rand = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True) if training else (
        tf.data.Dataset.from_tensors(tf.constant(0, tf.int64)).repeat()
    )
    ds = tf.data.Dataset.zip((ds, rand)).map(_map, num_parallel_calls=tf.data.AUTOTUNE)
    if data_config.skip_bad:
        ds = ds.ignore_errors(log_warning=True)
    if len(canvases) == 1:
        ds = ds.batch(int(batch_size), drop_remainder=drop_remainder, num_parallel_calls=tf.data.AUTOTUNE)
    else:
        # one canvas per batch (the reference groups its batches by aspect ratio too); the
        # element spec no longer knows H and W, the model picks its graph per batch
        ds = ds.group_by_window(
            key_func=lambda image, *rest: tf.cast(tf.not_equal(tf.shape(image)[0], H), tf.int64),
            reduce_func=lambda key, window: window.batch(int(batch_size), drop_remainder=drop_remainder),
            window_size=int(batch_size),
        )
    return ds.prefetch(tf.data.AUTOTUNE)


def _validate(record, num_classes):
    """Assert the record contract; the message carries the record's image_id."""
    image, masks, classes = record["image"], record["masks"], record["classes"]
    iid = record["image_id"]
    ish, msh, csh = tf.shape(image), tf.shape(masks), tf.shape(classes)
    checks = [
        (tf.logical_and(tf.equal(tf.rank(image), 3), tf.equal(ish[-1], 3)), "image must be (h, w, 3)"),
        (tf.logical_and(tf.equal(tf.rank(masks), 3), tf.reduce_all(tf.equal(msh[1:], ish[:2]))),
         "masks must be (n, h, w) with the image's h, w"),
        (tf.equal(csh[0], msh[0]), "classes must have one entry per mask"),
        (tf.reduce_all(tf.logical_and(classes >= 0, classes < num_classes)),
         f"classes must be in [0, {num_classes})"),
    ]
    ops = []
    for cond, msg in checks:
        ops.append(tf.debugging.Assert(cond, [f"bad record: {msg}; image_id", iid, "image shape", ish,
                                              "masks shape", msh, "classes", classes], summarize=16))
    return ops


def _prepare_one(record, rand, H, W, N, num_classes, multiscale, max_long, flip):
    """One record -> (image (H, W, 3) float32, y dict padded to N, meta dict).

    The masks never reach the canvas's full resolution: their stride-4 targets, boxes and
    centres come straight from the source-resolution masks (see :func:`prepare`)."""
    with tf.control_dependencies(_validate(record, num_classes)):
        image = tf.identity(record["image"])
        masks = tf.identity(record["masks"])
        classes = tf.cast(record["classes"], tf.int32)
    h = tf.shape(image)[0]
    w = tf.shape(image)[1]
    seeds = tf.random.experimental.stateless_split(tf.stack([rand, tf.constant(7, tf.int64)]), 2)

    short = None
    if multiscale is not None:
        lo, hi, step = multiscale
        if step == 1:
            short = tf.random.stateless_uniform([], seeds[0], minval=lo, maxval=hi + 1, dtype=tf.int32)
        else:  # one of lo, lo + step, ..., hi
            short = lo + step * tf.random.stateless_uniform(
                [], seeds[0], minval=0, maxval=(hi - lo) // step + 1, dtype=tf.int32)
    do_flip = None
    if flip:
        do_flip = tf.random.stateless_uniform([], seeds[1]) < 0.5
        image = tf.cond(do_flip, lambda: tf.reverse(image, [1]), lambda: image)
    out_image, (nh, nw), scale = letterbox(image, (H, W), short_side=short, max_long_side=max_long)
    out_image = tf.ensure_shape(out_image, (H, W, 3))

    # The masks never reach the canvas's full resolution. Canvas pixel (r, c) of a mask's
    # bilinear resize reads the 2x2 source block (lo_r.., lo_c..) (see _axis_tables); where
    # that block is uniform the thresholded value is the block's, and so is the nearest
    # source pixel's. So the resized mask is the nearest-neighbour map (separable: its row
    # and column counts and 4x4 cell counts follow from the source masks and two index maps)
    # plus corrections at the canvas pixels of mixed blocks (the objects' edges), computed
    # there exactly as the resize does (_edge_corrections). Flipped, the canvas columns take
    # the tables of their mirror images, as flipping the resized mask would.
    s = _MASK_STRIDE
    ty = _axis_tables(nh, h, H)
    tx = _axis_tables(nw, w, W, flip=do_flip)
    m8 = tf.cast(masks, tf.uint8)  # the source's orientation: tx carries the flip
    mf = tf.cast(m8, tf.float32)  # (n, h, w)
    n = tf.shape(classes)[0]
    # the resize enlarges (plain bilinear) or shrinks (antialiased: the nearest map then
    # stands for it, without corrections)
    shrinks = tf.logical_or(nh < h, nw < w)
    edge = tf.cond(shrinks, lambda: _no_corrections(), lambda: _edge_corrections(m8, ty, tx))
    e_obj, e_row, e_col, e_d = edge
    row_count = _gather_padded(tf.einsum("nhw,w->nh", mf, tx.per_source), ty.near, 1)  # (n, H) canvas pixels per row
    col_count = _gather_padded(tf.einsum("nhw,h->nw", mf, ty.per_source), tx.near, 1)  # (n, W)
    row_count += tf.cast(tf.reshape(tf.math.unsorted_segment_sum(e_d, e_obj * H + e_row, n * H), [n, H]), tf.float32)
    col_count += tf.cast(tf.reshape(tf.math.unsorted_segment_sum(e_d, e_obj * W + e_col, n * W), [n, W]), tf.float32)
    # moments in float64: exact integer sums, as the reference's
    rc64, cc64 = tf.cast(row_count, tf.float64), tf.cast(col_count, tf.float64)
    area64 = tf.reduce_sum(rc64, 1)
    safe = tf.maximum(area64, 1.0)
    cx = tf.reduce_sum(cc64 * tf.range(W, dtype=tf.float64), 1) / safe
    cy = tf.reduce_sum(rc64 * tf.range(H, dtype=tf.float64), 1) / safe
    centers = tf.cast(tf.stack([cx, cy], -1), tf.float32)  # (n, 2)
    area = tf.cast(area64, tf.float32)
    rows, cols = row_count > 0, col_count > 0
    y1 = tf.argmax(rows, 1, output_type=tf.int32)
    y2 = H - tf.argmax(tf.reverse(rows, [1]), 1, output_type=tf.int32)
    x1 = tf.argmax(cols, 1, output_type=tf.int32)
    x2 = W - tf.argmax(tf.reverse(cols, [1]), 1, output_type=tf.int32)
    boxes = tf.cast(tf.stack([x1, y1, x2, y2], -1), tf.float32)  # (n, 4)

    # Keep the N largest non-empty objects, in source order.
    nonempty = area > 0
    num_nonempty = tf.reduce_sum(tf.cast(nonempty, tf.int32))
    num_keep = tf.minimum(num_nonempty, N)
    _, order = tf.math.top_k(tf.where(nonempty, area, -1.0), k=tf.minimum(n, N))
    keep = tf.sort(order[:num_keep])

    # Stride-4 masks by 4x4 area average of the resized mask: the nearest map's cell counts,
    # counted through the index maps one axis at a time (rows first: (k, H, w) then
    # (k, H/4, W) uint8 counts), plus the edge corrections of the kept objects; an object
    # thinner than that keeps its densest cells so the target assigner still sees it.
    kept = tf.gather(m8, keep)  # (k, h, w) uint8
    k = tf.shape(kept)[0]
    per_row = tf.reduce_sum(tf.reshape(_gather_padded(kept, ty.near, 1), [k, H // s, s, w]), 2)  # (k, H/4, w) <= 4
    counts = tf.reduce_sum(tf.reshape(_gather_padded(per_row, tx.near, 2), [k, H // s, W // s, s]), 3)  # <= 16
    slot = tf.tensor_scatter_nd_update(tf.fill([n], -1), keep[:, None], tf.range(k))  # object -> kept slot
    e_slot = tf.gather(slot, e_obj)
    e_kept = e_slot >= 0
    cells = (H // s) * (W // s)
    fix = tf.math.unsorted_segment_sum(
        tf.boolean_mask(e_d, e_kept),
        tf.boolean_mask(e_slot * cells + (e_row // s) * (W // s) + e_col // s, e_kept), k * cells)
    counts = tf.cast(counts, tf.int32) + tf.reshape(fix, [k, H // s, W // s])
    frac = tf.cast(counts, tf.float32) / float(s * s)  # (k, H/4, W/4)
    peak = tf.reduce_max(frac, [1, 2], keepdims=True)
    thin = tf.logical_and(frac >= peak, tf.logical_and(peak > 0, peak < 0.5))
    masks4 = tf.cast(tf.logical_or(frac >= 0.5, thin), tf.uint8)

    pad = N - num_keep
    y = {
        "classes": tf.pad(tf.gather(classes, keep), [[0, pad]], constant_values=-1),
        "boxes": tf.pad(tf.gather(boxes, keep), [[0, pad], [0, 0]]),
        "masks": tf.pad(masks4, [[0, pad], [0, 0], [0, 0]]),
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


class _Axis(NamedTuple):
    """One axis of the bilinear resize of a ``size``-pixel source to ``valid`` output pixels on
    a ``canvas``: per output pixel, ``lo`` (int32, the block's first source index), ``a``
    (float32, the weight of ``lo + 1``), ``near`` (int32, the nearest source index: ``size``
    for padding, a zero row of :func:`_gather_padded`); per source index, ``per_source`` (float32,
    how many output pixels take it as nearest) and ``outputs`` ((size, K) int32, the output
    pixels whose block starts there, -1 filled)."""

    lo: tf.Tensor
    a: tf.Tensor
    near: tf.Tensor
    per_source: tf.Tensor
    outputs: tf.Tensor


def _axis_tables(valid, size, canvas, flip=None):
    """TensorFlow's bilinear resize along one axis (half-pixel centres, no antialiasing), as
    its kernel computes it in float32: output pixel c reads source pixels lo, hi with
    u = (c + 0.5) * size / valid - 0.5, lo = max(floor(u), 0), hi = min(ceil(u), size - 1) and
    weight u - floor(u) on hi. Where hi == lo the weight is irrelevant and set to 0, so every
    output pixel reads the block (lo, lo + 1) of the source with its last index repeated.
    With ``flip`` (a bool tensor), output pixel c < valid takes the tables of valid - 1 - c:
    the resized line mirrored."""
    c = tf.range(canvas, dtype=tf.int32)
    inside = c < valid
    at = c if flip is None else tf.where(tf.logical_and(flip, inside), valid - 1 - c, c)
    ratio = tf.cast(size, tf.float32) / tf.cast(valid, tf.float32)
    u = (tf.cast(at, tf.float32) + 0.5) * ratio - 0.5
    f = tf.floor(u)
    lo = tf.minimum(tf.maximum(tf.cast(f, tf.int32), 0), size - 1)
    hi = tf.minimum(tf.cast(tf.math.ceil(u), tf.int32), size - 1)
    a = tf.where(hi > lo, u - f, 0.0)
    near = tf.where(inside, tf.where(a < 0.5, lo, hi), size)
    per_source = tf.math.unsorted_segment_sum(tf.cast(inside, tf.float32), near, size + 1)[:size]
    # the output pixels of each block: lo is monotonic along the valid pixels, so each
    # block's pixels are contiguous; rank within the block = position - the block's first
    pos = tf.range(valid, dtype=tf.int32)
    lo_in = lo[:valid]
    first = tf.math.unsorted_segment_min(pos, lo_in, size)
    rank = pos - tf.gather(first, lo_in)
    width = tf.reduce_max(rank) + 1
    outputs = tf.tensor_scatter_nd_update(tf.fill([size, width], -1), tf.stack([lo_in, rank], -1), pos)
    return _Axis(lo, a, near, per_source, outputs)


def _no_corrections():
    empty = tf.zeros([0], tf.int32)
    return empty, empty, empty, empty


def _edge_corrections(m8, ty: _Axis, tx: _Axis):
    """Where the thresholded bilinear resize of 0/1 masks ``m8`` (n, h, w) differs from the
    nearest-neighbour map: ``(object, row, column, difference)`` int32 vectors, difference
    +1 (a pixel the resize adds) or -1 (one it removes). Only the output pixels of mixed 2x2 source blocks can differ; each is computed as the
    kernel does (``top = tl + (tr - tl) * ax``, ``v = top + (bottom - top) * ay``, kept when
    ``v >= 0.5``)."""
    shape = tf.shape(m8, out_type=tf.int64)
    h, w = shape[1], shape[2]
    # A block (y, x) reads pixels (y, x), (y, x + 1), (y + 1, x), (y + 1, x + 1), the last row
    # and column repeated; it is mixed when one of its pairs of neighbours differs. So the
    # mixed blocks are those next to a change between horizontal neighbours (y, x)-(y, x + 1):
    # blocks (y - 1, x) and (y, x); or between vertical ones (y, x)-(y + 1, x): blocks
    # (y, x - 1) and (y, x). Changes are sparse (the objects' outlines): found on the source,
    # the rest works on them alone.
    across = tf.where(tf.not_equal(m8[:, :, 1:], m8[:, :, :-1]))  # (., 3) object, y, x
    down = tf.where(tf.not_equal(m8[:, 1:, :], m8[:, :-1, :]))
    blocks = tf.concat([across, across - [0, 1, 0], down, down - [0, 0, 1]], 0)
    blocks = tf.boolean_mask(blocks, tf.reduce_all(blocks >= 0, 1))
    key, _ = tf.unique((blocks[:, 0] * h + blocks[:, 1]) * w + blocks[:, 2])
    obj, rest = key // (h * w), key % (h * w)
    by64, bx64 = rest // w, rest % w
    y1, x1 = tf.minimum(by64 + 1, h - 1), tf.minimum(bx64 + 1, w - 1)
    corner = tf.cast(tf.stack([tf.gather_nd(m8, tf.stack(i, 1)) for i in
                               ((obj, by64, bx64), (obj, by64, x1), (obj, y1, bx64), (obj, y1, x1))], -1), tf.float32)
    obj, by, bx = (tf.cast(v, tf.int32) for v in (obj, by64, bx64))
    rows = tf.gather(ty.outputs, by)  # (P, Ky) output rows of each block, -1 filled
    cols = tf.gather(tx.outputs, bx)  # (P, Kx)
    ay = tf.gather(ty.a, tf.maximum(rows, 0))
    ax = tf.gather(tx.a, tf.maximum(cols, 0))
    c_tl, c_tr, c_bl, c_br = (corner[:, i, None] for i in range(4))
    top = c_tl + (c_tr - c_tl) * ax  # (P, Kx)
    bottom = c_bl + (c_br - c_bl) * ax
    exact = (top[:, None, :] + (bottom - top)[:, None, :] * ay[:, :, None]) >= 0.5  # (P, Ky, Kx)
    # the nearest map's value there: the block's corner each weight rounds to
    near_top = tf.where(ax < 0.5, c_tl, c_tr)
    near_bottom = tf.where(ax < 0.5, c_bl, c_br)
    nearest = tf.where((ay < 0.5)[:, :, None], near_top[:, None, :], near_bottom[:, None, :]) > 0.5
    real = tf.logical_and((rows >= 0)[:, :, None], (cols >= 0)[:, None, :])
    diff = tf.where(real, tf.cast(exact, tf.int32) - tf.cast(nearest, tf.int32), 0)
    at = tf.where(tf.not_equal(diff, 0))  # (D, 3) block, row slot, column slot
    return (tf.gather(obj, at[:, 0]), tf.gather_nd(rows, at[:, :2]), tf.gather_nd(cols, tf.gather(at, [0, 2], axis=1)),
            tf.gather_nd(diff, at))


def _gather_padded(x, index, axis):
    """``tf.gather(x, index, axis)`` where ``index == x.shape[axis]`` reads zeros."""
    pad = [[0, 0]] * 3 if x.shape.rank == 3 else [[0, 0]] * 2
    pad[axis] = [0, 1]
    return tf.gather(tf.pad(x, pad), index, axis=axis)
