"""SOLO losses: sigmoid focal loss on category grids, Dice loss on positive masks.

Both return *sums*; the caller normalises (focal by num_pos + 1, Dice by num_pos), so the
normaliser is counted once over every level and image of the batch.
"""

from __future__ import annotations

from keras import ops


def sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0):
    """Sum of the sigmoid focal loss (Lin et al.) over all elements.

    Args:
        logits: (..., C) raw category logits.
        targets: (..., C) 0/1 one-hot targets (all zeros for background cells).
        alpha, gamma: focal parameters.

    Returns:
        scalar float32.
    """
    logits = ops.cast(logits, "float32")
    targets = ops.cast(targets, "float32")
    p = ops.sigmoid(logits)
    # numerically stable BCE with logits
    ce = ops.maximum(logits, 0.0) - logits * targets + ops.log1p(ops.exp(-ops.abs(logits)))
    p_t = p * targets + (1.0 - p) * (1.0 - targets)
    alpha_t = alpha * targets + (1.0 - alpha) * (1.0 - targets)
    return ops.sum(alpha_t * ops.power(1.0 - p_t, gamma) * ce)


def dice_loss(mask_probs, mask_targets, weights, eps=1e-3):
    """Sum over positives of ``1 - 2*sum(pq) / (sum(p^2) + sum(q^2) + 2*eps)``.

    Args:
        mask_probs: (B, M, P) predicted soft masks in [0, 1] of the gathered cells (P pixels):
            sigmoid of the logits, or Decoupled SOLO's product of two sigmoids.
        mask_targets: (B, M, P) 0/1 targets.
        weights: (B, M) 1 for a real positive, 0 for filler slots.

    Returns:
        scalar float32.
    """
    p = ops.cast(mask_probs, "float32")
    q = ops.cast(mask_targets, "float32")
    inter = ops.sum(p * q, axis=-1)
    denom = ops.sum(p * p, axis=-1) + ops.sum(q * q, axis=-1) + 2.0 * eps
    return ops.sum((1.0 - 2.0 * inter / denom) * ops.cast(weights, "float32"))
