"""SOLO, Decoupled SOLO and SOLOv2 prediction heads: pure, raw logits only.

Naming: B = images, L = levels, S = a level's grid size, C = classes, E = dynamic-kernel
width (SOLOv2). Every head is shared across levels except the SOLO mask output convs,
whose width (S^2 or S) depends on the level. Sigmoid, local max and decoding belong to
``solo_tf.decoder``, so training and inference run one forward; which head a model has is
decided by its variant (:mod:`solo_tf.variants`).
"""

from __future__ import annotations

import math

import keras
from keras import layers, ops


def _normal_init():
    return keras.initializers.RandomNormal(mean=0.0, stddev=0.01)


def _prior_bias(prior_prob):
    return keras.initializers.Constant(-math.log((1.0 - prior_prob) / prior_prob))


def add_coords(x, which="xy"):
    """Concatenate normalised coordinate channels in [-1, 1] (CoordConv).

    Args:
        x: (B, h, w, c).
        which: "xy" appends x then y; "x" or "y" appends one channel.

    Returns:
        (B, h, w, c + len(which)).
    """
    h, w = x.shape[1], x.shape[2]
    zeros = ops.zeros_like(x[..., :1])  # (B, h, w, 1): broadcasts to the dynamic batch
    xs = ops.reshape(ops.linspace(-1.0, 1.0, w), (1, 1, w, 1))
    ys = ops.reshape(ops.linspace(-1.0, 1.0, h), (1, h, 1, 1))
    chans = {"x": zeros + ops.cast(xs, x.dtype), "y": zeros + ops.cast(ys, x.dtype)}
    return ops.concatenate([x] + [chans[c] for c in which], axis=-1)


