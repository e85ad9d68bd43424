"""One class per model variant: SOLO, Decoupled SOLO, SOLOv2.

A variant owns what differs between the three: its heads (SOLOv2: also the mask-feature
branch), the stride its masks are predicted at, the names of its raw outputs, and
:meth:`Variant.masks_for_cells` - soft masks of some grid cells from the raw outputs, the
one function both the Dice loss (:mod:`solo_tf.losses`) and the decoder
(:mod:`solo_tf.decoder`) call. What is the same for all (category branch contract, target
assignment, focal loss, Matrix NMS) lives outside. A new variant is one new subclass
added to :data:`VARIANTS`.

Naming: B = images, L = levels, S_l = grid of level l, C = classes, E = dynamic-kernel width
(SOLOv2), M = cells asked for, (h, w) = a mask resolution. Cells of several levels are
numbered in level order, as :func:`multi_level_flatten` lays them out:
k = offset_l + i * S_l + j, offset_l = sum of S^2 over the levels before l.
"""

from __future__ import annotations

import dataclasses

from keras import ops

from solo_tf.backbones import BACKBONES, RESNETS
from solo_tf.config import ConfigError, ModelConfig, as_section
from solo_tf.heads import DecoupledSOLOHead, SOLOHead, SOLOv2Head, level_features
from solo_tf.mask_feature import MaskFeatureHead


# --- shared helpers -------------------------------------------------------------------------
def multi_level_flatten(per_level):
    """Concatenate per-level grids along one cell axis, in level order.

    Args:
        per_level: list over levels of (B, S_l, S_l) or (B, S_l, S_l, X) tensors.

    Returns:
        (B, G) or (B, G, X), G = sum_l S_l^2, cell k = offset_l + i * S_l + j.
    """
    flat = [ops.reshape(x, (-1, x.shape[1] * x.shape[2]) + tuple(x.shape[3:])) for x in per_level]
    return flat[0] if len(flat) == 1 else ops.concatenate(flat, axis=1)


def take_slots(x, index):
    """Rows ``index`` of x: x (B, G, P), index (B, M) int -> (B, M, P).

    One row gather from the flattened batch (rows b * G + index): a plain GATHER in every
    backend and in TFLite, copying whole rows. (``take_along_axis`` with the index repeated
    along P gave the same result 5-20x slower on CPU: it gathers element by element.)
    """
    g, p = x.shape[1], x.shape[2]
    m = index.shape[1]
    first_row = ops.arange(ops.shape(x)[0], dtype="int32") * g  # (B,)
    rows = ops.reshape(ops.cast(index, "int32") + ops.expand_dims(first_row, 1), (-1,))
    return ops.reshape(ops.take(ops.reshape(x, (-1, p)), rows, axis=0), (-1, m, p))


def _resize(x, size):
    """(B, h, w, M) channels-last -> (B, *size, M), bilinear with half-pixel centres (the
    reference's align_corners=False); unchanged when already that size."""
    if tuple(x.shape[1:3]) == tuple(size):
        return x
    return ops.image.resize(x, size, interpolation="bilinear", data_format="channels_last")


def _gather_channels(x, index, size):
    """Sigmoid of channels ``index`` (B, M) of logits x (B, h_l, w_l, c), resized to
    ``size`` after the sigmoid (as the reference): (B, M, *size)."""
    hl, wl, c = x.shape[1], x.shape[2], x.shape[3]
    flat = ops.reshape(ops.cast(x, "float32"), (-1, hl * wl, c))
    picked = ops.take_along_axis(flat, ops.repeat(ops.expand_dims(index, 1), hl * wl, axis=1), axis=2)  # (B, hw, M)
    picked = _resize(ops.reshape(ops.sigmoid(picked), (-1, hl, wl, index.shape[1])), size)
    return ops.transpose(picked, (0, 3, 1, 2))


