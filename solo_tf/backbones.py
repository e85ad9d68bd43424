"""Backbones: a normalised image (B, H, W, 3) -> {"C2", "C3", "C4", "C5"} at strides 4, 8, 16, 32.

Names (``BACKBONES``):

- ``tiny``: four small conv/BN/ReLU stages (16-64 channels) for tests and demos.
- ``resnet18`` / ``resnet34`` (basic blocks, stages [2, 2, 2, 2] / [3, 4, 6, 3]) and
  ``resnet50`` / ``resnet101`` (bottlenecks, [3, 4, 6, 3] / [3, 4, 23, 3]): written here with
  Keras layers in torchvision's layout: 7x7/2 conv, 3x3/2 max-pool, the stride of a
  bottleneck on its 3x3 conv (torchvision "v1.5", mmdet ``style='pytorch'``), no conv
  biases, BatchNorm eps 1e-5, explicit symmetric padding. Layers are named after
  torchvision's parameters (``conv1``, ``bn1``, ``layer2_0_conv1``, ``layer2_0_bn3``,
  ``layer2_0_downsample_conv`` = ``layer2.0.downsample.0``, ``layer2_0_downsample_bn`` =
  ``layer2.0.downsample.1``), so torchvision and timm ``*.tv_in1k`` checkpoints load one to
  one through :mod:`solo_tf.weights` (``weights=`` a ``.safetensors`` / ``.npz`` /
  ``.pth`` file).
- ``mobilenetv3_small`` / ``mobilenetv3_large``: ``keras.applications`` MobileNetV3
  (``minimalistic=False``, ``include_preprocessing=False``; the model normalises).

Input normalisation follows the weights: :func:`backbone_input_normalization` says which
mean/std (RGB, 0-255 scale) a backbone expects; the SOLO model normalises with it. Input
height and width must be multiples of 32 so the four levels halve exactly (the feature
pyramid relies on that).

:func:`freeze_backbone` applies the reference's ``norm_eval`` / ``frozen_stages`` to a
built backbone.
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

# ImageNet statistics in RGB, 0-255 scale: what torchvision / timm ``tv_in1k`` ResNets were
# trained with, and what the reference SOLO normalises with.
IMAGENET_MEAN_RGB = (123.675, 116.28, 103.53)
IMAGENET_STD_RGB = (58.395, 57.12, 57.375)
# keras.applications MobileNetV3's own preprocessing: x / 127.5 - 1 (its Rescaling layer).
_MINUS_ONE_TO_ONE = ((127.5, 127.5, 127.5), (127.5, 127.5, 127.5))

# (mean, std) per backbone, RGB on the 0-255 scale: normalised = (image - mean) / std.
BACKBONE_NORMALIZATION: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "tiny": (IMAGENET_MEAN_RGB, IMAGENET_STD_RGB),
    "resnet18": (IMAGENET_MEAN_RGB, IMAGENET_STD_RGB),
    "resnet34": (IMAGENET_MEAN_RGB, IMAGENET_STD_RGB),
    "resnet50": (IMAGENET_MEAN_RGB, IMAGENET_STD_RGB),
    "resnet101": (IMAGENET_MEAN_RGB, IMAGENET_STD_RGB),
    "mobilenetv3_small": _MINUS_ONE_TO_ONE,
    "mobilenetv3_large": _MINUS_ONE_TO_ONE,
}

_TINY_CHANNELS = BACKBONE_CHANNELS["tiny"]
# name: (block kind, blocks per stage)
RESNETS = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
}
_APPLICATIONS = {
    # name: (constructor name, keyword arguments, layers giving C2..C5; None = model output)
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
# BatchNorm moving-average momentum of every backbone (Keras convention: new = m * old +
# (1 - m) * batch); torchvision's and mmdet's momentum 0.1.
BN_MOMENTUM = 0.9
# Checkpoint files read by solo_tf.weights (torchvision / timm state dicts).
TORCH_CHECKPOINT_SUFFIXES = (".safetensors", ".npz", ".pth", ".pt", ".bin")


def backbone_channels(name: str) -> tuple[int, int, int, int]:
    """Channel counts of (C2, C3, C4, C5) for backbone ``name``."""
    _check_name(name)
    return BACKBONE_CHANNELS[name]


def backbone_input_normalization(name: str) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(mean, std) per RGB channel, 0-255 scale, that backbone ``name`` expects its input
    normalised with: ``x = (image - mean) / std``.

    ResNets (and ``tiny``): the ImageNet mean/std, as torchvision and timm ``*.tv_in1k``
    weights were trained. MobileNetV3: keras.applications' own ``x / 127.5 - 1``, as its
    ``"imagenet"`` weights were trained. The value depends on the backbone only, never on
    where its initial weights came from, so a model saved and rebuilt from its config
    normalises exactly as it was trained.
    """
    _check_name(name)
    return BACKBONE_NORMALIZATION[name]