def level_features(pyramid, strides, image_size):
    """Per-level head inputs: level l takes P_{l+2} resized to stride ``strides[l]``.

    With the reference strides (8, 8, 16, 32, 32) this is P2 resized to P3's size, P3, P4,
    P5 and P6 resized to P5's size.

    Args:
        pyramid: dict "P2".."P6", (B, H/2^k, W/2^k, c).
        strides: per level stride.
        image_size: (H, W) of the padded input.

    Returns:
        list of (B, H/stride_l, W/stride_l, c).
    """
    out = []
    for lvl, stride in enumerate(strides):
        feat = pyramid[f"P{lvl + 2}"]
        size = (image_size[0] // stride, image_size[1] // stride)
        if tuple(feat.shape[1:3]) != size:
            feat = ops.image.resize(feat, size, interpolation="bilinear", antialias=False)
        out.append(feat)
    return out


@keras.saving.register_keras_serializable(package="solo_tf")
class GroupNorm(layers.Layer):
    """Group normalisation of channels-last feature maps (B, h, w, C): the function and the
    weights (``gamma``, ``beta``, (C,)) of ``keras.layers.GroupNormalization(groups,
    epsilon)``, computed in float32 as that is, written with 4-D per-channel statistics only.

    Keras's layer reshapes to (B, h, w, G, C/G) and reduces over three axes of that; LiteRT
    runs such a 5-D MEAN outside its XNNPack kernels, which made GroupNorm most of the
    mobile preset's head time. Here each statistic is a spatial MEAN over axes (1, 2) (the
    global-pooling kernel every runtime optimises) followed by an average over each group's
    channels on the tiny (B, C) result; the variance is the two-pass one (of x minus its
    group mean), as Keras's. Its square is written ``centred * centred`` (the same float):
    ``square(x - mean)`` becomes one SQUARED_DIFFERENCE op in TFLite, which has no int8
    kernel in LiteRT's XNNPack delegate and took ~70% of the int8 head and mask-feature
    time (``benchmarks/profile_tflite.py``); SUB + MUL run there in int8.
    """

    def __init__(self, groups=32, epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.groups = int(groups)
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None or channels % self.groups:
            raise ValueError(f"{self.name}: {channels} channels do not split into {self.groups} groups")
        self.gamma = self.add_weight(shape=(channels,), initializer="ones", name="gamma")
        self.beta = self.add_weight(shape=(channels,), initializer="zeros", name="beta")

    def _group_average(self, stat):
        """(B, C) per-channel statistic -> its group's average, per channel, (B, 1, 1, C)."""
        c = stat.shape[-1]
        per_group = ops.mean(ops.reshape(stat, (-1, self.groups, c // self.groups)), axis=-1, keepdims=True)
        return ops.reshape(per_group * ops.ones((1, 1, c // self.groups), per_group.dtype), (-1, 1, 1, c))

    def call(self, x):
        x32 = ops.cast(x, "float32")
        centred = x32 - self._group_average(ops.mean(x32, axis=(1, 2)))
        variance = self._group_average(ops.mean(centred * centred, axis=(1, 2)))
        scale = ops.rsqrt(variance + self.epsilon) * ops.cast(self.gamma, "float32")
        return ops.cast(centred * scale + ops.cast(self.beta, "float32"), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(groups=self.groups, epsilon=self.epsilon)
        return config


class ConvGNReLU(layers.Layer):
    """3x3 conv (no bias) + GroupNorm + ReLU, the head's repeated unit."""

    def __init__(self, filters, norm_groups=32, kernel_size=3, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.norm_groups = norm_groups
        self.kernel_size = kernel_size
        self.conv = layers.Conv2D(
            filters, kernel_size, padding="same", use_bias=False, kernel_initializer=_normal_init(), name="conv"
        )
        self.norm = GroupNorm(norm_groups, epsilon=1e-5, name="gn")

    def build(self, input_shape):
        self.conv.build(input_shape)
        self.norm.build(tuple(input_shape[:-1]) + (self.filters,))

    def call(self, x):
        return ops.relu(self.norm(self.conv(x)))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.filters,)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, norm_groups=self.norm_groups, kernel_size=self.kernel_size)
        return config


def _stack(n, filters, norm_groups, prefix):
    return [ConvGNReLU(filters, norm_groups, name=f"{prefix}_{i}") for i in range(n)]


def _run(stack, x):
    for unit in stack:
        x = unit(x)
    return x


class _GridHead(layers.Layer):
    """What every head shares: the category branch's settings, the stacked-conv factory,
    output convs with the paper's initialisation, and ``get_config``.

    The subclasses create their sublayers in the order of the earlier single-class heads, so
    weight lists (``get_weights``) keep their order.
    """

    def __init__(self, num_classes, num_grids, head_channels, stacked_convs, norm_groups, prior_prob, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.num_grids = tuple(num_grids)
        self.head_channels = head_channels
        self.stacked_convs = stacked_convs
        self.norm_groups = norm_groups
        self.prior_prob = prior_prob

    def _stack(self, prefix):
        return _stack(self.stacked_convs, self.head_channels, self.norm_groups, prefix)

    def _conv_out(self, filters, kernel_size, name, prior_bias=True):
        """Output conv: Normal(0, 0.01) weights; bias -log((1-p)/p) where the output is a
        sigmoid probability that starts rare (categories, SOLO masks), zeros otherwise."""
        bias = _prior_bias(self.prior_prob) if prior_bias else "zeros"
        return layers.Conv2D(
            filters, kernel_size, padding="same", kernel_initializer=_normal_init(), bias_initializer=bias, name=name
        )

    def _category(self, x):
        """(B, S, S, c) feature already resized to the grid -> (B, S, S, C) logits."""
        return self.cate_out(_run(self.cate_convs, x))

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            num_grids=list(self.num_grids),
            head_channels=self.head_channels,
            stacked_convs=self.stacked_convs,
            norm_groups=self.norm_groups,
            prior_prob=self.prior_prob,
        )
        return config


def _grid_resize(x, grid):
    return ops.image.resize(x, (grid, grid), interpolation="bilinear", antialias=False)


def _upsample2(x):
    return ops.image.resize(x, (2 * x.shape[1], 2 * x.shape[2]), interpolation="bilinear", antialias=False)


class _SOLOMaskHead(_GridHead):
    """SOLO and Decoupled SOLO: the category branch, then the mask branch of the subclass
    (:meth:`_build_mask_branch`, :meth:`_mask_logits`) on every level."""

    def __init__(self, num_classes, num_grids, head_channels=256, stacked_convs=7, norm_groups=32, prior_prob=0.01,
                 **kwargs):
        super().__init__(num_classes, num_grids, head_channels, stacked_convs, norm_groups, prior_prob, **kwargs)
        self.cate_convs = self._stack("cate")
        self.cate_out = self._conv_out(num_classes, 3, "cate_out")
        self._build_mask_branch()

    def _build_mask_branch(self):
        raise NotImplementedError

    def _mask_logits(self, lvl, feat):
        """Mask outputs of level ``lvl`` (dict) from its feature (B, h, w, c)."""
        raise NotImplementedError

    def call(self, features):
        out = {}
        for lvl, (feat, grid) in enumerate(zip(features, self.num_grids)):
            out.update(self._mask_logits(lvl, feat))
            out[f"category_{lvl}"] = self._category(_grid_resize(feat, grid))  # (B, S, S, C)
        return out


@keras.saving.register_keras_serializable(package="solo_tf")
class SOLOHead(_SOLOMaskHead):
    """Vanilla SOLO head.

    Mask branch: CoordConv input, ``stacked_convs`` x (conv + GN + ReLU), x2 bilinear
    upsampling, then per level a 1x1 conv to S^2 channels (channel k = i*S + j is the mask
    of grid cell (i, j)). Category branch: feature resized to S x S, the same stack, a 3x3
    conv to C channels.

    Call on a list of L level features (B, h_l, w_l, c); returns a dict:
    ``category_{l}`` (B, S, S, C) and ``mask_{l}`` (B, 2h_l, 2w_l, S^2).
    """

    def _build_mask_branch(self):
        self.mask_convs = self._stack("mask")
        self.mask_out = [self._conv_out(s * s, 1, f"mask_out_{l}") for l, s in enumerate(self.num_grids)]

    def _mask_logits(self, lvl, feat):
        m = _upsample2(_run(self.mask_convs, add_coords(feat, "xy")))
        return {f"mask_{lvl}": self.mask_out[lvl](m)}  # (B, 2h, 2w, S^2)


@keras.saving.register_keras_serializable(package="solo_tf")
class DecoupledSOLOHead(_SOLOMaskHead):
    """Decoupled SOLO head: the S^2 mask channels replaced by an X and a Y branch.

    X branch: CoordConv input with the x coordinate, ``stacked_convs`` x (conv + GN + ReLU),
    x2 bilinear upsampling, per level a 3x3 conv to S channels (column j); the Y branch the
    same with the y coordinate (row i). Mask of cell (i, j) = sigmoid(x_j) * sigmoid(y_i).
    Category branch as :class:`SOLOHead`.

    Call on a list of L level features (B, h_l, w_l, c); returns a dict:
    ``category_{l}`` (B, S, S, C), ``mask_x_{l}`` and ``mask_y_{l}`` (B, 2h_l, 2w_l, S).
    """

    def _build_mask_branch(self):
        self.mask_convs_x = self._stack("mask_x")
        self.mask_convs_y = self._stack("mask_y")
        self.mask_out_x = [self._conv_out(s, 3, f"mask_x_out_{l}") for l, s in enumerate(self.num_grids)]
        self.mask_out_y = [self._conv_out(s, 3, f"mask_y_out_{l}") for l, s in enumerate(self.num_grids)]

    def _mask_logits(self, lvl, feat):
        x = _upsample2(_run(self.mask_convs_x, add_coords(feat, "x")))
        y = _upsample2(_run(self.mask_convs_y, add_coords(feat, "y")))
        return {f"mask_x_{lvl}": self.mask_out_x[lvl](x), f"mask_y_{lvl}": self.mask_out_y[lvl](y)}  # (B, 2h, 2w, S)


@keras.saving.register_keras_serializable(package="solo_tf")
class SOLOv2Head(_GridHead):
    """SOLOv2 kernel and category branches.

    Kernel branch: CoordConv feature resized to S x S, ``stacked_convs`` x (conv + GN +
    ReLU), a 3x3 conv to E dynamic-kernel weights (a 1x1 kernel per cell, no activation).
    Category branch: the same resized feature without coordinates, the same stack, a 3x3
    conv to C channels.

    Call on a list of L level features; returns ``category_{l}`` (B, S, S, C) and
    ``kernel_{l}`` (B, S, S, E).
    """

    def __init__(self, num_classes, num_grids, mask_channels=256, head_channels=512, stacked_convs=4, norm_groups=32,
                 prior_prob=0.01, **kwargs):
        super().__init__(num_classes, num_grids, head_channels, stacked_convs, norm_groups, prior_prob, **kwargs)
        self.mask_channels = mask_channels
        self.kernel_convs = self._stack("kernel")
        self.cate_convs = self._stack("cate")
        self.kernel_out = self._conv_out(mask_channels, 3, "kernel_out", prior_bias=False)
        self.cate_out = self._conv_out(num_classes, 3, "cate_out")

    def call(self, features):
        out = {}
        for lvl, (feat, grid) in enumerate(zip(features, self.num_grids)):
            k = _grid_resize(add_coords(feat, "xy"), grid)
            out[f"kernel_{lvl}"] = self.kernel_out(_run(self.kernel_convs, k))  # (B, S, S, E)
            out[f"category_{lvl}"] = self._category(k[..., :-2])  # (B, S, S, C)
        return out

    def get_config(self):
        config = super().get_config()
        config.update(mask_channels=self.mask_channels)
        return config
