"""The SOLO keras.Model: wiring, ``compute_loss`` (targets + losses on the accelerator) and
serialization.

One functional graph per variant: images (B, H, W, 3) RGB 0-255 in, the raw head outputs
out (a dict; see :mod:`solo_tf.heads`). ``model.compile(optimizer)`` + ``model.fit(ds)``
trains it: ``compute_loss`` assigns grid targets in-graph (or reads the grids the tf.data
pipeline computed), then adds the focal and Dice losses. The progress bar shows
``loss``, ``focal_loss`` and ``dice_loss``.
"""

from __future__ import annotations

import dataclasses

import keras
from keras import layers, ops

from solo_tf.backbones import build_backbone
from solo_tf.config import (
    CONFIG_VERSION,
    LabelsConfig,
    LossConfig,
    ModelConfig,
    PostprocessConfig,
    migrate,
    section_from_dict,
)
from solo_tf.fpn import FeaturePyramid
from solo_tf.heads import SOLOHead, SOLOv2Head, level_features
from solo_tf.losses import dice_loss, sigmoid_focal_loss
from solo_tf.mask_feature import MaskFeatureHead
from solo_tf.targets import assign_grids, gather_mask_targets, mask_validity, positive_slots, resize_masks

MEAN_RGB = (123.675, 116.28, 103.53)
STD_RGB = (58.395, 57.12, 57.375)


def _section(cls, value, where):
    """A config section from its dataclass, its dict form or None (the defaults)."""
    if value is None:
        value = cls()
    elif not isinstance(value, cls):
        value = section_from_dict(cls, dict(value), where)
    return value


