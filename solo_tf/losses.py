"""SOLO losses: :class:`SOLOLoss`, the focal + Dice loss of a batch, and its two terms.

:class:`SOLOLoss` is a Keras layer the model owns and calls from ``compute_loss`` (as
keras-hub's RetinaNet owns its label encoder): grid targets (from the pipeline or assigned
here), sigmoid focal loss over every cell of every level, Dice loss over the positive cells,
whose masks come from the variant's :meth:`~solo_tf.variants.Variant.masks_for_cells` - the
same function the decoder builds its masks with.

:func:`sigmoid_focal_loss` and :func:`dice_loss` return *sums*; :class:`SOLOLoss`
normalises (focal by num_pos + 1, Dice by num_pos), so the normaliser is counted once over
every level and image of the batch.
"""

from __future__ import annotations

import dataclasses

import keras
from keras import layers, ops

from solo_tf.config import LossConfig, ModelConfig, as_section
from solo_tf.distribute import replica_sum
from solo_tf.targets import gather_mask_targets, grid_targets, positive_slots, resize_masks
from solo_tf.variants import get_variant, multi_level_flatten


@keras.saving.register_keras_serializable(package="solo_tf")
class SOLOLoss(layers.Layer):
    """Focal and Dice losses of a batch, for one model config.

    Args:
        model_config: :class:`solo_tf.config.ModelConfig` (or its dict form): variant,
            grids, scale ranges.
        loss_config: :class:`solo_tf.config.LossConfig` (or its dict form; default: the
            paper's weights).

    Call ``loss(y_true, y_pred)``: ``y_true`` the ground-truth dict of ``SOLO.fit``
    (``classes`` (B, N), ``boxes`` (B, N, 4), ``masks`` (B, N, H/4, W/4), ``centers``
    (B, N, 2), optionally ``grid_category_{l}`` / ``grid_owner_{l}`` (B, S, S)),
    ``y_pred`` the raw outputs dict. Returns ``(focal, dice)`` float32 scalars, already
    weighted and normalised: focal = w_f * sum / (num_pos + 1); dice = w_d * sum /
    max(num_pos, 1) over the positives with a Dice slot; with no positives Dice is exactly 0.
    :meth:`terms` also returns the positives that had no slot (``loss.max_positives``).
    """

    def __init__(self, model_config, loss_config=None, **kwargs):
        kwargs.setdefault("dtype", "float32")  # never autocast to a mixed-precision dtype
        super().__init__(**kwargs)
        self.model_config = model_config = as_section(ModelConfig, model_config, "model")
        self.loss_config = as_section(LossConfig, loss_config, "loss")
        self.variant = get_variant(model_config)
        self.built = True  # no weights

    def call(self, y_true, y_pred):
        terms = self.terms(y_true, y_pred)
        return terms["focal"], terms["dice"]

    def terms(self, y_true, y_pred):
        """The loss terms and the Dice slots' overflow of a batch.

        Returns:
            dict of float32 scalars: ``focal`` and ``dice`` (weighted and normalised, as
            :meth:`call` returns them) and ``overflow``, the positives of the batch that had
            no Dice slot (``loss.max_positives``; 0 whenever they fit). Under a
            tf.distribute strategy the normalisers count every replica's positives, so the
            terms are this replica's share of the global batch's loss (they sum to it).
        """
        cfg, loss_cfg = self.model_config, self.loss_config
        self.variant.check_outputs(y_pred, "SOLOLoss")
        grids = self.grid_targets(y_true)
        cate = multi_level_flatten([category for category, _ in grids])  # (B, G) class or -1
        logits = multi_level_flatten([y_pred[f"category_{l}"] for l in range(len(grids))])  # (B, G, C)
        onehot = ops.one_hot(ops.maximum(cate, 0), cfg.num_classes) * ops.cast(cate >= 0, "float32")[..., None]
        # normalisers over the global batch: all replicas' positives (solo_tf.distribute)
        num_pos = replica_sum(ops.sum(ops.cast(cate >= 0, "float32")))
        focal_sum = sigmoid_focal_loss(logits, onehot, alpha=loss_cfg.focal_alpha, gamma=loss_cfg.focal_gamma)
        focal = loss_cfg.focal_weight * focal_sum / (num_pos + 1.0)

        dice_sum, dice_count, overflow = self.dice_terms(y_true, y_pred, grids)
        # the reference divides by num_pos; with capped slots that is the count with a slot
        dice = loss_cfg.dice_weight * dice_sum / ops.maximum(replica_sum(dice_count), 1.0)
        return {"focal": focal, "dice": dice, "overflow": overflow}

    def grid_targets(self, y_true):
        """Per-level (category, owner) grids, each (B, S, S) int32: from the pipeline if it
        sent them, else assigned here (:func:`solo_tf.targets.grid_targets`)."""
        return grid_targets(y_true, self.model_config)

    def dice_terms(self, y_true, y_pred, grids):
        """Unnormalised Dice sum over the positive cells of the batch, and their count.

        Positives are gathered per group of :meth:`~solo_tf.variants.Variant.loss_level_groups`
        (SOLO: level by level at the level's mask stride; SOLOv2: all levels at once), into
        :meth:`dice_slots` slots per image, and their masks built by the variant at that
        group's mask resolution. An image with more positives than slots keeps a fair subset
        (:func:`solo_tf.targets.positive_slots`) and counts the rest as overflow.

        Returns:
            (sum, count, overflow) float32 scalars: the Dice sum and the number of positives
            it covers, and the positives left without a slot.
        """
        variant = self.variant
        max_instances = y_true["masks"].shape[1]
        total, count, overflow = 0.0, 0.0, 0.0
        resized = {}  # groups sharing a mask size (SOLO levels of one stride) share targets
        for levels in variant.loss_level_groups():
            owner = multi_level_flatten([grids[l][1] for l in levels])  # (B, G_group) slot or -1
            cells, owners, pos, dropped = positive_slots(owner, self.dice_slots(max_instances, levels), max_instances)
            probs = variant.masks_for_cells(y_pred, cells, levels)  # (B, M, h, w)
            m, hm, wm = probs.shape[1], probs.shape[2], probs.shape[3]
            if (hm, wm) not in resized:
                resized[(hm, wm)] = resize_masks(y_true["masks"], (hm, wm))
            targets = gather_mask_targets(resized[(hm, wm)], owners)  # (B, M, h, w)
            total = total + dice_loss(
                ops.reshape(probs, (-1, m, hm * wm)), ops.reshape(targets, (-1, m, hm * wm)), pos
            )
            count = count + ops.sum(pos)
            overflow = overflow + ops.sum(dropped)
        return total, count, overflow

    def dice_slots(self, max_instances, levels):
        """Positive slots per image for the Dice loss over ``levels``: ``loss.max_positives``,
        at most the bound no image can exceed
        (:meth:`~solo_tf.variants.Variant.max_positive_slots`)."""
        bound = self.variant.max_positive_slots(max_instances, levels)
        cap = self.loss_config.max_positives
        return bound if cap is None else min(bound, int(cap))

    def get_config(self):
        config = super().get_config()
        model = dataclasses.asdict(self.model_config)
        # the loss never reads them; a path would leak into saved files
        model["backbone_weights"] = model["init_weights"] = None
        config.update(model_config=model, loss_config=dataclasses.asdict(self.loss_config))
        return config


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
