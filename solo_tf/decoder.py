"""Raw head outputs -> fixed-size detections, in ``keras.ops`` (runs inside exported graphs).

Naming: B = batch, L = levels, S_l = grid of level l, C = classes, G = sum_l S_l^2 grid cells,
n = ``nms_pre`` candidates, K = ``max_per_img`` output slots, (H, W) = padded input size,
(h, w) = (H/4, W/4), the resolution every mask is judged at (as the reference).

Pipeline (docs/DESIGN.md, Inference): sigmoid category scores; 2x2 local max (the reference
``points_nms``: a cell survives when no up / left / up-left neighbour beats it); all levels
flattened to G*C (cell, class) pairs; the best n pairs by score (static ``top_k``), those with
score > ``score_thr`` valid; masks built for those n only, at (h, w), by the variant's
:meth:`~solo_tf.variants.Variant.masks_for_cells` (SOLOv2: gathered kernels x mask feature;
SOLO: gathered channels; Decoupled: gathered x channel * gathered y channel - the same
function the Dice loss uses); masks with area (at ``mask_thr``) <= the level's stride
dropped; score *= maskness; Matrix NMS (``update_thr``, K; overlaps at ``nms_stride``: the
masks' own stride 4 as the reference, or 2x2 / 4x4 cell averages); the K masks upsampled
bilinearly to (H, W).

One deliberate difference from the reference: it computes masks for every pair above
``score_thr`` and lets Matrix NMS take the best ``nms_pre`` by score * maskness after the
area filter; a static graph must bound the mask work, so here the best ``nms_pre`` are
taken by category score before masks are built. Both agree whenever at most ``nms_pre``
pairs pass ``score_thr`` (the usual case for 500).
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
from keras import layers, ops

from solo_tf.config import ModelConfig, PostprocessConfig, as_section
from solo_tf.matrix_nms import matrix_nms
from solo_tf.variants import get_variant, multi_level_flatten, take_slots

MASK_STRIDE = 4  # input pixels per pixel of the masks the decoder builds and judges (h, w)


def points_nms(scores):
    """2x2 local max of category scores (the reference ``points_nms``).

    Args:
        scores: (B, S, S, C) sigmoid scores (>= 0).

    Returns:
        (B, S, S, C) scores, zero where an up, left or up-left neighbour is larger.
    """
    # max_pool2d(kernel 2, stride 1, padding 1)[:-1, :-1] == a max over the cell and its
    # up / left / up-left neighbours; zero padding stands in for -inf as scores are >= 0.
    padded = ops.pad(scores, [[0, 0], [1, 0], [1, 0], [0, 0]])
    up = padded[:, :-1, 1:]
    left = padded[:, 1:, :-1]
    up_left = padded[:, :-1, :-1]
    local_max = ops.maximum(ops.maximum(scores, up), ops.maximum(left, up_left))
    return ops.where(ops.equal(local_max, scores), scores, ops.zeros_like(scores))


def decode(outputs, model_config, post_config, full_size_masks=True):
    """Raw model outputs of a batch -> fixed-size detections.

    Args:
        outputs: dict of raw logits, channels-last (the model contract): ``category_{l}``
            (B, S_l, S_l, C) and SOLOv2 ``kernel_{l}`` (B, S_l, S_l, E) + ``mask_feature``
            (B, H/4, W/4, E); SOLO ``mask_{l}`` (B, H/m_l, W/m_l, S_l^2); Decoupled SOLO
            ``mask_x_{l}`` / ``mask_y_{l}`` (B, H/m_l, W/m_l, S_l).
        model_config: :class:`solo_tf.config.ModelConfig`, or its
            :class:`~solo_tf.variants.Variant`.
        post_config: :class:`solo_tf.config.PostprocessConfig`.
        full_size_masks: False skips the final upsampling: ``detection_masks`` are then
            (B, K, H/4, W/4), the resolution they are computed at, and ``detection_boxes``
            come from those masks (edges on multiples of 4 input pixels). Exported graphs
            use it: K full-size float masks are the largest tensor by far.

    Returns:
        dict, K = ``post_config.max_per_img``:
        ``detection_masks`` (B, K, H, W) float32 soft masks (threshold at
        ``post_config.mask_thr``), zeros in empty slots;
        ``detection_scores`` (B, K) float32, descending, 0 in empty slots;
        ``detection_classes`` (B, K) int32 0-based, -1 in empty slots;
        ``detection_boxes`` (B, K, 4) float32 x1 y1 x2 y2 (x2, y2 exclusive) of the binary
        mask in input pixels, zeros for an empty slot or mask;
        ``num_detections`` (B,) int32, the filled slots (the first ones).
    """
    variant = get_variant(model_config)
    cfg = variant.model_config
    num_grids = [int(s) for s in cfg.num_grids]
    strides = [int(s) for s in cfg.strides]
    num_classes = int(cfg.num_classes)
    H, W = (int(v) for v in cfg.image_size)
    h, w = H // MASK_STRIDE, W // MASK_STRIDE
    variant.check_outputs(outputs, "decode")

    # --- candidates: (cell, class) pairs over all levels -----------------------------------
    flat_scores = multi_level_flatten(
        [points_nms(ops.sigmoid(ops.cast(outputs[f"category_{l}"], "float32"))) for l in range(len(num_grids))]
    )  # (B, G, C)
    total = sum(s * s for s in num_grids) * num_classes
    flat_scores = ops.reshape(flat_scores, (-1, total))  # (B, G*C), index = cell * C + class
    n = min(int(post_config.nms_pre), total)
    cand_scores, cand = ops.top_k(flat_scores, k=n)  # (B, n)
    cand = ops.cast(cand, "int32")
    cells = cand // num_classes  # (B, n) index into G
    labels = cand % num_classes
    valid = cand_scores > float(post_config.score_thr)

    # --- masks of the candidates, soft, (B, n, h*w) ---------------------------------------
    # Flat from here on: every per-mask statistic is a sum over the last axis, and the
    # (B, n, h, w) form is never materialised again (a RESHAPE of the n masks is a copy in
    # LiteRT's XNNPack: ~4 ms each for the light models' 500 x 112 x 192).
    soft = variant.masks_for_cells(outputs, cells, size=(h, w), flat=True)  # (B, n, h*w)
    # The binary masks (soft > mask_thr) as ceil(relu(soft - mask_thr)), exactly: a float
    # difference of two distinct values is never 0, so the excess is > 0 just where soft
    # is above the threshold (and at most 1). The maskness's sum of soft over the mask is
    # then sum(excess) + mask_thr * area. Elementwise ops that LiteRT's XNNPack delegate
    # runs, where its builtin GREATER / CAST kernels and the soft * binary product took 18
    # of the light models' ~90 ms decoder (500 masks of 112 x 192) on 2 x86 cores.
    thr = float(post_config.mask_thr)
    binary, excess = binarize(soft, thr)
    area = ops.sum(binary, axis=2)  # (B, n)
    cell_stride = np.concatenate([np.full(s * s, st, np.float32) for s, st in zip(num_grids, strides)])
    stride = ops.take(ops.convert_to_tensor(cell_stride), cells)  # (B, n)
    valid = ops.logical_and(valid, area > stride)
    maskness = (ops.sum(excess, axis=2) + thr * area) / ops.maximum(area, 1.0)
    scores = cand_scores * maskness

    # --- Matrix NMS and the K survivors ----------------------------------------------------
    k = int(post_config.max_per_img)
    nms_masks, nms_area = binary, area
    f = int(post_config.nms_stride) // MASK_STRIDE
    if f > 1:
        # Overlaps from f x f cell averages: intersection ~ sum of products of the cells'
        # fill fractions (exact inside both masks and outside either), areas exact. The
        # averages are an average pooling of the masks as channels (B, h, w, n): the same
        # sums (of 0/1 values, exact) as a mean over a 6-D reshape, which LiteRT ran ~8x
        # slower than the pooling plus both transposes.
        stacked = ops.reshape(ops.transpose(binary, (0, 2, 1)), (-1, h, w, n))
        coarse = ops.average_pool(stacked, f, strides=f, padding="valid")  # (B, h/f, w/f, n)
        p = (h // f) * (w // f)
        nms_masks, nms_area = ops.transpose(ops.reshape(coarse, (-1, p, n)), (0, 2, 1)), area / float(f * f)
    nms = matrix_nms(
        nms_masks,
        labels,
        scores,
        kernel=post_config.kernel,
        sigma=float(post_config.sigma),
        filter_thr=float(post_config.update_thr),
        max_num=k,
        mask_area=nms_area,
        valid=valid,
    )
    filled = nms["keep_inds"] >= 0  # (B, K)
    picked = take_slots(soft, ops.maximum(nms["keep_inds"], 0))  # (B, K, h*w)
    picked = picked * ops.cast(ops.expand_dims(filled, -1), "float32")
    masks = ops.reshape(picked, (-1, k, h, w))  # (B, K, H/4, W/4)
    if full_size_masks:
        # Bilinear upsampling (half-pixel centres, as the reference's align_corners=False).
        masks = ops.image.resize(ops.transpose(masks, (0, 2, 3, 1)), (H, W), interpolation="bilinear",
                                 data_format="channels_last")
        masks = ops.transpose(masks, (0, 3, 1, 2))  # (B, K, H, W)
    boxes = masks_to_boxes(masks > float(post_config.mask_thr))
    if not full_size_masks:
        boxes = boxes * float(MASK_STRIDE)  # input pixels: edges on multiples of 4
    return {
        "detection_masks": masks,
        "detection_scores": nms["scores"],
        "detection_classes": nms["labels"],
        "detection_boxes": boxes,
        "num_detections": nms["num"],
    }


def binarize(soft, thr):
    """(soft > thr as 0/1 float32, relu(soft - thr)) for probabilities ``soft``, as
    ``ceil(relu(soft - thr))``: equal to the comparison for every float (a difference of two
    distinct floats is never 0, and the excess is at most 1), in elementwise ops LiteRT's
    XNNPack delegate runs (see :func:`decode`)."""
    excess = ops.relu(soft - float(thr))
    return ops.ceil(excess), excess


def masks_to_boxes(masks):
    """Tight boxes of binary masks.

    Args:
        masks: (..., H, W) bool.

    Returns:
        (..., 4) float32 x1 y1 x2 y2 in pixels (x2, y2 exclusive); zeros for an empty mask.
    """
    H, W = masks.shape[-2], masks.shape[-1]
    m = ops.cast(masks, "float32")
    cols = ops.max(m, axis=-2) > 0  # (..., W)
    rows = ops.max(m, axis=-1) > 0  # (..., H)
    xs = ops.arange(W, dtype="float32")
    ys = ops.arange(H, dtype="float32")
    x1 = ops.min(ops.where(cols, xs, float(W)), axis=-1)
    x2 = ops.max(ops.where(cols, xs + 1.0, 0.0), axis=-1)
    y1 = ops.min(ops.where(rows, ys, float(H)), axis=-1)
    y2 = ops.max(ops.where(rows, ys + 1.0, 0.0), axis=-1)
    nonempty = ops.max(ops.cast(cols, "float32"), axis=-1) > 0
    boxes = ops.stack([x1, y1, x2, y2], axis=-1)
    return ops.where(ops.expand_dims(nonempty, -1), boxes, 0.0)


# --- host side --------------------------------------------------------------------------------
def postprocess_image(detections, valid_size, orig_size, mask_thr=0.5, canvas_size=None):
    """One image's fixed-size detections (numpy) -> its instances at the original size.

    Args:
        detections: dict of numpy arrays for ONE image, as :func:`decode` gives them without
            the batch axis: ``detection_masks`` (K, H, W), or (K, H/4, W/4) from
            ``decode(..., full_size_masks=False)`` with ``canvas_size``, ``detection_scores``
            (K,), ``detection_classes`` (K,), ``num_detections`` ().
        valid_size: (h', w') of the resized image inside the (H, W) canvas (top-left).
        orig_size: (h0, w0) of the original image.
        mask_thr: threshold applied after resizing.
        canvas_size: (H, W) when the masks are strided: the filled slots alone are then
            upsampled to the canvas here (its valid region only; the same bilinear resize as
            the graph's full-size masks), instead of all K inside the graph.

    Returns:
        dict ``masks`` (m, h0, w0) bool, ``scores`` (m,) float32, ``classes`` (m,) int32,
        ``boxes`` (m, 4) float32 x1 y1 x2 y2 in original pixels (x2, y2 exclusive);
        m = ``num_detections``, empty slots dropped.
    """
    masks = np.asarray(detections["detection_masks"], np.float32)
    if masks.ndim != 3:
        raise ValueError(f"postprocess_image expects one image's masks (K, H, W), got shape {masks.shape}")
    m = int(np.asarray(detections["num_detections"]))
    vh, vw = (int(v) for v in valid_size)
    oh, ow = (int(v) for v in orig_size)
    canvas = masks.shape[1:] if canvas_size is None else tuple(int(v) for v in canvas_size)
    if not (0 < vh <= canvas[0] and 0 < vw <= canvas[1]):
        raise ValueError(f"postprocess_image: valid_size {valid_size} outside the canvas {tuple(canvas)}")
    if tuple(masks.shape[1:]) == tuple(canvas):
        soft = masks[:m, :vh, :vw]
    else:  # strided masks: upsample the filled slots to the canvas, only where the image is
        soft = resize_bilinear(masks[:m], canvas, crop=(vh, vw))
    resized = resize_bilinear(soft, (oh, ow)) if (vh, vw) != (oh, ow) else soft
    binary = resized > mask_thr
    return {
        "masks": binary,
        "scores": np.asarray(detections["detection_scores"], np.float32)[:m],
        "classes": np.asarray(detections["detection_classes"], np.int32)[:m],
        "boxes": _np_boxes(binary),
    }


def resize_bilinear(x, size, crop=None):
    """Bilinear resize of (n, h, w) float arrays with half-pixel centres (align_corners=False,
    no antialiasing: torch ``F.interpolate`` bilinear). Returns (n, *size) float32, or with
    ``crop`` (ch, cw) only its top-left (n, ch, cw) (computed alone: the same values)."""
    x = np.asarray(x, np.float32)
    n, h, w = x.shape
    oh, ow = size
    crop_h, crop_w = (oh, ow) if crop is None else crop

    def axis(src, dst):
        pos = np.clip((np.arange(dst) + 0.5) * (src / dst) - 0.5, 0, src - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, src - 1)
        return lo, hi, (pos - lo).astype(np.float32)

    y0, y1, fy = (a[:crop_h] for a in axis(h, oh))
    x0, x1, fx = (a[:crop_w] for a in axis(w, ow))
    rows = x[:, y0] * (1 - fy)[None, :, None] + x[:, y1] * fy[None, :, None]  # (n, oh, w)
    return rows[:, :, x0] * (1 - fx) + rows[:, :, x1] * fx


def _np_boxes(binary):
    boxes = np.zeros((binary.shape[0], 4), np.float32)
    for i, m in enumerate(binary):  # host side, after NMS: at most K masks
        ys, xs = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
        if len(xs):
            boxes[i] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
    return boxes


@keras.saving.register_keras_serializable(package="solo_tf")
class SOLODecoder(layers.Layer):
    """Raw head outputs (dict) -> ``detection_masks`` (B, K, H, W), ``detection_scores``
    (B, K), ``detection_classes`` (B, K), ``detection_boxes`` (B, K, 4),
    ``num_detections`` (B,), K = ``postprocess.max_per_img``."""

    def __init__(self, model_config, postprocess_config=None, full_size_masks=True, **kwargs):
        super().__init__(**kwargs)
        self.full_size_masks = bool(full_size_masks)
        self.model_config = as_section(ModelConfig, model_config, "model")
        self.postprocess_config = as_section(PostprocessConfig, postprocess_config, "postprocess")

    def call(self, outputs):
        return decode(outputs, self.model_config, self.postprocess_config, full_size_masks=self.full_size_masks)

    def get_config(self):
        config = super().get_config()
        config.update(
            model_config=dataclasses.asdict(self.model_config),
            postprocess_config=dataclasses.asdict(self.postprocess_config),
            full_size_masks=self.full_size_masks,
        )
        return config
