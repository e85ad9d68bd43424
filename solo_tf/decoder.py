"""Raw head outputs -> fixed-size detections, in ``keras.ops`` (runs inside exported graphs).

Naming: B = batch, L = levels, S_l = grid of level l, C = classes, G = sum_l S_l^2 grid cells,
n = ``nms_pre`` candidates, K = ``max_per_img`` output slots, (H, W) = padded input size,
(h, w) = (H/4, W/4), the resolution every mask is judged at (as the reference).

Pipeline (DESIGN.md, Inference): sigmoid category scores; 2x2 local max (the reference
``points_nms``: a cell survives when no up / left / up-left neighbour beats it); all levels
flattened to G*C (cell, class) pairs; the best n pairs by score (static ``top_k``), those with
score > ``score_thr`` valid; masks built for those n only (SOLOv2: gathered kernels x mask
feature; SOLO: gathered channels; Decoupled: gathered x channel * gathered y channel), at
(h, w); masks with area (at ``mask_thr``) <= the level's stride dropped; score *= maskness;
Matrix NMS (``update_thr``, K); the K masks upsampled bilinearly to (H, W).

One deliberate difference from the reference: it computes masks for every pair above
``score_thr`` and lets Matrix NMS take the best ``nms_pre`` by score * maskness after the
area filter; a static graph must bound the mask work, so here the best ``nms_pre`` are
taken by category score before masks are built. Both agree whenever at most ``nms_pre``
pairs pass ``score_thr`` (the usual case for 500).
"""

from __future__ import annotations

import numpy as np
from keras import ops

from solo_tf.matrix_nms import matrix_nms


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