@keras.saving.register_keras_serializable(package="solo_tf")
class SOLO(keras.Model):
    """SOLO / Decoupled SOLO / SOLOv2 instance segmentation model.

    Args:
        model_config: a :class:`solo_tf.config.ModelConfig` (or its dict form): architecture.
        loss_config: a :class:`solo_tf.config.LossConfig` (default: the paper's weights).
        labels_config: a :class:`solo_tf.config.LabelsConfig`: class names and dataset
            category ids, saved with the model.
        postprocess_config: a :class:`solo_tf.config.PostprocessConfig`: the decoder
            settings inference uses by default, saved with the model.

    Inputs: images (B, H, W, 3) float RGB 0-255, (H, W) = ``model_config.image_size``;
    normalisation (ImageNet mean/std) is inside the model.

    Outputs (dict of logits), level l:
        ``category_{l}`` (B, S, S, C) for every variant, and
        SOLOv2: ``kernel_{l}`` (B, S, S, E), ``mask_feature`` (B, H/4, W/4, E);
        SOLO: ``mask_{l}`` (B, 2H/stride, 2W/stride, S^2);
        Decoupled SOLO: ``mask_x_{l}``, ``mask_y_{l}`` (B, 2H/stride, 2W/stride, S).

    Ground truth ``y`` for ``fit``: dict ``classes`` (B, N) int (-1 padding), ``boxes``
    (B, N, 4), ``masks`` (B, N, H/4, W/4) 0/1, ``centers`` (B, N, 2) (x, y); optionally
    ``grid_category_{l}`` / ``grid_owner_{l}`` (B, S, S) computed by the pipeline.
    """

    def __init__(self, model_config, loss_config=None, labels_config=None, postprocess_config=None, **kwargs):
        cfg = _section(ModelConfig, model_config, "model")
        cfg.validate()
        loss_cfg = _section(LossConfig, loss_config, "loss")
        loss_cfg.validate()
        labels_cfg = _section(LabelsConfig, labels_config, "labels")
        labels_cfg.validate(cfg.num_classes)
        post_cfg = _section(PostprocessConfig, postprocess_config, "postprocess")
        post_cfg.validate()
        h, w = cfg.image_size

        # --- layers ---
        normalize = layers.Normalization(
            mean=MEAN_RGB, variance=[s * s for s in STD_RGB], axis=-1, name="normalize"
        )
        backbone = build_backbone(cfg.backbone, (h, w, 3), weights=cfg.backbone_weights)
        fpn = FeaturePyramid(cfg.fpn_channels, name="fpn")
        if cfg.variant == "solov2":
            head = SOLOv2Head(
                cfg.num_classes, cfg.num_grids, mask_channels=cfg.mask_channels,
                head_channels=cfg.head_channels, stacked_convs=cfg.stacked_convs,
                norm_groups=cfg.norm_groups, prior_prob=cfg.prior_prob, name="head",
            )
            mask_feature = MaskFeatureHead(
                cfg.mask_feature_channels, cfg.mask_channels, norm_groups=cfg.norm_groups, name="mask_feature_head"
            )
        else:
            head = SOLOHead(
                cfg.num_classes, cfg.num_grids, head_channels=cfg.head_channels,
                stacked_convs=cfg.stacked_convs, norm_groups=cfg.norm_groups,
                prior_prob=cfg.prior_prob, decoupled=cfg.variant == "decoupled_solo", name="head",
            )
            mask_feature = None

        # --- functional graph ---
        images = keras.Input(shape=(h, w, 3), name="images")
        pyramid = fpn(backbone(normalize(images)))
        outputs = dict(head(level_features(pyramid, cfg.strides, cfg.image_size)))
        if mask_feature is not None:
            outputs["mask_feature"] = mask_feature({k: pyramid[k] for k in ("P2", "P3", "P4", "P5")})
        outputs = {k: layers.Identity(name=k, dtype="float32")(v) for k, v in sorted(outputs.items())}
        super().__init__(inputs=images, outputs=outputs, **kwargs)

        # --- config and loss trackers ---
        self.model_config = cfg
        self.loss_config = loss_cfg
        self.labels_config = labels_cfg
        self.postprocess_config = post_cfg
        self.focal_loss_tracker = keras.metrics.Mean(name="focal_loss")
        self.dice_loss_tracker = keras.metrics.Mean(name="dice_loss")

    # ------------------------------------------------------------------------------------
    def get_config(self):
        model = dataclasses.asdict(self.model_config)
        model["backbone_weights"] = None  # the saved weights replace any initial weights
        return {
            "config_version": CONFIG_VERSION,
            "model_config": model,
            "loss_config": dataclasses.asdict(self.loss_config),
            "labels_config": dataclasses.asdict(self.labels_config),
            "postprocess_config": dataclasses.asdict(self.postprocess_config),
            "name": self.name,
            "trainable": self.trainable,
        }

    @classmethod
    def from_config(cls, config):
        """Rebuild from :meth:`get_config`; configs of older versions are migrated first
        (version 1 kept loss weights, labels and max_instances inside ``model_config``)."""
        config = dict(config)
        version = config.pop("config_version", 1)
        sections = migrate(
            {"version": version, "model": config.pop("model_config"), "loss": config.pop("loss_config", None),
             "labels": config.pop("labels_config", None)},
            "saved model config",
        )
        return cls(
            sections["model"], sections.get("loss"), sections.get("labels"),
            config.pop("postprocess_config", None), **config,
        )

    # ------------------------------------------------------------------------------------
    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        focal, dice = self.solo_losses(y, y_pred)
        self.focal_loss_tracker.update_state(focal)
        self.dice_loss_tracker.update_state(dice)
        total = focal + dice
        if self.losses:
            total = total + ops.sum(ops.stack([ops.cast(v, "float32") for v in self.losses]))
        return total

    def solo_losses(self, y, y_pred):
        """Focal and Dice losses of a batch (both already weighted and normalised).

        Returns:
            (focal, dice) scalars: focal = w_f * sum / (num_pos + 1); dice = w_d * sum /
            max(num_pos, 1); with no positives Dice is exactly 0.
        """
        cfg = self.model_config
        loss_cfg = self.loss_config
        grids = self.grid_targets(y)
        classes_flat, logits_flat = [], []
        for lvl, (category, _) in enumerate(grids):
            s = cfg.num_grids[lvl]
            classes_flat.append(ops.reshape(category, (-1, s * s)))
            logits_flat.append(ops.reshape(y_pred[f"category_{lvl}"], (-1, s * s, cfg.num_classes)))
        cate = ops.concatenate(classes_flat, axis=1)  # (B, sum S^2)
        onehot = ops.one_hot(ops.maximum(cate, 0), cfg.num_classes) * ops.cast(cate >= 0, "float32")[..., None]
        num_pos = ops.sum(ops.cast(cate >= 0, "float32"))
        focal_sum = sigmoid_focal_loss(
            ops.concatenate(logits_flat, axis=1), onehot, alpha=loss_cfg.focal_alpha, gamma=loss_cfg.focal_gamma
        )
        focal = loss_cfg.focal_weight * focal_sum / (num_pos + 1.0)

        dice_sum, dice_count = self._dice_terms(y, y_pred, grids)
        dice = loss_cfg.dice_weight * dice_sum / ops.maximum(dice_count, 1.0)
        return focal, dice

    def grid_targets(self, y):
        """Per level (category, owner) grids: from the pipeline if it sent them, else here."""
        cfg = self.model_config
        if "grid_category_0" in y:
            return [(y[f"grid_category_{l}"], y[f"grid_owner_{l}"]) for l in range(len(cfg.num_grids))]
        valid = ops.logical_and(mask_validity(y["masks"]), ops.cast(y["classes"], "int32") >= 0)
        return assign_grids(
            y["classes"], y["boxes"], y["centers"], valid, cfg.image_size,
            cfg.num_grids, cfg.scale_ranges, cfg.pos_scale,
        )

    def _dice_terms(self, y, y_pred, grids):
        cfg = self.model_config
        h, w = cfg.image_size
        max_inst = y["masks"].shape[1]
        if cfg.variant == "solov2":
            # every level predicts at stride 4 from one mask feature: gather positives of all
            # levels at once and build masks only for them (M dynamic kernels).
            feature = ops.cast(y_pred["mask_feature"], "float32")
            hm, wm, e = feature.shape[1], feature.shape[2], feature.shape[3]
            owner = ops.concatenate([ops.reshape(o, (-1, o.shape[1] * o.shape[2])) for _, o in grids], axis=1)
            kernels = ops.concatenate(
                [ops.reshape(ops.cast(y_pred[f"kernel_{l}"], "float32"), (-1, s * s, e))
                 for l, s in enumerate(cfg.num_grids)],
                axis=1,
            )  # (B, sum S^2, E)
            m = min(owner.shape[1], 18 * max_inst)  # an object is positive on <= 2 levels x 3x3 cells
            cells, owners, pos = positive_slots(owner, m)
            k_sel = ops.take_along_axis(kernels, cells[..., None], axis=1)  # (B, M, E)
            logits = ops.einsum("bme,bpe->bmp", k_sel, ops.reshape(feature, (-1, hm * wm, e)))  # (B, M, hw)
            targets = gather_mask_targets(resize_masks(y["masks"], (hm, wm)), owners)
            return dice_loss(ops.sigmoid(logits), ops.reshape(targets, (-1, m, hm * wm)), pos), ops.sum(pos)

        total, count = 0.0, 0.0
        resized = {}  # levels sharing a mask stride (8,8 and 32,32 in the reference) share targets
        for lvl, ((_, owner), s) in enumerate(zip(grids, cfg.num_grids)):
            stride = cfg.mask_strides[lvl]
            hm, wm = h // stride, w // stride
            if stride not in resized:
                resized[stride] = resize_masks(y["masks"], (hm, wm))
            m = min(s * s, 9 * max_inst)
            cells, owners, pos = positive_slots(owner, m)
            if cfg.variant == "solo":
                pred = ops.reshape(ops.cast(y_pred[f"mask_{lvl}"], "float32"), (-1, hm * wm, s * s))
                probs = ops.sigmoid(ops.take_along_axis(pred, cells[:, None, :], axis=2))  # (B, hw, M)
            else:  # decoupled: cell k = i*S + j -> sigmoid(x_j) * sigmoid(y_i)
                px = ops.reshape(ops.cast(y_pred[f"mask_x_{lvl}"], "float32"), (-1, hm * wm, s))
                py = ops.reshape(ops.cast(y_pred[f"mask_y_{lvl}"], "float32"), (-1, hm * wm, s))
                probs = ops.sigmoid(ops.take_along_axis(px, (cells % s)[:, None, :], axis=2)) * ops.sigmoid(
                    ops.take_along_axis(py, (cells // s)[:, None, :], axis=2)
                )
            targets = gather_mask_targets(resized[stride], owners)
            total = total + dice_loss(
                ops.transpose(probs, (0, 2, 1)), ops.reshape(targets, (-1, m, hm * wm)), pos
            )
            count = count + ops.sum(pos)
        return total, count


def build_model(config) -> SOLO:
    """Build a :class:`SOLO` from a whole :class:`solo_tf.config.Config` (all its model-side
    sections) or from a ModelConfig / its dict form (default loss, labels, post-processing)."""
    if hasattr(config, "model"):
        return SOLO(config.model, config.loss, config.labels, config.postprocess)
    return SOLO(config)
