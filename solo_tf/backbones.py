"""Backbones: a normalised image (B, H, W, 3) -> {"C2", "C3", "C4", "C5"} at strides 4, 8, 16, 32.

Names (``BACKBONES``):

- ``tiny``: four small conv/BN/ReLU stages (16-64 channels) for tests and demos.
- ``resnet18`` / ``resnet34``: basic-block ResNets written here with Keras layers in the
  torchvision layout (7x7/2 conv, 3x3/2 max-pool, stages [2, 2, 2, 2] / [3, 4, 6, 3], BN,
  explicit symmetric padding); layers are named after torchvision's parameters
  (``conv1``, ``bn1``, ``layer2_0_conv1``, ``layer2_0_downsample_bn``, ...) so ported
  weights map one to one. No ImageNet weights ship for these.
- ``resnet50`` / ``resnet101``: ``keras.applications`` bottleneck ResNets.
- ``mobilenetv3_small`` / ``mobilenetv3_large``: ``keras.applications`` MobileNetV3
  (``minimalistic=False``, ``include_preprocessing=False``).

Every backbone expects the input the SOLO model gives it: RGB normalised with the ImageNet
mean/std (see :mod:`solo_tf.model`). Input height and width must be multiples of 32 so the
four levels halve exactly (the feature pyramid relies on that).
"""

from __future__ import annotations

import os
import warnings

import keras
from keras import layers

LEVELS = ("C2", "C3", "C4", "C5")

# Channels of C2..C5 per backbone.
BACKBONE_CHANNELS: dict[str, tuple[int, int, int, int]] = {
    "tiny": (16, 32, 48, 64),
    "resnet18": (64, 128, 256, 512),
    "resnet34": (64, 128, 256, 512),
    "resnet50": (256, 512, 1024, 2048),
    "resnet101": (256, 512, 1024, 2048),
    "mobilenetv3_small": (16, 24, 48, 576),
    "mobilenetv3_large": (24, 40, 112, 960),
}
BACKBONES = tuple(BACKBONE_CHANNELS)

_TINY_CHANNELS = BACKBONE_CHANNELS["tiny"]
_BASIC_BLOCKS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}
_APPLICATIONS = {
    # name: (constructor name, keyword arguments, layers giving C2..C5; None = model output)
    "resnet50": ("ResNet50", {}, ("conv2_block3_out", "conv3_block4_out", "conv4_block6_out", "conv5_block3_out")),
    "resnet101": ("ResNet101", {}, ("conv2_block3_out", "conv3_block4_out", "conv4_block23_out", "conv5_block3_out")),
    # The last block output at each stride; C5 is the final 1x1 conv + hard-swish.
    "mobilenetv3_small": (
        "MobileNetV3Small",
        {"minimalistic": False, "include_preprocessing": False},
        ("expanded_conv_project_bn", "expanded_conv_2_add", "expanded_conv_7_add", None),
    ),
    "mobilenetv3_large": (
        "MobileNetV3Large",
        {"minimalistic": False, "include_preprocessing": False},
        ("expanded_conv_2_add", "expanded_conv_5_add", "expanded_conv_11_add", None),
    ),
}


def backbone_channels(name: str) -> tuple[int, int, int, int]:
    """Channel counts of (C2, C3, C4, C5) for backbone ``name``."""
    _check_name(name)
    return BACKBONE_CHANNELS[name]