def build_backbone(name: str, input_shape, weights: str | os.PathLike | None = None) -> keras.Model:
    """Build backbone ``name`` as a functional ``keras.Model``.

    Args:
        name: one of ``BACKBONES``.
        input_shape: (H, W, 3); H and W multiples of 32 (or None for a dynamic size).
        weights: None (random initialisation); ``"imagenet"`` (MobileNetV3 only: downloaded
            by keras.applications on first use); a torchvision or timm (``*.tv_in1k``)
            ResNet checkpoint, ``.safetensors`` / ``.npz`` (numpy only) or ``.pth`` /
            ``.pt`` / ``.bin`` (read without PyTorch), for ``resnet18/34/50/101`` (see
            :func:`solo_tf.weights.load_torchvision_resnet` for the exact mapping); or a
            local ``.weights.h5`` file written by ``backbone.save_weights`` for the same
            backbone.

    Returns:
        A model named ``backbone`` mapping images (B, H, W, 3), normalised as
        :func:`backbone_input_normalization` says, to ``{"C2": (B, H/4, W/4, c2),
        "C3": (B, H/8, W/8, c3), "C4": (B, H/16, W/16, c4), "C5": (B, H/32, W/32, c5)}``,
        (c2..c5) = ``BACKBONE_CHANNELS[name]``.

    Raises:
        ValueError: unknown name, bad input shape, ``"imagenet"`` for a backbone without a
            keras.applications download, a file of an unknown kind, a checkpoint for a
            backbone it cannot fit, or one that does not match (the message names the file
            and the key).
        FileNotFoundError: the weights file does not exist (the message names it).
    """
    _check_name(name)
    input_shape = _check_input_shape(input_shape)
    path = None
    if weights is not None and weights != "imagenet":
        path = os.fspath(weights)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"backbone weights file not found: {path}")
        if not path.endswith((".weights.h5",) + TORCH_CHECKPOINT_SUFFIXES):
            raise ValueError(
                f"backbone weights file {path} must be a Keras '.weights.h5' file (backbone.save_weights) "
                f"or a torchvision/timm ResNet checkpoint ({', '.join(TORCH_CHECKPOINT_SUFFIXES)})"
            )
        if path.endswith(TORCH_CHECKPOINT_SUFFIXES) and name not in RESNETS:
            raise ValueError(
                f"backbone weights file {path} is a torchvision-style checkpoint; those load into "
                f"{', '.join(RESNETS)} only, not {name!r}"
            )
    if weights == "imagenet" and name not in _APPLICATIONS:
        raise ValueError(
            f"no ImageNet weights download for backbone {name!r} (only for {', '.join(_APPLICATIONS)}); "
            "pass a local file instead: a torchvision or timm '*.tv_in1k' ResNet checkpoint "
            f"({', '.join(TORCH_CHECKPOINT_SUFFIXES)}), a '.weights.h5' file, or weights=None"
        )

    if name == "tiny":
        model = _tiny(input_shape)
    elif name in RESNETS:
        model = _resnet(input_shape, *RESNETS[name])
    else:
        model = _application(name, input_shape, imagenet=weights == "imagenet")

    if path is not None:
        if path.endswith(".weights.h5"):
            _load_keras_weights(model, name, path)
        else:
            from solo_tf.weights import load_torchvision_resnet

            load_torchvision_resnet(model, path)
    return model


def freeze_backbone(backbone: keras.Model, norm_eval: bool, frozen_stages: int) -> keras.Model:
    """Freeze parts of a built backbone as the reference does (mmdet ``norm_eval``,
    ``frozen_stages``); call it before ``compile``.

    Args:
        backbone: a model from :func:`build_backbone` (any name).
        norm_eval: every BatchNormalization layer of the backbone gets ``trainable=False``:
            in Keras 3 such a layer runs in inference mode even under ``fit`` (moving
            statistics used, never updated) and its gamma/beta are not trained. (mmdet's
            SOLO keeps training gamma/beta under ``norm_eval``; AdelaiDet's FrozenBN fixes
            them as here.)
        frozen_stages: 0 freezes nothing; k in 1..4 freezes the stem and stages 1..k,
            i.e. every layer that C_{k+1} depends on (1: stem + ``layer1``, the reference
            default for a pretrained ResNet). Frozen layers, their BatchNorm included, are
            not trained and run in inference mode.

    Returns:
        ``backbone`` itself, modified in place.

    Raises:
        ValueError: ``frozen_stages`` outside 0..4, or a model without the C2..C5 outputs.
    """
    if not isinstance(frozen_stages, int) or isinstance(frozen_stages, bool) or not 0 <= frozen_stages <= 4:
        raise ValueError(f"frozen_stages must be an int in 0..4, got {frozen_stages!r}")
    outputs = backbone.output
    if not isinstance(outputs, dict) or set(outputs) != set(LEVELS):
        raise ValueError(f"freeze_backbone needs a backbone with outputs {LEVELS}, got {backbone.name!r}")
    if norm_eval:
        for layer in backbone.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.trainable = False
    if frozen_stages:
        # The layers C_{k+1} depends on: a sub-model over the same layers lists them.
        upstream = keras.Model(backbone.inputs, outputs[LEVELS[frozen_stages - 1]])
        for layer in upstream.layers:
            layer.trainable = False
    return backbone


