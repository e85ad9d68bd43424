"""SOLO, Decoupled SOLO and SOLOv2 prediction heads: pure, raw logits only.

Naming: B = images, L = levels, S = a level's grid size, C = classes, E = dynamic-kernel
width (SOLOv2). Every head is shared across levels except the SOLO mask output convs,
whose width (S^2 or S) depends on the level. Sigmoid, local max and decoding belong to
``solo_tf.decoder``, so training and inference run one forward.
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
        self.norm = layers.GroupNormalization(groups=norm_groups, epsilon=1e-5, name="gn")

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


@keras.saving.register_keras_serializable(package="solo_tf")
class SOLOHead(layers.Layer):
    """Vanilla SOLO (``decoupled=False``) or Decoupled SOLO head.

    Mask branch: CoordConv input, ``stacked_convs`` x (conv + GN + ReLU), x2 bilinear
    upsampling, then per level a 1x1 conv to S^2 channels (vanilla) or 3x3 convs to S
    channels for the X and Y branches (decoupled; X gets the x coordinate, Y the y).
    Category branch: feature resized to S x S, the same stack, a 3x3 conv to C channels.

    Call on a list of L level features (B, h_l, w_l, c); returns a dict:
    ``category_{l}`` (B, S, S, C) and either ``mask_{l}`` (B, 2h_l, 2w_l, S^2) or
    ``mask_x_{l}`` / ``mask_y_{l}`` (B, 2h_l, 2w_l, S).
    """

    def __init__(
        self,
        num_classes,
        num_grids,
        head_channels=256,
        stacked_convs=7,
        norm_groups=32,
        prior_prob=0.01,
        decoupled=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.num_grids = tuple(num_grids)
        self.head_channels = head_channels
        self.stacked_convs = stacked_convs
        self.norm_groups = norm_groups
        self.prior_prob = prior_prob
        self.decoupled = decoupled

        self.cate_convs = _stack(stacked_convs, head_channels, norm_groups, "cate")
        self.cate_out = layers.Conv2D(
            num_classes, 3, padding="same", kernel_initializer=_normal_init(),
            bias_initializer=_prior_bias(prior_prob), name="cate_out",
        )
        if decoupled:
            self.mask_convs_x = _stack(stacked_convs, head_channels, norm_groups, "mask_x")
            self.mask_convs_y = _stack(stacked_convs, head_channels, norm_groups, "mask_y")
            self.mask_out_x = [self._mask_out(s, 3, f"mask_x_out_{l}") for l, s in enumerate(self.num_grids)]
            self.mask_out_y = [self._mask_out(s, 3, f"mask_y_out_{l}") for l, s in enumerate(self.num_grids)]
        else:
            self.mask_convs = _stack(stacked_convs, head_channels, norm_groups, "mask")
            self.mask_out = [self._mask_out(s * s, 1, f"mask_out_{l}") for l, s in enumerate(self.num_grids)]

    def _mask_out(self, filters, kernel_size, name):
        return layers.Conv2D(
            filters, kernel_size, padding="same", kernel_initializer=_normal_init(),
            bias_initializer=_prior_bias(self.prior_prob), name=name,
        )

    def call(self, features):
        out = {}
        for lvl, (feat, grid) in enumerate(zip(features, self.num_grids)):
            h, w = feat.shape[1], feat.shape[2]
            up = (2 * h, 2 * w)
            if self.decoupled:
                x = _run(self.mask_convs_x, add_coords(feat, "x"))
                y = _run(self.mask_convs_y, add_coords(feat, "y"))
                x = ops.image.resize(x, up, interpolation="bilinear", antialias=False)
                y = ops.image.resize(y, up, interpolation="bilinear", antialias=False)
                out[f"mask_x_{lvl}"] = self.mask_out_x[lvl](x)  # (B, 2h, 2w, S)
                out[f"mask_y_{lvl}"] = self.mask_out_y[lvl](y)
            else:
                m = _run(self.mask_convs, add_coords(feat, "xy"))
                m = ops.image.resize(m, up, interpolation="bilinear", antialias=False)
                out[f"mask_{lvl}"] = self.mask_out[lvl](m)  # (B, 2h, 2w, S^2)
            c = ops.image.resize(feat, (grid, grid), interpolation="bilinear", antialias=False)
            out[f"category_{lvl}"] = self.cate_out(_run(self.cate_convs, c))  # (B, S, S, C)
        return out

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            num_grids=list(self.num_grids),
            head_channels=self.head_channels,
            stacked_convs=self.stacked_convs,
            norm_groups=self.norm_groups,
            prior_prob=self.prior_prob,
            decoupled=self.decoupled,
        )
        return config


@keras.saving.register_keras_serializable(package="solo_tf")
class SOLOv2Head(layers.Layer):
    """SOLOv2 kernel and category branches.

    Kernel branch: CoordConv feature resized to S x S, ``stacked_convs`` x (conv + GN +
    ReLU), a 3x3 conv to E dynamic-kernel weights (a 1x1 kernel per cell, no activation).
    Category branch: the same resized feature without coordinates, the same stack, a 3x3
    conv to C channels.

    Call on a list of L level features; returns ``category_{l}`` (B, S, S, C) and
    ``kernel_{l}`` (B, S, S, E).
    """

    def __init__(
        self,
        num_classes,
        num_grids,
        mask_channels=256,
        head_channels=512,
        stacked_convs=4,
        norm_groups=32,
        prior_prob=0.01,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.num_grids = tuple(num_grids)
        self.mask_channels = mask_channels
        self.head_channels = head_channels
        self.stacked_convs = stacked_convs
        self.norm_groups = norm_groups
        self.prior_prob = prior_prob
        self.kernel_convs = _stack(stacked_convs, head_channels, norm_groups, "kernel")
        self.cate_convs = _stack(stacked_convs, head_channels, norm_groups, "cate")
        self.kernel_out = layers.Conv2D(
            mask_channels, 3, padding="same", kernel_initializer=_normal_init(), name="kernel_out"
        )
        self.cate_out = layers.Conv2D(
            num_classes, 3, padding="same", kernel_initializer=_normal_init(),
            bias_initializer=_prior_bias(prior_prob), name="cate_out",
        )

    def call(self, features):
        out = {}
        for lvl, (feat, grid) in enumerate(zip(features, self.num_grids)):
            k = ops.image.resize(add_coords(feat, "xy"), (grid, grid), interpolation="bilinear", antialias=False)
            c = k[..., :-2]
            out[f"kernel_{lvl}"] = self.kernel_out(_run(self.kernel_convs, k))  # (B, S, S, E)
            out[f"category_{lvl}"] = self.cate_out(_run(self.cate_convs, c))  # (B, S, S, C)
        return out

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            num_grids=list(self.num_grids),
            mask_channels=self.mask_channels,
            head_channels=self.head_channels,
            stacked_convs=self.stacked_convs,
            norm_groups=self.norm_groups,
            prior_prob=self.prior_prob,
        )
        return config