def build_backbone(name: str, input_shape, weights: str | os.PathLike | None = None) -> keras.Model:
    """Build backbone ``name`` as a functional ``keras.Model``.

    Args:
        name: one of ``BACKBONES``.
        input_shape: (H, W, 3); H and W multiples of 32 (or None for a dynamic size).
        weights: None (random initialisation), ``"imagenet"`` (keras.applications backbones
            only; downloaded by Keras on first use), or a path to a local ``.weights.h5``
            file written by ``backbone.save_weights`` for the same backbone.

    Returns:
        A model named ``backbone`` mapping images (B, H, W, 3), RGB normalised with the
        ImageNet mean/std, to ``{"C2": (B, H/4, W/4, c2), "C3": (B, H/8, W/8, c3),
        "C4": (B, H/16, W/16, c4), "C5": (B, H/32, W/32, c5)}``, (c2..c5) =
        ``BACKBONE_CHANNELS[name]``.

    Note on ``"imagenet"`` for resnet50/101 (and MobileNetV3): the keras.applications
    weights were trained on caffe-style input (BGR, mean subtracted, no std) and [-1, 1]
    respectively. The model keeps normalising with the ImageNet mean/std in RGB; this is
    what the reference implementation does with its torchvision weights, and fine-tuning
    absorbs the difference, but the pretrained features are not exactly the ones the
    weights were trained to produce.

    Raises:
        ValueError: unknown name, bad input shape, ``"imagenet"`` for a backbone without
            ImageNet weights, or a weights file that is not ``.weights.h5`` or does not
            match the backbone (the message names the file).
        FileNotFoundError: the weights file does not exist (the message names it).
    """
    _check_name(name)
    input_shape = _check_input_shape(input_shape)
    path = None
    if weights is not None and weights != "imagenet":
        path = os.fspath(weights)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"backbone weights file not found: {path}")
        if not path.endswith(".weights.h5"):
            raise ValueError(f"backbone weights file {path} must be a Keras '.weights.h5' file (backbone.save_weights)")
    if weights == "imagenet" and name not in _APPLICATIONS:
        raise ValueError(
            f"no ImageNet weights ship for backbone {name!r} (only for {', '.join(_APPLICATIONS)}); "
            "pass a local '.weights.h5' file instead (e.g. converted from torchvision), or weights=None"
        )

    if name == "tiny":
        model = _tiny(input_shape)
    elif name in _BASIC_BLOCKS:
        model = _basic_resnet(input_shape, _BASIC_BLOCKS[name])
    else:
        model = _application(name, input_shape, imagenet=weights == "imagenet")

    if path is not None:
        _load_weights(model, name, path)
    return model


def _load_weights(model, name, path):
    # Keras reports layers it could not match as UserWarnings (one per layer) and then
    # usually raises; a partial load must never pass silently, so skipped layers are errors.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model.load_weights(path)
        except (ValueError, KeyError, OSError) as e:
            raise ValueError(f"backbone weights file {path} does not match backbone {name!r}: {e}") from e
    skipped = [str(w.message) for w in caught if "Skipping" in str(w.message) or "could not be loaded" in str(w.message)]
    if skipped:
        raise ValueError(
            f"backbone weights file {path} does not match backbone {name!r}: {len(skipped)} parts were not "
            f"loaded, e.g. {skipped[0]}"
        )
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


# --- builders ------------------------------------------------------------------------------


def _tiny(input_shape) -> keras.Model:
    images = keras.Input(shape=input_shape, name="images")
    x = _conv_bn_relu(images, _TINY_CHANNELS[0], 3, 2, "stem")
    outputs = {}
    for level, ch in zip(LEVELS, _TINY_CHANNELS):
        x = _conv_bn_relu(x, ch, 3, 2, f"{level.lower()}_down")
        x = _conv_bn_relu(x, ch, 3, 1, f"{level.lower()}_conv")
        outputs[level] = x
    return keras.Model(images, outputs, name="backbone")