def _load_keras_weights(model, name, path):
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
    x = layers.BatchNormalization(epsilon=1e-5, momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _resnet(input_shape, kind, blocks) -> keras.Model:
    """torchvision ``ResNet``: stem, then four stages of ``blocks`` blocks; C2..C5 are the
    stage outputs. Stage widths 64..512 (x4 at the output of a bottleneck)."""
    images = keras.Input(shape=input_shape, name="images")
    # Explicit symmetric padding + "valid" reproduces torchvision's padding exactly; Keras
    # "same" pads stride-2 convolutions asymmetrically, which would shift ported weights.
    x = layers.ZeroPadding2D(3, name="conv1_pad")(images)
    x = _conv(x, 64, 7, 2, "conv1")
    x = _bn(x, "bn1")
    x = layers.ReLU(name="relu")(x)
    # Zero padding equals torchvision's -inf padding here because the input is post-ReLU.
    x = layers.ZeroPadding2D(1, name="maxpool_pad")(x)
    x = layers.MaxPooling2D(3, 2, name="maxpool")(x)
    block = _basic_block if kind == "basic" else _bottleneck
    outputs = {}
    for stage, (level, n, width) in enumerate(zip(LEVELS, blocks, (64, 128, 256, 512))):
        for b in range(n):
            stride = 2 if stage > 0 and b == 0 else 1
            x = block(x, width, stride, f"layer{stage + 1}_{b}")
        outputs[level] = x
    return keras.Model(images, outputs, name="backbone")


def _basic_block(x, width, stride, name):
    shortcut = _downsample(x, width, stride, name)
    y = _conv3x3(x, width, stride, f"{name}_conv1")
    y = _bn(y, f"{name}_bn1")
    y = layers.ReLU(name=f"{name}_relu1")(y)
    y = _conv3x3(y, width, 1, f"{name}_conv2")
    y = _bn(y, f"{name}_bn2")
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=f"{name}_out")(y)


def _bottleneck(x, width, stride, name):
    # torchvision Bottleneck (expansion 4): 1x1 -> 3x3 (carries the stride) -> 1x1.
    shortcut = _downsample(x, 4 * width, stride, name)
    y = _conv(x, width, 1, 1, f"{name}_conv1")
    y = _bn(y, f"{name}_bn1")
    y = layers.ReLU(name=f"{name}_relu1")(y)
    y = _conv3x3(y, width, stride, f"{name}_conv2")
    y = _bn(y, f"{name}_bn2")
    y = layers.ReLU(name=f"{name}_relu2")(y)
    y = _conv(y, 4 * width, 1, 1, f"{name}_conv3")
    y = _bn(y, f"{name}_bn3")
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=f"{name}_out")(y)


def _downsample(x, channels, stride, name):
    """Shortcut: identity, or 1x1 conv (with the block's stride) + BN where the shape changes."""
    if stride == 1 and x.shape[-1] == channels:
        return x
    x = _conv(x, channels, 1, stride, f"{name}_downsample_conv")
    return _bn(x, f"{name}_downsample_bn")


def _conv3x3(x, channels, stride, name):
    if stride == 1:
        return layers.Conv2D(channels, 3, padding="same", use_bias=False, kernel_initializer=_kaiming(), name=name)(x)
    x = layers.ZeroPadding2D(1, name=f"{name}_pad")(x)
    return _conv(x, channels, 3, stride, name)


def _conv(x, channels, kernel, stride, name):
    return layers.Conv2D(channels, kernel, stride, use_bias=False, kernel_initializer=_kaiming(), name=name)(x)


def _bn(x, name):
    # torchvision defaults: eps 1e-5, running-average momentum 0.1 (= Keras momentum 0.9).
    return layers.BatchNormalization(epsilon=1e-5, momentum=BN_MOMENTUM, name=name)(x)


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
    # keras.applications builds MobileNetV3's BatchNorm with momentum 0.999: a moving average
    # over ~1000 steps, made for fine-tuning ImageNet statistics. Trained from random weights
    # for a few thousand steps its moving statistics stay far from the batch statistics, so
    # inference-mode BatchNorm gives garbage: on the demo's shapes at 128 px the mobile preset
    # scored mask AP 0.000 after 2000 steps of 16 at 0.999, and 0.20-0.30 after 600 at 0.9. The
    # ResNets' 0.9 (PyTorch's and mmdet's momentum 0.1) is used for every backbone.
    for layer in base.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = BN_MOMENTUM
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
