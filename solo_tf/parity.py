"""Compare the detections of two exports (or an export and Keras) of the same model.

numpy only; used by the export tests and benchmarks, not by the library's export path.
Each takes per-image dicts of numpy arrays for ONE image: ``detection_masks`` (K, h, w)
binary (or soft, > 0.5), ``detection_scores`` (K,), ``detection_classes`` (K,),
``num_detections`` ().
"""

from __future__ import annotations

import numpy as np


def mask_iou(a, b) -> float:
    """IoU of two binary masks of the same shape (1.0 for two empty masks)."""
    a = np.asarray(a) > 0
    b = np.asarray(b) > 0
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def compare_detections(reference, other, score_tol=1e-3, borderline=0.0):
    """Match one image's detections of two exports of the same model.

    Args:
        reference, other: one image's detections (module doc).
        score_tol: scores further apart than this do not match.
        borderline: a detection scored below ``borderline + score_tol`` may be missing on the
            other side (it sits on the decoder's keep threshold; pass ``update_thr``).

    Returns:
        dict ``matched`` (int), ``unmatched`` (non-borderline detections without a partner,
        both sides), ``max_score_diff`` and ``min_mask_iou`` over matched pairs (0 and 1
        when none), ``ious`` (list per matched pair).

    Greedy by the reference's score order: each detection takes the unmatched partner of the
    same class with a score within ``score_tol`` and the highest mask IoU.
    """
    ma, sa, ca = _unpack(reference)
    mb, sb, cb = _unpack(other)
    used = np.zeros(len(sb), bool)
    ious, diffs, missing_a = [], [], 0
    for i in range(len(sa)):
        best, best_iou = -1, -1.0
        for j in range(len(sb)):
            if used[j] or cb[j] != ca[i] or abs(sb[j] - sa[i]) > score_tol:
                continue
            iou = mask_iou(ma[i], mb[j])
            if iou > best_iou:
                best, best_iou = j, iou
        if best < 0:
            missing_a += int(sa[i] >= borderline + score_tol)
            continue
        used[best] = True
        ious.append(best_iou)
        diffs.append(abs(sb[best] - sa[i]))
    missing_b = int(np.sum((~used) & (sb >= borderline + score_tol)))
    return {
        "matched": len(ious),
        "unmatched": missing_a + missing_b,
        "max_score_diff": float(max(diffs)) if diffs else 0.0,
        "min_mask_iou": float(min(ious)) if ious else 1.0,
        "ious": ious,
    }


def mask_agreement(references, others, min_score=0.0):
    """How well a quantised export's masks agree with the float one's, over many images.

    For every reference detection scored >= ``min_score``: the best IoU with a detection
    of the same class in ``other`` (0 when there is none), whatever their scores.

    Args:
        references, others: lists of per-image dicts as :func:`compare_detections` takes.

    Returns:
        dict ``mean_iou`` (1.0 when there are no reference detections), ``recall`` (share
        with a partner of IoU >= 0.5), ``count``.
    """
    ious = []
    for ref, other in zip(references, others):
        ref_masks, ref_scores, ref_classes = _unpack(ref)
        masks, _, classes = _unpack(other)
        for mask, score, cls in zip(ref_masks, ref_scores, ref_classes):
            if score >= min_score:
                ious.append(max([mask_iou(mask, m) for m, c in zip(masks, classes) if c == cls], default=0.0))
    if not ious:
        return {"mean_iou": 1.0, "recall": 1.0, "count": 0}
    return {"mean_iou": float(np.mean(ious)), "recall": float(np.mean(np.asarray(ious) >= 0.5)), "count": len(ious)}


def _unpack(d):
    """One image's filled slots: binary masks (soft ones thresholded at 0.5), scores, classes."""
    n = int(np.asarray(d["num_detections"]))
    masks = np.asarray(d["detection_masks"])[:n]
    masks = masks > (0.5 if masks.dtype.kind == "f" else 0)
    return masks, np.asarray(d["detection_scores"], np.float64)[:n], np.asarray(d["detection_classes"])[:n]