def decode(outputs, model_config, post_config):
    """Raw model outputs of a batch -> fixed-size detections.

    Args:
        outputs: dict of raw logits, channels-last (the model contract): ``category_{l}``
            (B, S_l, S_l, C) and SOLOv2 ``kernel_{l}`` (B, S_l, S_l, E) + ``mask_feature``
            (B, H/4, W/4, E); SOLO ``mask_{l}`` (B, H/m_l, W/m_l, S_l^2); Decoupled SOLO
            ``mask_x_{l}`` / ``mask_y_{l}`` (B, H/m_l, W/m_l, S_l).
        model_config: :class:`solo_tf.config.ModelConfig`.
        post_config: :class:`solo_tf.config.PostprocessConfig`.

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
    variant = model_config.variant
    num_grids = [int(s) for s in model_config.num_grids]
    strides = [int(s) for s in model_config.strides]
    num_classes = int(model_config.num_classes)
    H, W = (int(v) for v in model_config.image_size)
    h, w = H // 4, W // 4
    _check_outputs(outputs, variant, len(num_grids))

    # --- candidates: (cell, class) pairs over all levels -----------------------------------
    flat_scores = []
    for lvl, s in enumerate(num_grids):
        cate = points_nms(ops.sigmoid(ops.cast(outputs[f"category_{lvl}"], "float32")))
        flat_scores.append(ops.reshape(cate, (-1, s * s * num_classes)))
    flat_scores = ops.concatenate(flat_scores, axis=1)  # (B, G*C), index = cell * C + class
    total = sum(s * s for s in num_grids) * num_classes
    n = min(int(post_config.nms_pre), total)
    cand_scores, cand = ops.top_k(flat_scores, k=n)  # (B, n)
    cand = ops.cast(cand, "int32")
    cells = cand // num_classes  # (B, n) index into G
    labels = cand % num_classes
    valid = cand_scores > float(post_config.score_thr)

    # --- masks of the candidates, soft, (B, n, h, w) ---------------------------------------
    if variant == "solov2":
        soft = _solov2_masks(outputs, cells, num_grids)
    elif variant == "solo":
        soft = _solo_masks(outputs, cells, num_grids, (h, w))
    else:
        soft = _decoupled_masks(outputs, cells, num_grids, (h, w))
    binary = ops.cast(soft > float(post_config.mask_thr), "float32")
    area = ops.sum(binary, axis=(2, 3))  # (B, n)
    cell_stride = np.concatenate([np.full(s * s, st, np.float32) for s, st in zip(num_grids, strides)])
    stride = ops.take(ops.convert_to_tensor(cell_stride), cells)  # (B, n)
    valid = ops.logical_and(valid, area > stride)
    maskness = ops.sum(soft * binary, axis=(2, 3)) / ops.maximum(area, 1.0)
    scores = cand_scores * maskness

    # --- Matrix NMS and the K survivors ----------------------------------------------------
    k = int(post_config.max_per_img)
    nms = matrix_nms(
        ops.reshape(binary, (-1, n, h * w)),
        labels,
        scores,
        kernel=post_config.kernel,
        sigma=float(post_config.sigma),
        filter_thr=float(post_config.update_thr),
        max_num=k,
        mask_area=area,
        valid=valid,
    )
    filled = nms["keep_inds"] >= 0  # (B, K)
    picked = ops.take_along_axis(ops.reshape(soft, (-1, n, h * w)), _per_slot(ops.maximum(nms["keep_inds"], 0), h * w),
                                 axis=1)  # (B, K, h*w)
    picked = picked * ops.cast(ops.expand_dims(filled, -1), "float32")
    # Bilinear upsampling (half-pixel centres, as the reference's align_corners=False).
    picked = ops.transpose(ops.reshape(picked, (-1, k, h, w)), (0, 2, 3, 1))  # (B, h, w, K)
    masks = ops.image.resize(picked, (H, W), interpolation="bilinear", data_format="channels_last")
    masks = ops.transpose(masks, (0, 3, 1, 2))  # (B, K, H, W)

    return {
        "detection_masks": masks,
        "detection_scores": nms["scores"],
        "detection_classes": nms["labels"],
        "detection_boxes": masks_to_boxes(masks > float(post_config.mask_thr)),
        "num_detections": nms["num"],
    }


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


# --- mask builders ----------------------------------------------------------------------------
def _check_outputs(outputs, variant, num_levels):
    need = [f"category_{l}" for l in range(num_levels)]
    if variant == "solov2":
        need += [f"kernel_{l}" for l in range(num_levels)] + ["mask_feature"]
    elif variant == "solo":
        need += [f"mask_{l}" for l in range(num_levels)]
    elif variant == "decoupled_solo":
        need += [f"mask_x_{l}" for l in range(num_levels)] + [f"mask_y_{l}" for l in range(num_levels)]
    else:
        raise ValueError(f"decode: unknown model variant {variant!r}")
    missing = [k for k in need if k not in outputs]
    if missing:
        raise ValueError(f"decode: raw outputs for variant {variant!r} lack {missing}; got {sorted(outputs)}")


def _per_slot(index, size):
    """(B, m) int -> (B, m, size), the index repeated along a last axis for take_along_axis."""
    return ops.repeat(ops.expand_dims(index, -1), size, axis=2)


def _level_offsets(num_grids):
    starts = np.cumsum([0] + [s * s for s in num_grids])
    return [int(v) for v in starts[:-1]]


def _solov2_masks(outputs, cells, num_grids):
    """Dynamic 1x1 convolution of the n gathered kernels: (B, n, h, w) sigmoid masks."""
    feature = ops.cast(outputs["mask_feature"], "float32")  # (B, h, w, E)
    e = feature.shape[-1]
    kernels = ops.concatenate(
        [ops.reshape(ops.cast(outputs[f"kernel_{l}"], "float32"), (-1, s * s, e)) for l, s in enumerate(num_grids)],
        axis=1,
    )  # (B, G, E)
    kernels = ops.take_along_axis(kernels, _per_slot(cells, e), axis=1)  # (B, n, E)
    hh, ww = feature.shape[1], feature.shape[2]
    logits = ops.matmul(kernels, ops.transpose(ops.reshape(feature, (-1, hh * ww, e)), (0, 2, 1)))  # (B, n, hw)
    return ops.reshape(ops.sigmoid(logits), (-1, cells.shape[1], hh, ww))


def _gather_channels(x, index, size):
    """Sigmoid of channels ``index`` (B, n) of x (B, h_l, w_l, c), resized to ``size``:
    (B, h, w, n). Sigmoid before resizing, as the reference."""
    hl, wl, c = x.shape[1], x.shape[2], x.shape[3]
    flat = ops.reshape(ops.cast(x, "float32"), (-1, hl * wl, c))
    n = index.shape[1]
    picked = ops.take_along_axis(flat, ops.repeat(ops.expand_dims(index, 1), hl * wl, axis=1), axis=2)
    picked = ops.reshape(ops.sigmoid(picked), (-1, hl, wl, n))
    if (hl, wl) != tuple(size):
        picked = ops.image.resize(picked, size, interpolation="bilinear", data_format="channels_last")
    return picked


def _select_level(per_level, cells, num_grids):
    """Pick, for each candidate, its own level's mask: sum_l [cell in level l] * mask_l."""
    starts = _level_offsets(num_grids)
    out = 0.0
    for mask_l, start, s in zip(per_level, starts, num_grids):
        in_level = ops.logical_and(cells >= start, cells < start + s * s)  # (B, n)
        out = out + mask_l * ops.cast(ops.expand_dims(ops.expand_dims(in_level, 1), 1), "float32")
    return ops.transpose(out, (0, 3, 1, 2))  # (B, n, h, w)


