"""Matrix NMS (SOLOv2), pure ``keras.ops`` with static shapes.

Naming: n = candidate masks, P = pixels per mask, K = ``max_num`` output slots.

The algorithm is the reference ``mask_matrix_nms`` (mmdetection): candidates are sorted by
score; IoU of every pair comes from one matmul of the flattened binary masks; only pairs of
the same class where the row is scored higher than the column count (constant upper-triangular
mask). For column j the decay is ``min_i f(iou_ij) / f(comp_i)``, ``comp_i`` = the largest IoU
of candidate i with any same-class candidate above it; ``f(x) = exp(-sigma x^2)`` (gaussian)
or ``1 - x`` (linear). Decayed scores below ``filter_thr`` are dropped (only when
``filter_thr > 0``, as the reference), the rest sorted again and the top ``max_num`` kept.

Static-shape differences from the reference (none changes a result):
* invalid candidates (``valid`` False) are sorted last and never decay a valid one;
* outputs are padded to K slots: score 0, label -1, index -1, with a count of the valid ones;
* a pair with an empty union gets IoU 0 (the reference divides 0 by 0), and the linear
  kernel's ``1 - comp`` is floored at 1e-6 (the reference divides by 0 when two same-class
  masks are identical; here the lower one decays to 0).
"""

from __future__ import annotations

import numpy as np
from keras import ops

_NEG = -1e9  # sort key of an invalid candidate; real scores are probabilities
_KERNELS = ("gaussian", "linear")


def matrix_nms(
    masks,
    labels,
    scores,
    *,
    kernel="gaussian",
    sigma=2.0,
    filter_thr=-1.0,
    max_num=100,
    nms_pre=-1,
    mask_area=None,
    valid=None,
):
    """Decay the scores of overlapping same-class masks and keep the best ``max_num``.

    Batched or not, decided by the rank of ``labels``: (n,) for one set, (B, n) for a batch.

    Args:
        masks: binary masks (n, h, w) or flattened (n, P); batched (B, n, h, w) or
            (B, n, P). Any dtype; values must be 0/1.
        labels: (n,) / (B, n) int class of each candidate.
        scores: (n,) / (B, n) float scores, in any order (sorted inside).
        kernel: ``"gaussian"`` or ``"linear"``.
        sigma: gaussian multiplier.
        filter_thr: drop decayed scores below this; ``<= 0`` keeps all (the reference).
        max_num: K, the number of output slots (static).
        nms_pre: keep only the ``nms_pre`` best-scored candidates before NMS; ``<= 0``: all.
        mask_area: optional (n,) / (B, n) pixel count of each mask (computed if None).
        valid: optional (n,) / (B, n) bool; False marks padding candidates.

    Returns:
        dict of ``scores`` (K,) / (B, K) float32 decayed scores, descending, 0 in empty
        slots; ``labels`` (K,) / (B, K) int32, -1 in empty slots; ``keep_inds`` (K,) /
        (B, K) int32 index of each kept candidate in the input, -1 in empty slots;
        ``num`` () / (B,) int32 number of filled slots.
    """
    if kernel not in _KERNELS:
        raise ValueError(f"matrix_nms kernel must be one of {_KERNELS}, got {kernel!r}")
    max_num = int(max_num)
    if max_num <= 0:
        raise ValueError(f"matrix_nms max_num must be a positive integer, got {max_num}")
    labels = ops.convert_to_tensor(labels)
    batched = len(labels.shape) == 2
    if len(labels.shape) not in (1, 2):
        raise ValueError(f"matrix_nms labels must be (n,) or (B, n), got shape {labels.shape}")
    masks = ops.convert_to_tensor(masks)
    scores = ops.convert_to_tensor(scores)
    if not batched:
        masks, labels, scores = masks[None], labels[None], scores[None]
        mask_area = None if mask_area is None else ops.convert_to_tensor(mask_area)[None]
        valid = None if valid is None else ops.convert_to_tensor(valid)[None]
    out = _matrix_nms_batched(masks, labels, scores, kernel, float(sigma), float(filter_thr), max_num,
                              int(nms_pre), mask_area, valid)
    if not batched:
        out = {k: v[0] for k, v in out.items()}
    return out


