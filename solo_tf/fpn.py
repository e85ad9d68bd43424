"""Feature pyramid (FPN, as mmdetection builds it for SOLO): {"C2".."C5"} -> {"P2".."P6"}."""

from __future__ import annotations

import keras
from keras import layers

IN_LEVELS = ("C2", "C3", "C4", "C5")
OUT_LEVELS = ("P2", "P3", "P4", "P5", "P6")


@keras.saving.register_keras_serializable(package="solo_tf")
class FeaturePyramid(keras.layers.Layer):
    """Feature pyramid network with P6 = P5 subsampled by 2.

    For each level a 1x1 lateral conv maps C_l to ``channels``; the top-down path adds the
    x2 nearest-upsampled coarser lateral; a 3x3 conv then smooths each sum. P6 is P5 max-pooled
    with kernel 1, stride 2 (a plain subsample, mmdet ``add_extra_convs=False``). Convolutions
    have biases and Keras' default init (Glorot uniform, zero bias), which is mmdet FPN's
    ``xavier_init(distribution="uniform")``.

    Args:
        channels: output channels of every level (256 in the paper).
        **kwargs: passed to ``keras.layers.Layer`` (``name``, ``dtype``, ...).

    Call:
        inputs: dict ``C2`` (B, H/4, W/4, c2), ``C3`` (B, H/8, W/8, c3), ``C4`` (B, H/16,
        W/16, c4), ``C5`` (B, H/32, W/32, c5); each level exactly half the size of the one
        before it (H, W multiples of 32).

    Returns:
        dict ``P2`` (B, H/4, W/4, channels), ``P3`` (B, H/8, W/8, channels), ``P4``
        (B, H/16, W/16, channels), ``P5`` (B, H/32, W/32, channels), ``P6`` (B, H/64,
        W/64, channels) with H/64 rounded up.
    """

    def __init__(self, channels: int = 256, **kwargs):
        super().__init__(**kwargs)
        if int(channels) <= 0:
            raise ValueError(f"FeaturePyramid channels must be positive, got {channels}")
        self.channels = int(channels)
        policy = self.dtype_policy
        self.lateral_convs = [
            layers.Conv2D(self.channels, 1, dtype=policy, name=f"lateral_{lvl}") for lvl in IN_LEVELS
        ]
        self.output_convs = [
            layers.Conv2D(self.channels, 3, padding="same", dtype=policy, name=f"output_{lvl}")
            for lvl in OUT_LEVELS[:4]
        ]
        self.upsample = layers.UpSampling2D(2, interpolation="nearest", dtype=policy, name="upsample")
        self.subsample = layers.MaxPooling2D(pool_size=1, strides=2, dtype=policy, name="subsample")

    def build(self, input_shape):
        shapes = _check_inputs(input_shape)
        for lateral, output, shape in zip(self.lateral_convs, self.output_convs, shapes):
            lateral.build(shape)
            output.build(tuple(shape[:-1]) + (self.channels,))
        self.built = True

    def call(self, inputs):
        laterals = [conv(inputs[lvl]) for conv, lvl in zip(self.lateral_convs, IN_LEVELS)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + self.upsample(laterals[i])
        outs = [conv(x) for conv, x in zip(self.output_convs, laterals)]
        outs.append(self.subsample(outs[-1]))
        return dict(zip(OUT_LEVELS, outs))

    def compute_output_shape(self, input_shape):
        shapes = _check_inputs(input_shape)
        out = {lvl: tuple(s[:-1]) + (self.channels,) for lvl, s in zip(OUT_LEVELS, shapes)}
        b, h, w, _ = shapes[-1]
        out["P6"] = (b, None if h is None else (h + 1) // 2, None if w is None else (w + 1) // 2, self.channels)
        return out

    def get_config(self):
        config = super().get_config()
        config.update({"channels": self.channels})
        return config


def _check_inputs(input_shape):
    """Shapes of C2..C5 from a dict of shapes; each level must halve the previous one."""
    if not isinstance(input_shape, dict) or any(k not in input_shape for k in IN_LEVELS):
        got = sorted(input_shape) if isinstance(input_shape, dict) else type(input_shape).__name__
        raise ValueError(f"FeaturePyramid expects a dict with keys {', '.join(IN_LEVELS)}; got {got}")
    shapes = [tuple(input_shape[k]) for k in IN_LEVELS]
    for (fine, big), (coarse, small) in zip(zip(IN_LEVELS, shapes), zip(IN_LEVELS[1:], shapes[1:])):
        for axis in (1, 2):
            if big[axis] is not None and small[axis] is not None and big[axis] != 2 * small[axis]:
                raise ValueError(
                    f"FeaturePyramid: {fine} {big[1:3]} must be exactly twice {coarse} {small[1:3]}; "
                    "the input height and width must be multiples of 32"
                )
    return shapes