def _solo_masks(outputs, cells, num_grids, size):
    """SOLO: channel k of the candidate's level, (B, n, h, w)."""
    per_level = []
    for l, (start, s) in enumerate(zip(_level_offsets(num_grids), num_grids)):
        local = ops.clip(cells - start, 0, s * s - 1)
        per_level.append(_gather_channels(outputs[f"mask_{l}"], local, size))
    return _select_level(per_level, cells, num_grids)


def _decoupled_masks(outputs, cells, num_grids, size):
    """Decoupled SOLO: sigmoid(x_j) * sigmoid(y_i) for cell k = i*S + j, (B, n, h, w)."""
    per_level = []
    for l, (start, s) in enumerate(zip(_level_offsets(num_grids), num_grids)):
        local = ops.clip(cells - start, 0, s * s - 1)
        mask_x = _gather_channels(outputs[f"mask_x_{l}"], local % s, size)
        mask_y = _gather_channels(outputs[f"mask_y_{l}"], local // s, size)
        per_level.append(mask_x * mask_y)
    return _select_level(per_level, cells, num_grids)


# --- host side --------------------------------------------------------------------------------
def postprocess_image(detections, valid_size, orig_size, mask_thr=0.5):
    """One image's fixed-size detections (numpy) -> its instances at the original size.

    Args:
        detections: dict of numpy arrays for ONE image, as :func:`decode` gives them without
            the batch axis: ``detection_masks`` (K, H, W), ``detection_scores`` (K,),
            ``detection_classes`` (K,), ``num_detections`` ().
        valid_size: (h', w') of the resized image inside the (H, W) canvas (top-left).
        orig_size: (h0, w0) of the original image.
        mask_thr: threshold applied after resizing.

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
    if not (0 < vh <= masks.shape[1] and 0 < vw <= masks.shape[2]):
        raise ValueError(f"postprocess_image: valid_size {valid_size} outside the canvas {masks.shape[1:]}")
    soft = masks[:m, :vh, :vw]
    resized = resize_bilinear(soft, (oh, ow)) if (vh, vw) != (oh, ow) else soft
    binary = resized > mask_thr
    return {
        "masks": binary,
        "scores": np.asarray(detections["detection_scores"], np.float32)[:m],
        "classes": np.asarray(detections["detection_classes"], np.int32)[:m],
        "boxes": _np_boxes(binary),
    }


def resize_bilinear(x, size):
    """Bilinear resize of (n, h, w) float arrays with half-pixel centres (align_corners=False,
    no antialiasing: torch ``F.interpolate`` bilinear). Returns (n, *size) float32."""
    x = np.asarray(x, np.float32)
    n, h, w = x.shape
    oh, ow = size

    def axis(src, dst):
        pos = np.clip((np.arange(dst) + 0.5) * (src / dst) - 0.5, 0, src - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, src - 1)
        return lo, hi, (pos - lo).astype(np.float32)

    y0, y1, fy = axis(h, oh)
    x0, x1, fx = axis(w, ow)
    rows = x[:, y0] * (1 - fy)[None, :, None] + x[:, y1] * fy[None, :, None]  # (n, oh, w)
    return rows[:, :, x0] * (1 - fx) + rows[:, :, x1] * fx


def _np_boxes(binary):
    boxes = np.zeros((binary.shape[0], 4), np.float32)
    for i, m in enumerate(binary):  # host side, after NMS: at most K masks
        ys, xs = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
        if len(xs):
            boxes[i] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
    return boxes