def _matrix_nms_batched(masks, labels, scores, kernel, sigma, filter_thr, max_num, nms_pre, mask_area, valid):
    n = masks.shape[1]
    if n is None:
        raise ValueError("matrix_nms needs a static number of candidates")
    # The batch size may be dynamic (a Keras functional graph): every shape below is built
    # from n only, via repeat / pad, never from B.
    scores = ops.cast(scores, "float32")
    if n == 0:
        return _empty(scores, max_num)
    p = int(np.prod(masks.shape[2:]))
    flat = ops.cast(ops.reshape(masks, (-1, n, p)), "float32")  # (B, n, P)
    labels = ops.cast(labels, "int32")
    valid = ops.ones_like(labels, dtype="bool") if valid is None else ops.cast(valid, "bool")
    area = ops.sum(flat, axis=-1) if mask_area is None else ops.cast(mask_area, "float32")  # (B, n)

    # Sort by score; only the n x n pair matrix is permuted, never the masks.
    key = ops.where(valid, scores, _NEG)
    key_sorted, order = ops.top_k(key, k=n)  # (B, n)
    order = ops.cast(order, "int32")
    if 0 < nms_pre < n:
        n = nms_pre
        key_sorted, order = key_sorted[:, :n], order[:, :n]
    s_valid = ops.take_along_axis(valid, order, axis=1)
    s_scores = ops.take_along_axis(scores, order, axis=1)
    s_labels = ops.take_along_axis(labels, order, axis=1)
    s_area = ops.take_along_axis(area, order, axis=1)

    # Zeroed masks of padding candidates: they share no pixels with anything.
    flat = flat * ops.cast(ops.expand_dims(valid, -1), "float32")
    inter = ops.matmul(flat, ops.transpose(flat, (0, 2, 1)))  # (B, n0, n0)
    inter = ops.take_along_axis(inter, _rows(order, inter.shape[2]), axis=1)  # (B, n, n0)
    inter = ops.take_along_axis(inter, _cols(order, n), axis=2)  # (B, n, n)

    # Outer sums/equalities through ops.repeat: the broadcasting form does not convert to
    # TFLite builtins (docs/DESIGN.md).
    union = _rows(s_area, n) + _cols(s_area, n) - inter
    iou = inter / ops.maximum(union, 1e-6)
    label_i, label_j = _rows(s_labels, n), _cols(s_labels, n)
    triu = ops.convert_to_tensor(np.triu(np.ones((n, n), np.float32), k=1))
    decay_iou = iou * ops.cast(ops.equal(label_i, label_j), "float32") * triu  # (B, n, n)

    comp = ops.max(decay_iou, axis=1)  # (B, n): largest IoU with a same-class mask above
    comp_i = _rows(comp, n)
    if kernel == "gaussian":
        ratio = ops.exp(-sigma * (decay_iou * decay_iou)) / ops.exp(-sigma * (comp_i * comp_i))
    else:
        ratio = (1.0 - decay_iou) / ops.maximum(1.0 - comp_i, 1e-6)
    decay = ops.min(ratio, axis=1)  # (B, n)
    decayed = s_scores * decay

    keep = s_valid
    if filter_thr > 0:
        keep = ops.logical_and(keep, decayed >= filter_thr)

    # Second sort, padded to K slots when there are fewer candidates.
    key2 = ops.where(keep, decayed, _NEG)
    if n < max_num:
        pad = [[0, 0], [0, max_num - n]]
        key2 = ops.pad(key2, pad, constant_values=_NEG)
        keep = ops.pad(ops.cast(keep, "int32"), pad) > 0
        decayed = ops.pad(decayed, pad)
        s_labels = ops.pad(s_labels, pad, constant_values=-1)
        order = ops.pad(order, pad, constant_values=-1)
    _, pick = ops.top_k(key2, k=max_num)  # (B, K)
    pick = ops.cast(pick, "int32")
    out_keep = ops.take_along_axis(keep, pick, axis=1)
    return {
        "scores": ops.where(out_keep, ops.take_along_axis(decayed, pick, axis=1), 0.0),
        "labels": ops.where(out_keep, ops.take_along_axis(s_labels, pick, axis=1), -1),
        "keep_inds": ops.where(out_keep, ops.take_along_axis(order, pick, axis=1), -1),
        "num": ops.sum(ops.cast(out_keep, "int32"), axis=1),
    }


def _rows(x, n):
    """(B, m) -> (B, m, n) with out[b, i, j] = x[b, i]."""
    return ops.repeat(ops.expand_dims(x, 2), n, axis=2)


def _cols(x, n):
    """(B, m) -> (B, n, m) with out[b, i, j] = x[b, j]."""
    return ops.repeat(ops.expand_dims(x, 1), n, axis=1)


def _empty(scores, max_num):
    """K empty slots for a batch of zero candidates; scores (B, 0)."""
    zeros = ops.pad(scores, [[0, 0], [0, max_num]])  # (B, K)
    return {
        "scores": zeros,
        "labels": ops.cast(zeros, "int32") - 1,
        "keep_inds": ops.cast(zeros, "int32") - 1,
        "num": ops.cast(ops.sum(zeros, axis=1), "int32"),
    }