# --- the base class ---------------------------------------------------------------------------
class Variant:
    """What a model variant decides, for one :class:`solo_tf.config.ModelConfig`.

    Subclasses set :attr:`name` (the ``model.variant`` value) and implement
    :meth:`build_heads`, :meth:`apply_heads`, :meth:`mask_output_names`, :attr:`mask_strides` and :meth:`_masks`.
    """

    name = ""

    def __init__(self, model_config):
        self.model_config = model_config
        self.num_grids = tuple(int(s) for s in model_config.num_grids)
        self.image_size = tuple(int(v) for v in model_config.image_size)

    def __repr__(self):
        return f"{type(self).__name__}(num_grids={self.num_grids}, image_size={self.image_size})"

    @property
    def num_levels(self):
        return len(self.num_grids)

    # --- architecture -----------------------------------------------------------------------
    def validate(self):
        """Checks of the model config that only this variant needs; raises ConfigError."""

    def build_heads(self):
        """The variant's head layers, new and unbuilt: a dict name -> layer."""
        raise NotImplementedError

    def apply_heads(self, heads, pyramid):
        """Apply head layers of :meth:`build_heads` to a pyramid of this variant's canvas.

        The layers hold no canvas size, so the same layers serve variants of several
        canvases (the model's landscape and portrait graphs share their weights).

        Args:
            heads: the dict :meth:`build_heads` returned (of this or another canvas).
            pyramid: dict "P2".."P6", (B, H/2^k, W/2^k, c), (H, W) = :attr:`image_size`.

        Returns:
            dict of raw logits, the names of :meth:`output_names`.
        """
        raise NotImplementedError

    def with_canvas(self, image_size):
        """The same variant for another canvas (H, W), positive multiples of 32 (its level
        and mask sizes): the one place a model config is moved to another canvas."""
        size = tuple(int(v) for v in image_size)
        if len(size) != 2 or min(size) <= 0 or size[0] % 32 or size[1] % 32:
            raise ValueError(f"a canvas must be two positive multiples of 32 (H, W), got {tuple(image_size)}")
        return type(self)(dataclasses.replace(self.model_config, image_size=size))

    @property
    def mask_strides(self):
        """Input pixels per mask pixel, per level: the mask targets' resolution."""
        raise NotImplementedError

    def mask_output_names(self, level):
        """Names of the raw outputs level ``level`` predicts its masks from."""
        raise NotImplementedError

    def output_names(self):
        """Every raw output the loss and the decoder read: ``category_{l}`` + the masks'."""
        names = [f"category_{l}" for l in range(self.num_levels)]
        for l in range(self.num_levels):
            names += self.mask_output_names(l)
        return names

    def check_outputs(self, outputs, where):
        """Raise ValueError naming what ``outputs`` (a dict) lacks for this variant."""
        missing = [k for k in self.output_names() if k not in outputs]
        if missing:
            raise ValueError(f"{where}: raw outputs for variant {self.name!r} lack {missing}; got {sorted(outputs)}")

    def mask_size(self, level):
        """(h, w) of level ``level``'s masks."""
        stride = self.mask_strides[level]
        return self.image_size[0] // stride, self.image_size[1] // stride

    def _level_features(self, pyramid):
        cfg = self.model_config
        return level_features(pyramid, cfg.strides, cfg.image_size)

    def _head_kwargs(self):
        cfg = self.model_config
        return dict(
            num_classes=cfg.num_classes, num_grids=cfg.num_grids, head_channels=cfg.head_channels,
            stacked_convs=cfg.stacked_convs, norm_groups=cfg.norm_groups, prior_prob=cfg.prior_prob, name="head",
        )

    # --- masks ------------------------------------------------------------------------------
    def masks_for_cells(self, outputs, cells, levels=None, size=None, flat=False):
        """Soft masks of grid cells from the raw outputs (logits -> probabilities).

        Args:
            outputs: dict of raw logits (:meth:`output_names`).
            cells: (B, M) int cell indices into the cells of ``levels`` laid out by
                :func:`multi_level_flatten` (k = offset_l + i * S_l + j).
            levels: the levels ``cells`` number, ascending; None: all of them.
            size: (h, w) of the masks returned; None: the levels' own mask size (one size
                for all of them, else ValueError). Masks of another size are resized
                bilinearly after the sigmoid, as the reference.
            flat: return (B, M, h * w) (row-major) instead: what the decoder reads. SOLOv2
                computes its masks in that form (no reshape of the M masks, which is a copy
                in LiteRT's XNNPack: ~4 ms for the light models' 500 x 112 x 192).

        Returns:
            (B, M, h, w) float32 mask probabilities in [0, 1] ((B, M, h * w) with ``flat``).
        """
        levels = tuple(range(self.num_levels)) if levels is None else tuple(int(l) for l in levels)
        if size is None:
            sizes = {self.mask_size(l) for l in levels}
            if len(sizes) != 1:
                raise ValueError(f"{self.name}: levels {levels} predict masks at sizes {sorted(sizes)}; pass size")
            size = sizes.pop()
        cells, size = ops.cast(cells, "int32"), tuple(int(v) for v in size)
        if flat:
            masks = self._flat_masks(outputs, cells, levels, size)
            if masks is not None:
                return masks
            return ops.reshape(self._masks(outputs, cells, levels, size), (-1, cells.shape[1], size[0] * size[1]))
        return self._masks(outputs, cells, levels, size)

    def _masks(self, outputs, cells, levels, size):
        """:meth:`masks_for_cells` with its arguments resolved: (B, M, *size) float32."""
        raise NotImplementedError

    def _flat_masks(self, outputs, cells, levels, size):
        """(B, M, h * w) computed in that form, or None (:meth:`masks_for_cells` reshapes)."""
        return None

    # --- loss -------------------------------------------------------------------------------
    def loss_level_groups(self):
        """Levels whose positives the Dice loss gathers together (one mask build per group):
        by default one group per level, each at its own mask resolution."""
        return [(l,) for l in range(self.num_levels)]

    def max_positive_slots(self, max_instances, levels):
        """M, the static number of positive cells per image the Dice loss builds masks for,
        over ``levels`` (one of :meth:`loss_level_groups`).

        An object is positive on at most a 3x3 centre region per level and, as only adjacent
        scale ranges overlap, on at most two levels (three only for a scale exactly on a
        bound three inclusive ranges share; the budget is shared by the image's objects, so
        that rarely costs a positive). Capped at the levels' cell count. One method, so that
        a config value can replace the bound.
        """
        cells = sum(self.num_grids[l] ** 2 for l in levels)
        return min(cells, 9 * min(len(levels), 2) * int(max_instances))


