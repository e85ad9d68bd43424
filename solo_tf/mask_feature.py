"""SOLOv2 unified mask-feature branch: P2..P5 fused into one stride-4 feature map."""

from __future__ import annotations

import keras
from keras import layers, ops

from solo_tf.heads import ConvGNReLU, GroupNorm, _normal_init, add_coords


@keras.saving.register_keras_serializable(package="solo_tf")
class MaskFeatureHead(layers.Layer):
    """Level i of P2..P5 gets i rounds of (3x3 conv + GN + ReLU, x2 bilinear upsampling)
    (P2: one conv, no upsampling); coordinates are concatenated at P5 only. The four maps
    are summed and a 1x1 conv + GN + ReLU gives E channels at stride 4.

    Call on dict "P2".."P5" (B, H/2^k, W/2^k, c); returns (B, H/4, W/4, E).
    """

    def __init__(self, feat_channels=128, mask_channels=256, norm_groups=32, num_levels=4, **kwargs):
        super().__init__(**kwargs)
        self.feat_channels = feat_channels
        self.mask_channels = mask_channels
        self.norm_groups = norm_groups
        self.num_levels = num_levels
        # flat list (one entry per conv) so Keras tracks every sublayer; level i owns max(i, 1)
        self.convs = [
            ConvGNReLU(feat_channels, norm_groups, name=f"level{i}_conv{j}")
            for i in range(num_levels)
            for j in range(max(i, 1))
        ]
        self.out_conv = layers.Conv2D(
            mask_channels, 1, use_bias=False, kernel_initializer=_normal_init(), name="out_conv"
        )
        self.out_norm = GroupNorm(norm_groups, epsilon=1e-5, name="out_gn")

    def call(self, pyramid):
        fused = None
        start = 0
        for i in range(self.num_levels):
            convs = self.convs[start : start + max(i, 1)]
            start += max(i, 1)
            x = pyramid[f"P{i + 2}"]
            if i == self.num_levels - 1:
                x = add_coords(x, "xy")
            for conv in convs:
                x = conv(x)
                if i > 0:
                    x = ops.image.resize(
                        x, (2 * x.shape[1], 2 * x.shape[2]), interpolation="bilinear", antialias=False
                    )
            fused = x if fused is None else fused + x
        return ops.relu(self.out_norm(self.out_conv(fused)))  # (B, H/4, W/4, E)

    def get_config(self):
        config = super().get_config()
        config.update(
            feat_channels=self.feat_channels,
            mask_channels=self.mask_channels,
            norm_groups=self.norm_groups,
            num_levels=self.num_levels,
        )
        return config