def _conv_bn_relu(x, channels, kernel, stride, name):
    x = layers.Conv2D(channels, kernel, stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _basic_resnet(input_shape, blocks) -> keras.Model:
    images = keras.Input(shape=input_shape, name="images")
    # Explicit symmetric padding + "valid" reproduces torchvision's padding exactly; Keras
    # "same" pads stride-2 convolutions asymmetrically, which would shift ported weights.
    x = layers.ZeroPadding2D(3, name="conv1_pad")(images)
    x = layers.Conv2D(64, 7, 2, use_bias=False, kernel_initializer=_kaiming(), name="conv1")(x)
    x = _bn(x, "bn1")
    x = layers.ReLU(name="relu")(x)
    # Zero padding equals torchvision's -inf padding here because the input is post-ReLU.
    x = layers.ZeroPadding2D(1, name="maxpool_pad")(x)
    x = layers.MaxPooling2D(3, 2, name="maxpool")(x)
    outputs = {}
    for stage, (level, n, ch) in enumerate(zip(LEVELS, blocks, (64, 128, 256, 512))):
        for b in range(n):
            stride = 2 if stage > 0 and b == 0 else 1
            x = _basic_block(x, ch, stride, f"layer{stage + 1}_{b}")
        outputs[level] = x
    return keras.Model(images, outputs, name="backbone")


def _basic_block(x, channels, stride, name):
    shortcut = x
    if stride != 1 or x.shape[-1] != channels:
        shortcut = layers.Conv2D(
            channels, 1, stride, use_bias=False, kernel_initializer=_kaiming(), name=f"{name}_downsample_conv"
        )(x)
        shortcut = _bn(shortcut, f"{name}_downsample_bn")
    if stride == 1:
        y = layers.Conv2D(channels, 3, padding="same", use_bias=False, kernel_initializer=_kaiming(), name=f"{name}_conv1")(x)
    else:
        y = layers.ZeroPadding2D(1, name=f"{name}_pad")(x)
        y = layers.Conv2D(channels, 3, stride, use_bias=False, kernel_initializer=_kaiming(), name=f"{name}_conv1")(y)
    y = _bn(y, f"{name}_bn1")
    y = layers.ReLU(name=f"{name}_relu1")(y)
    y = layers.Conv2D(channels, 3, padding="same", use_bias=False, kernel_initializer=_kaiming(), name=f"{name}_conv2")(y)
    y = _bn(y, f"{name}_bn2")
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=f"{name}_out")(y)


def _bn(x, name):
    # torchvision defaults: eps 1e-5, running-average momentum 0.1 (= Keras momentum 0.9).
    return layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name=name)(x)


def _kaiming():
    # torchvision ResNet init: kaiming_normal_(mode="fan_out", nonlinearity="relu").
    return keras.initializers.VarianceScaling(2.0, mode="fan_out", distribution="untruncated_normal")


def _application(name, input_shape, imagenet: bool) -> keras.Model:
    ctor_name, kwargs, feature_layers = _APPLICATIONS[name]
    ctor = getattr(keras.applications, ctor_name)
    try:
        base = ctor(input_shape=input_shape, include_top=False, weights="imagenet" if imagenet else None, **kwargs)
    except Exception as e:
        if not imagenet:
            raise
        raise RuntimeError(
            f"could not load ImageNet weights for backbone {name!r} ({e}); on a machine without "
            "network access pass a local '.weights.h5' file saved from this backbone instead"
        ) from e
    outputs = {
        level: base.output if layer is None else base.get_layer(layer).output
        for level, layer in zip(LEVELS, feature_layers)
    }
    return keras.Model(base.input, outputs, name="backbone")


# --- checks --------------------------------------------------------------------------------


def _check_name(name):
    if name not in BACKBONE_CHANNELS:
        raise ValueError(f"unknown backbone {name!r}; valid names: {', '.join(BACKBONES)}")


def _check_input_shape(input_shape):
    shape = tuple(input_shape)
    if len(shape) != 3 or shape[-1] != 3:
        raise ValueError(f"backbone input_shape must be (H, W, 3), got {shape}")
    for d in shape[:2]:
        if d is not None and (int(d) <= 0 or int(d) % 32):
            raise ValueError(f"backbone input height and width must be positive multiples of 32, got {shape}")
    return shape