class _ChannelMaskVariant(Variant):
    """Variants whose masks are channels of per-level mask outputs at stride/2 (SOLO,
    Decoupled SOLO): masks are gathered level by level and each cell takes its own level's."""

    @property
    def mask_strides(self):
        return tuple(int(s) // 2 for s in self.model_config.strides)

    def _level_masks(self, outputs, level, cells, size):
        """(B, M, *size) probabilities of cells (B, M) numbered within level ``level``."""
        raise NotImplementedError

    def _masks(self, outputs, cells, levels, size):
        if len(levels) == 1:
            return self._level_masks(outputs, levels[0], cells, size)
        out, start = 0.0, 0
        for level in levels:
            cells_l = self.num_grids[level] ** 2
            in_level = ops.logical_and(cells >= start, cells < start + cells_l)  # (B, M)
            local = ops.clip(cells - start, 0, cells_l - 1)
            mask = self._level_masks(outputs, level, local, size)
            # one indicator is 1 per cell, the others 0: the sum is that level's mask, exactly
            out = out + mask * ops.cast(ops.expand_dims(ops.expand_dims(in_level, -1), -1), "float32")
            start += cells_l
        return out


# --- the variants -----------------------------------------------------------------------------
class SOLOVariant(_ChannelMaskVariant):
    """SOLO: level l predicts S_l^2 mask channels at stride/2; cell k's mask is channel k."""

    name = "solo"

    def build_heads(self):
        return {"head": SOLOHead(**self._head_kwargs())}

    def apply_heads(self, heads, pyramid):
        return dict(heads["head"](self._level_features(pyramid)))

    def mask_output_names(self, level):
        return [f"mask_{level}"]

    def _level_masks(self, outputs, level, cells, size):
        return _gather_channels(outputs[f"mask_{level}"], cells, size)


class DecoupledSOLOVariant(_ChannelMaskVariant):
    """Decoupled SOLO: level l predicts S_l column (X) and S_l row (Y) channels at stride/2;
    cell k = i * S + j's mask is sigmoid(x_j) * sigmoid(y_i)."""

    name = "decoupled_solo"

    def build_heads(self):
        return {"head": DecoupledSOLOHead(**self._head_kwargs())}

    def apply_heads(self, heads, pyramid):
        return dict(heads["head"](self._level_features(pyramid)))

    def mask_output_names(self, level):
        return [f"mask_x_{level}", f"mask_y_{level}"]

    def _level_masks(self, outputs, level, cells, size):
        s = self.num_grids[level]
        return _gather_channels(outputs[f"mask_x_{level}"], cells % s, size) * _gather_channels(
            outputs[f"mask_y_{level}"], cells // s, size
        )

    def _masks(self, outputs, cells, levels, size):
        if len(levels) == 1:
            return self._level_masks(outputs, levels[0], cells, size)
        # Several levels (the decoder): the levels have only sum_l S_l column and row channels
        # (128 for the paper's grids), fewer than the candidates, so resize every channel once
        # (the resize is per channel, so resizing before the gather is the same) and gather
        # each candidate's X and Y channel from the concatenation, instead of resizing M
        # gathered channels at every level and keeping each candidate's own.
        stacks = {"x": [], "y": []}
        x_index = y_index = 0
        start = offset = 0
        for level in levels:
            s = self.num_grids[level]
            for axis in ("x", "y"):
                logits = ops.cast(outputs[f"mask_{axis}_{level}"], "float32")
                stacks[axis].append(_resize(ops.sigmoid(logits), size))  # (B, h, w, S_l)
            in_level = ops.cast(ops.logical_and(cells >= start, cells < start + s * s), "int32")
            local = ops.clip(cells - start, 0, s * s - 1)
            x_index = x_index + in_level * (offset + local % s)
            y_index = y_index + in_level * (offset + local // s)
            start += s * s
            offset += s
        h, w = size

        def gather(axis, index):
            stack = ops.concatenate(stacks[axis], axis=-1)  # (B, h, w, sum S_l)
            per_channel = ops.transpose(ops.reshape(stack, (-1, h * w, offset)), (0, 2, 1))  # (B, C, hw)
            return take_slots(per_channel, index)  # (B, M, hw)

        masks = gather("x", x_index) * gather("y", y_index)
        return ops.reshape(masks, (-1, cells.shape[1], h, w))


class SOLOv2Variant(Variant):
    """SOLOv2: each cell predicts an E-wide dynamic 1x1 kernel; its mask is
    sigmoid(kernel . mask feature), the one stride-4 feature every level shares."""

    name = "solov2"

    def validate(self):
        cfg = self.model_config
        if cfg.mask_feature_channels % cfg.norm_groups or cfg.mask_channels % cfg.norm_groups:
            raise ConfigError(
                "model.mask_feature_channels and model.mask_channels must be divisible by model.norm_groups"
            )

    def build_heads(self):
        cfg = self.model_config
        return {
            "head": SOLOv2Head(mask_channels=cfg.mask_channels, **self._head_kwargs()),
            "mask_feature": MaskFeatureHead(
                cfg.mask_feature_channels, cfg.mask_channels, norm_groups=cfg.norm_groups, name="mask_feature_head"
            ),
        }

    def apply_heads(self, heads, pyramid):
        out = dict(heads["head"](self._level_features(pyramid)))
        out["mask_feature"] = heads["mask_feature"]({k: pyramid[k] for k in ("P2", "P3", "P4", "P5")})
        return out

    @property
    def mask_strides(self):
        return tuple(4 for _ in self.model_config.strides)

    def mask_output_names(self, level):
        return [f"kernel_{level}"]

    def output_names(self):
        return super().output_names() + ["mask_feature"]

    def loss_level_groups(self):
        # every level's masks come from the one stride-4 feature: one matmul for all positives
        return [tuple(range(self.num_levels))]

    def _probabilities(self, outputs, cells, levels):
        """(B, M, h4 * w4) sigmoid of the gathered kernels x the mask feature, and (h4, w4)."""
        feature = ops.cast(outputs["mask_feature"], "float32")  # (B, h4, w4, E)
        hh, ww, e = feature.shape[1], feature.shape[2], feature.shape[3]
        kernels = multi_level_flatten([ops.cast(outputs[f"kernel_{l}"], "float32") for l in levels])  # (B, G, E)
        kernels = take_slots(kernels, cells)  # (B, M, E)
        logits = ops.matmul(kernels, ops.transpose(ops.reshape(feature, (-1, hh * ww, e)), (0, 2, 1)))  # (B, M, hw)
        return ops.sigmoid(logits), (hh, ww)

    def _masks(self, outputs, cells, levels, size):
        probs, (hh, ww) = self._probabilities(outputs, cells, levels)
        masks = ops.reshape(probs, (-1, cells.shape[1], hh, ww))
        if (hh, ww) == size:
            return masks
        return ops.transpose(_resize(ops.transpose(masks, (0, 2, 3, 1)), size), (0, 3, 1, 2))

    def _flat_masks(self, outputs, cells, levels, size):
        feature_size = tuple(int(v) for v in outputs["mask_feature"].shape[1:3])
        return self._probabilities(outputs, cells, levels)[0] if feature_size == size else None


VARIANTS = {v.name: v for v in (SOLOVariant, DecoupledSOLOVariant, SOLOv2Variant)}


def get_variant(model_config) -> Variant:
    """The :class:`Variant` of a model config.

    Args:
        model_config: a :class:`solo_tf.config.ModelConfig`, its dict form, or a Variant
            (returned as it is).

    Raises:
        ValueError: ``model_config.variant`` is not in :data:`VARIANTS`.
    """
    if isinstance(model_config, Variant):
        return model_config
    model_config = as_section(ModelConfig, model_config, "model")
    try:
        cls = VARIANTS[model_config.variant]
    except KeyError:
        raise ValueError(f"unknown model variant {model_config.variant!r}; known: {', '.join(VARIANTS)}") from None
    return cls(model_config)


def check_model_config(model_config) -> ModelConfig:
    """A model config checked whole: its own fields (:meth:`ModelConfig.validate`), the
    variant and backbone names against the registries (:data:`VARIANTS`,
    :data:`solo_tf.backbones.BACKBONES`) and what the variant asks of the rest. Every model
    is built through it; ``solo-tf train`` calls it before reading data.

    Raises:
        ConfigError: naming the field (``model.variant``, ``model.backbone``, ...).
    """
    model_config = as_section(ModelConfig, model_config, "model")
    if model_config.variant not in VARIANTS:
        raise ConfigError(f"model.variant must be one of {', '.join(VARIANTS)}; got {model_config.variant!r}")
    if model_config.backbone not in BACKBONES:
        raise ConfigError(f"model.backbone must be one of {', '.join(BACKBONES)}; got {model_config.backbone!r}")
    model_config.validate()
    if model_config.init_weights is not None and model_config.backbone not in RESNETS:
        raise ConfigError(f"model.init_weights: the reference checkpoints have a ResNet backbone; model.backbone "
                          f"is {model_config.backbone!r} (use one of {', '.join(RESNETS)})")
    get_variant(model_config).validate()
    return model_config
